"""Losses and class re-balancing rules for long-tailed classification.

Two registries, both selected by name from the command line:

* ``LOSSES`` (``--loss_type``): ``nn.Module`` losses built from the training class counts.
* ``TRAIN_RULES`` (``--train_rule``): how classes are re-balanced over training: per-class loss weights
  that may change with the epoch (Reweight, DRW) or a class-balanced sampler (Resample).
* ``POSTHOC`` (``--posthoc``): logit corrections applied at evaluation only (logit adjustment, PC softmax).

Every loss keeps its per-class weights in a buffer that is updated in place, so the tensor the
training step sees never changes identity (a captured CUDA graph or a compiled step stays valid).
Notation: z logits (B, C), y labels, n_c training count of class c, N = sum_c n_c, pi_c = n_c / N.
"""
from __future__ import annotations

import argparse
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import distributed

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
    g.add_argument("--tau", type=float, default=1.0,
                   help="logit-adjustment temperature: LA loss z + tau*log(pi) and --posthoc la z - tau*log(pi)")
    g.add_argument("--lade_alpha", type=float, default=0.1, help="LADE: weight alpha of the LADER regulariser")
    g.add_argument("--remine_lambda", type=float, default=0.01,
                   help="LADE: lambda of the regularised DV bound (T1 - T2 - lambda*T2^2)")


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


def class_prior(cls_num_list: Sequence[float]) -> np.ndarray:
    """pi_c = n_c / sum_k n_k (float64), the label distribution of the given class counts."""
    n = np.asarray(cls_num_list, dtype=np.float64)
    if n.ndim != 1 or not np.isfinite(n).all() or (n < 0).any() or n.sum() <= 0:
        raise ValueError(f"class counts must be finite, non-negative and not all zero, got {n.tolist()}")
    return n / n.sum()


class PriorAdjustedCE(WeightedLoss):
    """CE(z + b, y) for a fixed per-class offset b = scale * log(pi + eps) (the buffer ``offset``).

    Training through the source prior with scale s makes z + s * log pi_s estimate log p_s(y | x), so the raw
    logits z carry (1 - s) * log pi_s: ``prior_scale(tau)`` returns s for evaluation (``posthoc_adjustment``,
    the shifted-prior evaluation), which then adds log pi_t - (1 - s) * log pi_s for a target prior pi_t.
    Class weights (train rules) apply to this CE as to ``CrossEntropy``.
    """

    @staticmethod
    def prior_scale(tau: float) -> float:
        return 1.0

    def __init__(self, cls_num_list: Sequence[int], offset: np.ndarray):
        super().__init__(cls_num_list)
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32))

    def forward(self, logits, target):
        return F.cross_entropy(logits.float() + self.offset, target, weight=self.weight)


@register_loss("LA")
class LogitAdjustedLoss(PriorAdjustedCE):
    """Logit-adjusted loss (Menon et al. 2021, section 4.2): CE(z + tau * log(pi + 1e-12), y); predict argmax z.

    At tau = 1 it equals ``BalancedSoftmax`` and LADE-CE (up to the 1e-12 / 1e-9 guards inside the log).
    """

    @staticmethod
    def prior_scale(tau: float) -> float:
        return tau

    def __init__(self, cls_num_list, args):
        super().__init__(cls_num_list, args.tau * np.log(class_prior(cls_num_list) + 1e-12))


@register_loss("BalancedSoftmax")
class BalancedSoftmax(PriorAdjustedCE):
    """Balanced Softmax (Ren et al. 2020): CE(z + log pi, y), i.e. softmax with exp(z_c) weighted by n_c.

    Equals ``LA`` with tau = 1 and LADE-CE (``LADE`` with alpha = 0). Every class needs a training image
    (log 0 is undefined); ``LA`` guards the log with 1e-12 instead.
    """

    def __init__(self, cls_num_list, args=None):
        empty = [c for c, n in enumerate(cls_num_list) if n <= 0]
        if empty:
            raise ValueError(f"--loss_type BalancedSoftmax needs every class in the training set; classes {empty} "
                             "have no image. Use --loss_type LA (log(pi + 1e-12)) instead")
        super().__init__(cls_num_list, np.log(class_prior(cls_num_list)))


@register_loss("LADE")
class LADELoss(PriorAdjustedCE):
    """LADE (Hong et al. 2021, eqs. 16 and 18-20; SPEC section 4): L = LADE-CE + alpha * LADER.

    LADE-CE = CE(z + log(pi_s + 1e-9), y) (the class weights of a train rule apply here only).
    LADER, on the same logits, for a batch of N_b samples with n_c^b of class c:
      T1_c  = 1 / (n_c^b + 1e-8) * sum_{i: y_i = c} z_{i,c}
      T2_c  = log( 1/N_b * sum_{i=1}^{N_b} exp(z_{i,c} - log(pi_s(c) + 1e-9) + log(1/C + 1e-9)) )
      est_c = T1_c - T2_c - lambda * T2_c^2       (regularised Donsker-Varadhan bound)
      LADER = - sum_c pi_s(c) * est_c             (every class counts: an absent one through T2_c)
    alpha = ``--lade_alpha`` (0.1), lambda = ``--remine_lambda`` (0.01): the CIFAR-100-LT setting.
    """

    def __init__(self, cls_num_list, args):
        prior = class_prior(cls_num_list)
        super().__init__(cls_num_list, np.log(prior + 1e-9))
        if distributed.world_size() > 1:
            warnings.warn("LADE under torchrun: LADER's per-class batch statistics use each process's share of the "
                          "batch (LADE's code computed them on the whole DataParallel batch)", stacklevel=2)
        self.register_buffer("prior", torch.as_tensor(prior, dtype=torch.float32))
        self.log_uniform = float(np.log(1.0 / len(prior) + 1e-9))
        self.alpha, self.lam = args.lade_alpha, args.remine_lambda

    def regulariser(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        onehot = F.one_hot(target, z.shape[1]).to(z.dtype)
        t1 = (onehot * z).sum(0) / (onehot.sum(0) + 1e-8)
        t2 = torch.logsumexp(z - self.offset + self.log_uniform, dim=0) - np.log(z.shape[0])
        return -(self.prior * (t1 - t2 - self.lam * t2 ** 2)).sum()

    def forward(self, logits, target):
        return super().forward(logits, target) + self.alpha * self.regulariser(logits, target)


def is_prior_adjusted(loss_type: str) -> bool:
    """Whether ``--loss_type`` trains through the source prior (LA, BalancedSoftmax, LADE)."""
    return hasattr(LOSSES[loss_type], "prior_scale")


def trained_prior_scale(loss_type: str, tau: float = 1.0) -> float:
    """s such that training added s * log pi_s to the logits: 0 for CE/Focal/LDAM, ``tau`` for LA, 1 for
    BalancedSoftmax and LADE."""
    return LOSSES[loss_type].prior_scale(tau) if is_prior_adjusted(loss_type) else 0.0


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


def _posthoc_la(log_source, log_target, tau, prior_scale):
    return -tau * log_source


def _posthoc_pc(log_source, log_target, tau, prior_scale):
    return log_target - (1.0 - prior_scale) * log_source


POSTHOC: dict[str, Callable[..., np.ndarray]] = {"la": _posthoc_la, "pc": _posthoc_pc}


def validate_posthoc(kind: str, prior_adjusted: bool, target_prior: Sequence[float] | None = None) -> None:
    """Reject ``--posthoc``/``--target_prior`` combinations that would silently give wrong predictions."""
    if kind != "none" and kind not in POSTHOC:
        raise ValueError(f"unknown --posthoc {kind!r}; choose one of: none, {', '.join(sorted(POSTHOC))}")
    if kind == "la" and prior_adjusted:
        raise ValueError("--posthoc la subtracts tau*log(pi_s), which a prior-adjusted --loss_type (LA, "
                         "BalancedSoftmax, LADE) already removed in training; use --posthoc pc or none")
    if target_prior:
        if kind != "pc":
            raise ValueError("--target_prior is only used by --posthoc pc; add --posthoc pc or drop it")
        class_prior(target_prior)


def posthoc_adjustment(kind: str, cls_num_list: Sequence[int], tau: float = 1.0,
                       target_prior: Sequence[float] | None = None, prior_scale: float = 0.0
                       ) -> torch.Tensor | None:
    """Per-class vector a (C,) added to the logits at evaluation (prediction argmax_c z_c + a_c), or None.

    * ``none``: None.
    * ``la`` (post-hoc logit adjustment, Menon et al. 2021, section 4.1): a = -tau * log(pi_s + 1e-12).
    * ``pc`` (PC softmax / target-prior correction, Hong et al. 2021, section 3):
      a = log(pi_t + 1e-12) - (1 - s) * log(pi_s + 1e-12), where s = ``prior_scale`` is how much of log pi_s
      the loss added in training (``trained_prior_scale``: 0 for CE, so a = log pi_t - log pi_s; 1 for
      BalancedSoftmax/LADE/LA at tau = 1, so a = log pi_t; tau for LA). pi_t = normalised ``target_prior``
      (counts or probabilities), uniform when None or empty; with pi_t = pi_s the CE correction is zero.
    pi_s comes from ``cls_num_list`` (the training counts).
    """
    validate_posthoc(kind, prior_scale != 0.0, target_prior)
    if kind == "none":
        return None
    num_classes = len(cls_num_list)
    if target_prior and len(target_prior) != num_classes:
        raise ValueError(f"--target_prior has {len(target_prior)} values but the model has {num_classes} classes")
    log_source = np.log(class_prior(cls_num_list) + 1e-12)
    log_target = np.log(class_prior(target_prior if target_prior else np.ones(num_classes)) + 1e-12)
    return torch.as_tensor(POSTHOC[kind](log_source, log_target, tau, prior_scale), dtype=torch.float32)
