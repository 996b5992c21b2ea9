"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition", §4.2).

Architecture (6n+2 layers): conv3x3(3->16)-BN-ReLU, then three stages of n BasicBlocks
with 16/32/64 channels and strides 1/2/2, global average pooling to a 64-d feature and a
classification head ``fc``.  When a block changes shape, the shortcut is He et al.'s
parameter-free "option A": subsample every other pixel and zero-pad the new channels.
Depths: resnet20 (n=3), resnet32 (n=5, ~0.46M params), resnet44 (n=7), resnet56 (n=9),
resnet110 (n=18), resnet1202 (n=200).

State-dict key names follow the LDAM-DRW / imbalanced-semi-self checkpoints
(``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv,bn}{1,2}``, ``fc``) so their checkpoints load.

``NormedLinear`` is the cosine classifier of LDAM (Cao et al. 2019, "Learning Imbalanced
Datasets with Label-Distribution-Aware Margin Loss"); the LDAM scale s is applied in the loss.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "NormedLinear", "ShortcutA", "BasicBlock", "ResNetCifar", "kaiming_init",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
]


class NormedLinear(nn.Module):
    """Cosine-similarity head (Cao et al. 2019): ``normalize(x) @ normalize(W)``, no bias.

    The weight is stored as (in_features, out_features), one column per class, matching
    the upstream checkpoints; its values lie in [-1, 1].
    """

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=0, keepdim=True))

    def forward(self, x):
        # Cosines in float32 even under bf16 autocast: bf16 rounding (~4e-3, x30 by LDAM's scale) would be
        # as large as the LDAM margins themselves.
        with torch.autocast(x.device.type, enabled=False):
            return F.normalize(x.float(), dim=1) @ F.normalize(self.weight.float(), dim=0)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"


class ShortcutA(nn.Module):
    """He et al. 2016 option-A shortcut: stride-2 subsampling plus zero-padding of
    ``planes // 4`` channels on each side (an input of planes/2 channels becomes planes).

    Parameter-free, so it adds no state-dict keys.
    """

    def __init__(self, planes):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        # F.pad's tuple runs from the last dim backwards: (W, W, H, H, C, C).
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus an identity or option-A shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        reshapes = stride != 1 or in_planes != planes
        self.shortcut = ShortcutA(planes) if reshapes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def kaiming_init(module):
    """Kaiming-normal init of every Conv2d and Linear weight (He et al. 2015), as upstream;
    BN and Linear biases keep PyTorch's defaults and NormedLinear keeps its own init."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)


def make_head(feat_dim, num_classes, use_norm):
    """``NormedLinear`` for LDAM (``use_norm``), else a plain ``Linear`` with bias."""
    return NormedLinear(feat_dim, num_classes) if use_norm else nn.Linear(feat_dim, num_classes)


def make_stage(in_planes, planes, num_blocks, stride):
    """A stage of BasicBlocks; only the first one may change stride or width."""
    blocks = [BasicBlock(in_planes, planes, stride)]
    blocks += [BasicBlock(planes, planes, 1) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ResNetCifar(nn.Module):
    """CIFAR ResNet with ``n`` BasicBlocks per stage (He et al. 2016); 64-d feature."""

    feat_dim = 64

    def __init__(self, n, num_classes=10, use_norm=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = make_stage(16, 16, n, stride=1)
        self.layer2 = make_stage(16, 32, n, stride=2)
        self.layer3 = make_stage(32, 64, n, stride=2)
        self.fc = make_head(self.feat_dim, num_classes, use_norm)
        self.apply(kaiming_init)

    def features(self, x):
        """Globally average-pooled 64-d feature."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x, return_features=False):
        feat = self.features(x)
        logits = self.fc(feat)
        return (logits, feat) if return_features else logits


def resnet20(num_classes=10, use_norm=False):
    """ResNet-20 (n=3)."""
    return ResNetCifar(3, num_classes, use_norm)


def resnet32(num_classes=10, use_norm=False):
    """ResNet-32 (n=5), the LDAM-DRW / imbalanced-semi-self CIFAR backbone."""
    return ResNetCifar(5, num_classes, use_norm)


def resnet44(num_classes=10, use_norm=False):
    """ResNet-44 (n=7)."""
    return ResNetCifar(7, num_classes, use_norm)


def resnet56(num_classes=10, use_norm=False):
    """ResNet-56 (n=9)."""
    return ResNetCifar(9, num_classes, use_norm)


def resnet110(num_classes=10, use_norm=False):
    """ResNet-110 (n=18)."""
    return ResNetCifar(18, num_classes, use_norm)


def resnet1202(num_classes=10, use_norm=False):
    """ResNet-1202 (n=200)."""
    return ResNetCifar(200, num_classes, use_norm)
