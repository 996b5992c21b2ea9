"""ImageNet-style ResNets for ImageNet-LT and iNaturalist 2018.

He et al. 2016, "Deep Residual Learning for Image Recognition": 7x7/2 conv, 3x3/2 max-pool,
four stages of 64/128/256/512 base channels with projection (1x1 conv + BN) shortcuts,
adaptive average pooling (so any input >= 32x32 works) and a head ``fc``.  ResNeXt-50
(32x4d) follows Xie et al. 2017, "Aggregated Residual Transformations for Deep Neural
Networks".  ResNet-10 ([1, 1, 1, 1] BasicBlocks) is the small backbone of the decoupling /
OLTR ImageNet-LT baselines.

Built on ``torchvision.models.resnet.ResNet`` so that parameter names are torchvision's
(``conv1``, ``bn1``, ``layer1..4``, ``fc``): MoCo checkpoints (``module.encoder_q.<name>``)
load after stripping their prefix.  ``use_norm`` swaps ``fc`` for the LDAM cosine head
(Cao et al. 2019).
"""
import torch
from torchvision.models import resnet as tv_resnet

from .resnet_cifar import NormedLinear

__all__ = [
    "ImageNetResNet", "resnet10", "resnet18", "resnet34", "resnet50", "resnet101",
    "resnet152", "resnext50_32x4d",
]


class ImageNetResNet(tv_resnet.ResNet):
    """torchvision ResNet with ``feat_dim``, an optional cosine head and ``return_features``."""

    def __init__(self, block, layers, num_classes=1000, use_norm=False, **kwargs):
        super().__init__(block, layers, num_classes=num_classes, **kwargs)
        self.feat_dim = 512 * block.expansion
        if use_norm:
            self.fc = NormedLinear(self.feat_dim, num_classes)

    def features(self, x):
        """Globally average-pooled feature (512-d for BasicBlock nets, 2048-d for Bottleneck)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x, return_features=False):
        feat = self.features(x)
        logits = self.fc(feat)
        return (logits, feat) if return_features else logits


def resnet10(num_classes=1000, use_norm=False):
    """ResNet-10: BasicBlock x [1, 1, 1, 1], 512-d feature."""
    return ImageNetResNet(tv_resnet.BasicBlock, [1, 1, 1, 1], num_classes, use_norm)


def resnet18(num_classes=1000, use_norm=False):
    """ResNet-18: BasicBlock x [2, 2, 2, 2], 512-d feature."""
    return ImageNetResNet(tv_resnet.BasicBlock, [2, 2, 2, 2], num_classes, use_norm)


def resnet34(num_classes=1000, use_norm=False):
    """ResNet-34: BasicBlock x [3, 4, 6, 3], 512-d feature."""
    return ImageNetResNet(tv_resnet.BasicBlock, [3, 4, 6, 3], num_classes, use_norm)


def resnet50(num_classes=1000, use_norm=False):
    """ResNet-50: Bottleneck x [3, 4, 6, 3], 2048-d feature."""
    return ImageNetResNet(tv_resnet.Bottleneck, [3, 4, 6, 3], num_classes, use_norm)


def resnet101(num_classes=1000, use_norm=False):
    """ResNet-101: Bottleneck x [3, 4, 23, 3], 2048-d feature."""
    return ImageNetResNet(tv_resnet.Bottleneck, [3, 4, 23, 3], num_classes, use_norm)


def resnet152(num_classes=1000, use_norm=False):
    """ResNet-152: Bottleneck x [3, 8, 36, 3], 2048-d feature."""
    return ImageNetResNet(tv_resnet.Bottleneck, [3, 8, 36, 3], num_classes, use_norm)


def resnext50_32x4d(num_classes=1000, use_norm=False):
    """ResNeXt-50 (32x4d): Bottleneck x [3, 4, 6, 3] with 32 groups of width 4, 2048-d."""
    return ImageNetResNet(tv_resnet.Bottleneck, [3, 4, 6, 3], num_classes, use_norm,
                          groups=32, width_per_group=4)
