"""The decoupled recipe's stages and classifier heads (Kang et al. 2020, "Decoupling Representation and
Classifier for Long-Tailed Recognition").

* ``feature``: joint training of backbone and linear head (the representation-learning stage; the
  reference's "CE (Uniform)" or "CE (Balanced)" depending on the sampler). Initialised from a
  self-supervised backbone (MoCo / rotation) or from scratch.
* ``crt``: classifier re-training (Sec. 4): a freshly initialised dot-product head ``fc`` (Linear with bias)
  trained, usually with class-aware sampling, on the frozen backbone of a stage-1 model. Frozen = every
  backbone parameter has ``requires_grad=False`` and is left out of the optimiser.
  BatchNorm running statistics: the reference puts the whole network in train mode each epoch, so the
  frozen backbone's BN statistics keep being re-estimated on class-balanced batches (docs/protocols.md#imagenet-lt-and-inaturalist).
  ``freeze_bn=False`` (default) keeps that behaviour; ``freeze_bn=True`` keeps the backbone's BN layers
  in eval mode, so the stage-1 features are used exactly as they were (weights *and* statistics unchanged).
* ``tau_norm``: no training. The stage-1 head's weights are rescaled, w_c <- w_c / ||w_c||_2^tau
  (Sec. 4, "tau-normalized classifier"), and the bias is dropped (logits = <g(x), w_c / ||w_c||^tau>, as the
  authors' evaluation does); tau = 0 keeps the weights, tau = 1 is L2 normalisation. tau is chosen on the
  validation split over a grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

HEAD = "fc"


@dataclass(frozen=True)
class Stage:
    """What a stage does: whether it trains, whether the backbone learns, what it takes from ``init``.

    ``load``: 'backbone' (fresh head; MoCo, rotation or stage-1 checkpoints) or 'model' (the whole classifier).
    """
    trains: bool
    train_backbone: bool
    load: str
    needs_init: bool


STAGES: dict[str, Stage] = {
    "feature": Stage(trains=True, train_backbone=True, load="backbone", needs_init=False),
    "crt": Stage(trains=True, train_backbone=False, load="backbone", needs_init=True),
    "tau_norm": Stage(trains=False, train_backbone=False, load="model", needs_init=True),
}


def is_head(name: str) -> bool:
    return name.split(".")[0] == HEAD


def freeze_backbone(model: nn.Module) -> list[nn.Parameter]:
    """Set ``requires_grad=False`` on every parameter outside the head; returns the head's parameters."""
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(is_head(name))
        if is_head(name):
            trainable.append(p)
    return trainable


def tau_normalized(fc: nn.Linear, tau: float) -> nn.Linear:
    """A Linear with rows w_c / ||w_c||_2^tau and a zero bias (Kang et al. 2020, Sec. 4); ``fc`` is untouched.

    The bias is kept as zeros so the result has the layout of a plain ``fc`` (its checkpoint loads anywhere).
    """
    if not isinstance(fc, nn.Linear):
        raise TypeError(f"tau-normalisation needs a linear (dot-product) head, got {type(fc).__name__} "
                        "(the LDAM cosine head is already normalised)")
    out = nn.Linear(fc.in_features, fc.out_features, bias=True).to(fc.weight.device)
    with torch.no_grad():
        norms = fc.weight.norm(p=2, dim=1, keepdim=True)
        out.weight.copy_(fc.weight / norms.pow(tau))
        out.bias.zero_()
    return out
