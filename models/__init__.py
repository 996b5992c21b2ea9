"""Model registry.

Every constructor has the signature ``f(num_classes, use_norm=False)`` and returns a module
whose ``forward(x, return_features=False)`` gives logits, or ``(logits, features)``; each
model exposes ``feat_dim`` and its head as ``fc``.

* CIFAR ResNets (He et al. 2016, option-A shortcuts): resnet20/32/44/56/110/1202, 64-d.
* LADE's BBN-style CIFAR ResNet-32 (Zhou et al. 2020; Hong et al. 2021): resnet32_bbn, 128-d.
* ImageNet ResNets on torchvision: resnet10/18/34 (512-d), resnet50/101/152 and
  resnext50_32x4d (2048-d).

The constructors are also module attributes, so the upstream ``models.__dict__[arch]``
idiom keeps working; prefer ``build_model``, which reports unknown names clearly.
"""
from registry import Registry

from .resnet import (
    resnet10, resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d,
)
from .resnet_bbn import resnet32_bbn
from .resnet_cifar import (
    NormedLinear, resnet20, resnet32, resnet44, resnet56, resnet110, resnet1202,
)

__all__ = [
    "ARCHS", "NormedLinear", "build_model", "model_names",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
    "resnet32_bbn",
    "resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d",
]

ARCHS = Registry("architecture", flag="--arch")
for _constructor in (resnet20, resnet32, resnet44, resnet56, resnet110, resnet1202, resnet32_bbn,
                     resnet10, resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d):
    ARCHS.register(_constructor.__name__, _constructor)
del _constructor


def model_names():
    """Sorted names accepted by ``build_model`` (and by an ``--arch`` flag)."""
    return ARCHS.names()


def build_model(arch, num_classes, use_norm=False):
    """Construct ``arch`` with a ``num_classes``-way head (cosine head when ``use_norm``)."""
    return ARCHS[arch](num_classes=num_classes, use_norm=use_norm)
