"""Losses and class re-balancing rules for long-tailed classification.

Two registries, both selected by name from the command line:

* ``LOSSES`` (``--loss_type``): ``nn.Module`` losses built from the training class counts.
* ``TRAIN_RULES`` (``--train_rule``): how classes are re-balanced over training: per-class loss weights
  that may change with the epoch (Reweight, DRW) or a class-balanced sampler (Resample).

Every loss keeps its per-class weights in a buffer that is updated in place, so the tensor the
training step sees never changes identity (a captured CUDA graph or a compiled step stays valid).
Notation: z logits (B, C), y labels, n_c training count of class c, N = sum_c n_c, pi_c = n_c / N.
"""
from __future__ import annotations

import argparse
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LOSSES: dict[str, Callable[..., nn.Module]] = {}
TRAIN_RULES: dict[str, Callable[..., "TrainRule"]] = {}


def register_loss(name: str):
    def wrap(cls):
        LOSSES[name] = cls
        return cls
    return wrap


def add_loss_args(parser: argparse.ArgumentParser) -> None:
    """Hyper-parameters of the registered losses (defaults: the papers' CIFAR settings)."""
    g = parser.add_argument_group("loss")
    g.add_argument("--focal_gamma", type=float, default=1.0,
                   help="Focal loss gamma (imbalanced-semi-self hard-codes 1)")
    g.add_argument("--max_m", type=float, default=0.5, help="LDAM largest margin (0.5 CIFAR, 0.3 iNat)")
    g.add_argument("--ldam_s", type=float, default=30.0, help="LDAM logit scale s")
    g.add_argument("--beta", type=float, default=0.9999, help="effective-number beta for Reweight/DRW/Resample")
    g.add_argument("--drw_epoch", type=int, default=160, help="DRW: epoch (0-indexed) where re-weighting starts")


def build_loss(name: str, cls_num_list: Sequence[int], args: argparse.Namespace | None = None) -> nn.Module:
    """Instantiate ``LOSSES[name]`` for the given training class counts and parsed hyper-parameters."""
    if name not in LOSSES:
        raise ValueError(f"unknown --loss_type {name!r}; choose one of: {', '.join(sorted(LOSSES))}")
    return LOSSES[name](list(cls_num_list), args if args is not None else default_loss_args())


def default_loss_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    add_loss_args(parser)
    return parser.parse_args([])


class WeightedLoss(nn.Module):
    """Base: holds the per-class weight buffer ``weight`` (ones = unweighted) that train rules update."""

    def __init__(self, cls_num_list: Sequence[int]):
        super().__init__()
        self.register_buffer("weight", torch.ones(len(cls_num_list)))

    def set_class_weights(self, weights: Sequence[float] | np.ndarray | torch.Tensor) -> None:
        self.weight.copy_(torch.as_tensor(np.asarray(weights, dtype=np.float32)))


@register_loss("CE")
class CrossEntropy(WeightedLoss):
    """Cross-entropy -log softmax(z)_y, weighted mean sum_i w_{y_i} l_i / sum_i w_{y_i} (PyTorch semantics)."""

    def __init__(self, cls_num_list, args=None):
        super().__init__(cls_num_list)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, weight=self.weight)


@register_loss("Focal")
class FocalLoss(WeightedLoss):
    """Focal loss (Lin et al. 2017) as used by LDAM-DRW: mean_i (1 - exp(-l_i))^gamma * l_i.

    l_i is the per-sample (class-weighted) cross-entropy, so with weights exp(-l_i) is not exactly the
    probability of the true class; this matches the reference implementations (SPEC section 1.6).
    """

    def __init__(self, cls_num_list, args):
        super().__init__(cls_num_list)
        self.gamma = args.focal_gamma

    def forward(self, logits, target):
        ce = F.cross_entropy(logits.float(), target, weight=self.weight, reduction="none")
        return ((1.0 - torch.exp(-ce)) ** self.gamma * ce).mean()


def ldam_margins(cls_num_list: Sequence[int], max_m: float) -> np.ndarray:
    """LDAM margins Delta_c = K / n_c^(1/4), with K chosen so that max_c Delta_c = max_m (Cao et al. 2019, eq. 12)."""
    m = 1.0 / np.sqrt(np.sqrt(np.asarray(cls_num_list, dtype=np.float64)))
    return m * (max_m / m.max())


@register_loss("LDAM")
class LDAMLoss(WeightedLoss):
    """Label-distribution-aware margin loss (Cao et al. 2019, eq. 13): CE(s * (z - Delta_y e_y), y).

    Meant for cosine logits (``use_norm=True``: NormedLinear head), hence the scale s (30 in the paper).
    """

    use_norm = True  # the model gets a NormedLinear head

    def __init__(self, cls_num_list, args):
        super().__init__(cls_num_list)
        self.register_buffer("margins", torch.as_tensor(ldam_margins(cls_num_list, args.max_m), dtype=torch.float32))
        self.s = args.ldam_s

    def forward(self, logits, target):
        shifted = logits.float() - F.one_hot(target, logits.shape[1]) * self.margins
        return F.cross_entropy(self.s * shifted, target, weight=self.weight)


def effective_number_weights(cls_num_list: Sequence[int], beta: float) -> np.ndarray:
    """Class-balanced weights (Cui et al. 2019): w_c proportional to (1 - beta) / (1 - beta^n_c), sum_c w_c = C.

    beta = 0 gives all-ones weights (the DRW stage before re-weighting).
    """
    n = np.asarray(cls_num_list, dtype=np.float64)
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return w / w.sum() * len(n)


class TrainRule:
    """How classes are re-balanced. ``class_weights(epoch)`` feeds the loss; ``sample_weights`` a sampler."""

    resample = False

    def __init__(self, cls_num_list: Sequence[int], args: argparse.Namespace):
        self.cls_num_list = list(cls_num_list)
        self.beta = args.beta
        self.drw_epoch = args.drw_epoch

    def class_weights(self, epoch: int) -> np.ndarray:
        return np.ones(len(self.cls_num_list))

    def sample_weights(self, labels: np.ndarray) -> np.ndarray | None:
        """Per-sample drawing weights for a with-replacement sampler, or None for uniform shuffling."""
        return None


def register_rule(name: str):
    def wrap(cls):
        TRAIN_RULES[name] = cls
        return cls
    return wrap


register_rule("None")(TrainRule)


@register_rule("Reweight")
class Reweight(TrainRule):
    """Effective-number class weights in the loss for all epochs."""

    def class_weights(self, epoch):
        return effective_number_weights(self.cls_num_list, self.beta)


@register_rule("DRW")
class DeferredReweight(TrainRule):
    """Deferred re-weighting (Cao et al. 2019, Alg. 1): no weights before ``drw_epoch``, effective-number after."""

    def class_weights(self, epoch):
        beta = self.beta if epoch >= self.drw_epoch else 0.0
        return effective_number_weights(self.cls_num_list, beta)


@register_rule("Resample")
class Resample(TrainRule):
    """Class-balanced re-sampling: draw N samples per epoch with replacement, sample i with weight w_{y_i}.

    w are the effective-number class weights (as the reference ``ImbalancedDatasetSampler``), read from the
    labels given, so it works for any dataset (the reference sampler failed on SVHN's ``.labels``).
    """

    resample = True

    def sample_weights(self, labels):
        return effective_number_weights(self.cls_num_list, self.beta)[np.asarray(labels)]


def build_train_rule(name: str, cls_num_list: Sequence[int], args: argparse.Namespace | None = None) -> TrainRule:
    if name not in TRAIN_RULES:
        raise ValueError(f"unknown --train_rule {name!r}; choose one of: {', '.join(sorted(TRAIN_RULES))}")
    return TRAIN_RULES[name](cls_num_list, args if args is not None else default_loss_args())
