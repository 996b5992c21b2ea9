"""BBN-style CIFAR ResNet-32 used by LADE on CIFAR-100-LT.

Zhou et al. 2020, "BBN: Bilateral-Branch Network with Cumulative Learning for Long-Tailed
Visual Recognition"; reused by Hong et al. 2021, "Disentangling Label Distribution for
Long-tailed Visual Recognition" (LADE).

Architecture: the CIFAR ResNet-32 stem and stages (16/32/64 channels, strides 1/2/2,
5/5/4 BasicBlocks: the last stage has one block fewer), then two parallel 64-channel
BasicBlocks, ``cb_block`` (conventional branch) and ``rb_block`` (re-balancing branch),
both fed the stage-3 output.  Their globally average-pooled outputs are concatenated into
a 128-d feature, classified by ``fc`` (Linear(128, C), or NormedLinear when ``use_norm``).
LADE trains both branches jointly with a single head (no cumulative-learning mixing).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .resnet_cifar import BasicBlock, kaiming_init, make_head, make_stage

__all__ = ["ResNetBBNCifar", "resnet32_bbn"]


class ResNetBBNCifar(nn.Module):
    """CIFAR ResNet with a shortened last stage and two parallel branch blocks; 128-d feature."""

    feat_dim = 128

    def __init__(self, num_blocks, num_classes=10, use_norm=False):
        super().__init__()
        n1, n2, n3 = num_blocks
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = make_stage(16, 16, n1, stride=1)
        self.layer2 = make_stage(16, 32, n2, stride=2)
        self.layer3 = make_stage(32, 64, n3 - 1, stride=2)
        self.cb_block = BasicBlock(64, 64, stride=1)
        self.rb_block = BasicBlock(64, 64, stride=1)
        self.fc = make_head(self.feat_dim, num_classes, use_norm)
        self.apply(kaiming_init)

    def features(self, x):
        """Concatenation of the two branches' pooled 64-d features (cb first, then rb)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        both = torch.cat((self.cb_block(out), self.rb_block(out)), dim=1)
        return torch.flatten(F.adaptive_avg_pool2d(both, 1), 1)

    def forward(self, x, return_features=False):
        feat = self.features(x)
        logits = self.fc(feat)
        return (logits, feat) if return_features else logits


def resnet32_bbn(num_classes=10, use_norm=False):
    """LADE's CIFAR ResNet-32 (BBN variant): stages 5/5/4 + cb_block/rb_block, 128-d feature."""
    return ResNetBBNCifar((5, 5, 5), num_classes, use_norm)
