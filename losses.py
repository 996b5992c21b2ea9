"""Losses and class re-balancing rules for long-tailed classification.

Three registries (``registry.Registry``), each selected by name from the command line:

* ``LOSSES`` (``--loss_type``): ``nn.Module`` losses; ``build_loss(name, cls_num_list, **hparams)``.
* ``TRAIN_RULES`` (``--train_rule``): how classes are re-balanced over training: per-class loss weights
  that may change with the epoch (Reweight, DRW) or a class-balanced sampler (Resample);
  ``build_train_rule(name, cls_num_list, **hparams)``.
* ``POSTHOC`` (``--posthoc``): logit corrections applied at evaluation only (logit adjustment, PC softmax).

Each loss and rule declares its hyper-parameters once, as constructor keywords with the papers' defaults
(``flag_names`` / ``flag_help`` name and describe their flags); engine/config.py derives the flags from them.

Every loss built by ``build_loss`` keeps its per-class weights in a buffer that is updated in place, so the
tensor the training step sees never changes identity (a captured CUDA graph or a compiled step stays valid).
Notation: z logits (B, C), y labels, n_c training count of class c, N = sum_c n_c, pi_c = n_c / N.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from registry import Registry

LOSSES = Registry("loss", flag="--loss_type", context=("cls_num_list", "weight"))
TRAIN_RULES = Registry("train rule", flag="--train_rule", context=("cls_num_list",))
POSTHOC = Registry("post-hoc correction", flag="--posthoc")


def build_loss(name: str, cls_num_list: Sequence[int], **hparams) -> nn.Module:
    """``LOSSES[name]`` for the training class counts, with the keywords of ``hparams`` its constructor takes
    (the others are ignored, so one set of hyper-parameters builds any loss).

    The class-weight buffer starts as ones(C) (unless ``hparams`` gives ``weight``), so a train rule can update
    it in place from the first epoch on."""
    kwargs = {"cls_num_list": list(cls_num_list), "weight": torch.ones(len(cls_num_list)), **hparams}
    return LOSSES.build(name, **kwargs)


class WeightedLoss(nn.Module):
    """Base: holds the per-class weight buffer ``weight`` that train rules update in place.

    ``weight`` initialises it; without it the buffer is ones(C) when the class count is known
    (``num_classes``), else the loss is unweighted (``weight`` None, as upstream's ``FocalLoss()``)."""

    def __init__(self, weight: Sequence[float] | torch.Tensor | None = None, num_classes: int | None = None):
        super().__init__()
        if weight is None and num_classes is not None:
            weight = torch.ones(num_classes)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def set_class_weights(self, weights: Sequence[float] | np.ndarray | torch.Tensor) -> None:
        if self.weight is None:
            raise ValueError(f"{type(self).__name__} was built without class weights, so they cannot be updated in "
                             "place; build it with weight=torch.ones(num_classes) (as losses.build_loss does)")
        self.weight.copy_(torch.as_tensor(np.asarray(weights, dtype=np.float32)))


@LOSSES.register("CE")
class CrossEntropy(WeightedLoss):
    """Cross-entropy -log softmax(z)_y, weighted mean sum_i w_{y_i} l_i / sum_i w_{y_i} (PyTorch semantics)."""

    def __init__(self, weight=None):
        super().__init__(weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, weight=self.weight)


@LOSSES.register("Focal")
class FocalLoss(WeightedLoss):
    """Focal loss (Lin et al. 2017, eq. 4) as used by LDAM-DRW: mean_i (1 - exp(-l_i))^gamma * l_i.

    Upstream signature ``FocalLoss(weight=None, gamma)``; without ``weight`` it is unweighted.

    l_i is the per-sample (class-weighted) cross-entropy, so with weights exp(-l_i) is not exactly the
    probability of the true class; this matches the reference implementations (kaidic/LDAM-DRW, YyzHarry/imbalanced-semi-self).
    """

    flag_names = {"gamma": "focal_gamma"}
    flag_help = {"gamma": "Focal loss gamma (imbalanced-semi-self hard-codes 1)"}

    def __init__(self, weight=None, gamma: float = 1.0):
        super().__init__(weight)
        self.gamma = gamma

    def forward(self, logits, target):
        ce = F.cross_entropy(logits.float(), target, weight=self.weight, reduction="none")
        return ((1.0 - torch.exp(-ce)) ** self.gamma * ce).mean()


def ldam_margins(cls_num_list: Sequence[int], max_m: float) -> np.ndarray:
    """LDAM margins Delta_c = K / n_c^(1/4), with K chosen so that max_c Delta_c = max_m (Cao et al. 2019, eq. 12)."""
    m = 1.0 / np.sqrt(np.sqrt(np.asarray(cls_num_list, dtype=np.float64)))
    return m * (max_m / m.max())


@LOSSES.register("LDAM")
class LDAMLoss(WeightedLoss):
    """Label-distribution-aware margin loss (Cao et al. 2019, eq. 13): CE(s * (z - Delta_y e_y), y).

    Meant for cosine logits (``use_norm=True``: NormedLinear head), hence the scale s (30 in the paper).
    Upstream LDAM-DRW signature and order: ``LDAMLoss(cls_num_list, max_m=0.5, weight=None, s=30)``.
    """

    use_norm = True  # the model gets a NormedLinear head
    flag_names = {"s": "ldam_s"}
    flag_help = {"max_m": "LDAM largest margin (0.5 CIFAR, 0.3 iNat)", "s": "LDAM logit scale s"}

    def __init__(self, cls_num_list: Sequence[int], max_m: float = 0.5, weight=None, s: float = 30.0):
        super().__init__(weight, len(cls_num_list))
        self.register_buffer("margins", torch.as_tensor(ldam_margins(cls_num_list, max_m), dtype=torch.float32))
        self.s = s

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

    def __init__(self, cls_num_list: Sequence[int], offset: np.ndarray, weight=None):
        super().__init__(weight, len(cls_num_list))
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32))

    def forward(self, logits, target):
        return F.cross_entropy(logits.float() + self.offset, target, weight=self.weight)


@LOSSES.register("LA")
class LogitAdjustedLoss(PriorAdjustedCE):
    """Logit-adjusted loss (Menon et al. 2021, section 4.2): CE(z + tau * log(pi + 1e-12), y); predict argmax z.

    At tau = 1 it equals ``BalancedSoftmax`` and LADE-CE (up to the 1e-12 / 1e-9 guards inside the log).
    """

    flag_help = {"tau": "logit-adjustment temperature: LA loss z + tau*log(pi) and --posthoc la z - tau*log(pi)"}

    @staticmethod
    def prior_scale(tau: float) -> float:
        return tau

    def __init__(self, cls_num_list: Sequence[int], tau: float = 1.0, weight=None):
        super().__init__(cls_num_list, tau * np.log(class_prior(cls_num_list) + 1e-12), weight)


@LOSSES.register("BalancedSoftmax")
class BalancedSoftmax(PriorAdjustedCE):
    """Balanced Softmax (Ren et al. 2020): CE(z + log pi, y), i.e. softmax with exp(z_c) weighted by n_c.

    Equals ``LA`` with tau = 1 and LADE-CE (``LADE`` with alpha = 0). Every class needs a training image
    (log 0 is undefined); ``LA`` guards the log with 1e-12 instead.
    """

    def __init__(self, cls_num_list: Sequence[int], weight=None):
        empty = [c for c, n in enumerate(cls_num_list) if n <= 0]
        if empty:
            raise ValueError(f"--loss_type BalancedSoftmax needs every class in the training set; classes {empty} "
                             "have no image. Use --loss_type LA (log(pi + 1e-12)) instead")
        super().__init__(cls_num_list, np.log(class_prior(cls_num_list)), weight)


@LOSSES.register("LADE")
class LADELoss(PriorAdjustedCE):
    """LADE (Hong et al. 2021, eqs. 16 and 18-20; docs/protocols.md#lade): L = LADE-CE + alpha * LADER.

    LADE-CE = CE(z + log(pi_s + 1e-9), y) (the class weights of a train rule apply here only).
    LADER, on the same logits, for a batch of N_b samples with n_c^b of class c:
      T1_c  = 1 / (n_c^b + 1e-8) * sum_{i: y_i = c} z_{i,c}
      T2_c  = log( 1/N_b * sum_{i=1}^{N_b} exp(z_{i,c} - log(pi_s(c) + 1e-9) + log(1/C + 1e-9)) )
      est_c = T1_c - T2_c - lambda * T2_c^2       (regularised Donsker-Varadhan bound)
      LADER = - sum_c pi_s(c) * est_c             (every class counts: an absent one through T2_c)
    alpha = ``--lade_alpha`` (0.1), lambda = ``--remine_lambda`` (0.01): the CIFAR-100-LT setting.
    """

    flag_names = {"alpha": "lade_alpha"}
    flag_help = {"alpha": "LADE: weight alpha of the LADER regulariser",
                 "remine_lambda": "LADE: lambda of the regularised DV bound (T1 - T2 - lambda*T2^2)"}

    def __init__(self, cls_num_list: Sequence[int], alpha: float = 0.1, remine_lambda: float = 0.01, weight=None):
        prior = class_prior(cls_num_list)
        super().__init__(cls_num_list, np.log(prior + 1e-9), weight)
        if _distributed_world_size() > 1:
            warnings.warn("LADE under torchrun: LADER's per-class batch statistics use each process's share of the "
                          "batch (LADE's code computed them on the whole DataParallel batch)", stacklevel=2)
        self.register_buffer("prior", torch.as_tensor(prior, dtype=torch.float32))
        self.log_uniform = float(np.log(1.0 / len(prior) + 1e-9))
        self.alpha, self.lam = alpha, remine_lambda

    def regulariser(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        onehot = F.one_hot(target, z.shape[1]).to(z.dtype)
        t1 = (onehot * z).sum(0) / (onehot.sum(0) + 1e-8)
        t2 = torch.logsumexp(z - self.offset + self.log_uniform, dim=0) - np.log(z.shape[0])
        return -(self.prior * (t1 - t2 - self.lam * t2 ** 2)).sum()

    def forward(self, logits, target):
        return super().forward(logits, target) + self.alpha * self.regulariser(logits, target)


def _distributed_world_size() -> int:
    """Processes of an initialised torch.distributed group (1 without one); losses stays free of engine."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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
    """How classes are re-balanced. ``class_weights(epoch)`` feeds the loss; ``sample_weights`` a sampler.

    This base is ``--train_rule None``: weights all one (plain ERM), uniform shuffling."""

    resample = False
    flag_names = {"start_epoch": "drw_epoch"}
    flag_help = {"beta": "effective-number beta for Reweight/DRW/Resample",
                 "start_epoch": "DRW: epoch (0-indexed) where re-weighting starts"}

    def __init__(self, cls_num_list: Sequence[int]):
        self.cls_num_list = list(cls_num_list)

    def class_weights(self, epoch: int) -> np.ndarray:
        return np.ones(len(self.cls_num_list))

    def sample_weights(self, labels: np.ndarray) -> np.ndarray | None:
        """Per-sample drawing weights for a with-replacement sampler, or None for uniform shuffling."""
        return None


TRAIN_RULES.register("None", TrainRule)


class EffectiveNumberRule(TrainRule):
    """Base of the rules built on the effective-number weights of ``beta`` (``effective_number_weights``)."""

    def __init__(self, cls_num_list: Sequence[int], beta: float = 0.9999):
        super().__init__(cls_num_list)
        self.beta = beta


@TRAIN_RULES.register("Reweight")
class Reweight(EffectiveNumberRule):
    """Effective-number class weights in the loss for all epochs: w_c proportional to (1 - beta) / (1 - beta^n_c)
    (the class-balanced loss of Cui et al. 2019)."""

    def class_weights(self, epoch):
        return effective_number_weights(self.cls_num_list, self.beta)


@TRAIN_RULES.register("DRW")
class DeferredReweight(Reweight):
    """Deferred re-weighting (Cao et al. 2019, Alg. 1): no weights before ``start_epoch``, effective-number after."""

    def __init__(self, cls_num_list: Sequence[int], beta: float = 0.9999, start_epoch: int = 160):
        super().__init__(cls_num_list, beta)
        self.start_epoch = start_epoch

    def class_weights(self, epoch):
        beta = self.beta if epoch >= self.start_epoch else 0.0
        return effective_number_weights(self.cls_num_list, beta)


@TRAIN_RULES.register("Resample")
class Resample(EffectiveNumberRule):
    """Class-balanced re-sampling: draw N samples per epoch with replacement, sample i with weight w_{y_i}.

    w_c proportional to (1 - beta) / (1 - beta^n_c), the effective-number class weights (Cui et al. 2019) as the
    reference ``ImbalancedDatasetSampler``, read from the labels given, so it works for any dataset (the reference
    sampler failed on SVHN's ``.labels``). The loss stays unweighted.
    """

    resample = True

    def sample_weights(self, labels):
        return effective_number_weights(self.cls_num_list, self.beta)[np.asarray(labels)]


def build_train_rule(name: str, cls_num_list: Sequence[int], **hparams) -> TrainRule:
    """``TRAIN_RULES[name](cls_num_list, ...)`` with the keywords of ``hparams`` it takes (the others ignored)."""
    return TRAIN_RULES.build(name, cls_num_list, **hparams)


@POSTHOC.register("la")
def _posthoc_la(log_source, log_target, tau, prior_scale):
    return -tau * log_source


@POSTHOC.register("pc")
def _posthoc_pc(log_source, log_target, tau, prior_scale):
    return log_target - (1.0 - prior_scale) * log_source


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
