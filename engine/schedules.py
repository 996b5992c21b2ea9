"""Learning-rate schedules, evaluated once per epoch (as the reference code does).

``step``   (LDAM-DRW / imbalanced-semi-self, SPEC section 1.7, corrected order): linear warm-up
           lr * (epoch + 1) / W for the first W epochs, then lr * factor_k where k is the number of
           milestones already reached (defaults: x0.01 from epoch 160, x1e-4 from epoch 180, 0-indexed).
           In general the warm-up is lr * (f + (1 - f) * (epoch + 1) / W) with f = ``--warmup_factor``: f = 0
           is the above; f = 1/3 is LADE's WarmupMultiStep (Hong et al. 2021 code), whose scheduler steps at the
           start of every epoch, so epoch e runs at its value for e + 1 (and its milestones 120/160 are 119/159
           here, 0-indexed).
``cosine`` (MoCo v2, classifier-balancing): lr * 0.5 * (1 + cos(pi * epoch / epochs)), after the warm-up.
"""
from __future__ import annotations

import argparse
import bisect
import math
from typing import Callable

SCHEDULES: dict[str, Callable[[argparse.Namespace, int], float]] = {}


def add_schedule_args(parser: argparse.ArgumentParser, schedule: str = "step", warmup_epochs: int = 5,
                      milestones=(160, 180), lr_factors=(0.01, 0.0001)) -> None:
    g = parser.add_argument_group("learning-rate schedule")
    g.add_argument("--lr_schedule", default=schedule, choices=sorted(SCHEDULES), help="per-epoch LR schedule")
    g.add_argument("--warmup_epochs", type=int, default=warmup_epochs, help="linear warm-up length (epochs)")
    g.add_argument("--warmup_factor", type=float, default=0.0,
                   help="warm-up lr * (f + (1 - f) * (epoch + 1) / W): 0 as LDAM-DRW, 1/3 as LADE")
    g.add_argument("--milestones", type=int, nargs="*", default=list(milestones),
                   help="step schedule: epochs (0-indexed) where the LR factor changes")
    g.add_argument("--lr_factors", type=float, nargs="*", default=list(lr_factors),
                   help="step schedule: LR multiplier from each milestone on (absolute, not cumulative)")


def _warmup(args, epoch: int) -> float | None:
    if epoch >= args.warmup_epochs:
        return None
    start = getattr(args, "warmup_factor", 0.0)
    return args.lr * (start + (1.0 - start) * (epoch + 1) / args.warmup_epochs)


def _step(args, epoch: int) -> float:
    warm = _warmup(args, epoch)
    if warm is not None:
        return warm
    k = bisect.bisect_right(args.milestones, epoch)
    return args.lr * (args.lr_factors[k - 1] if k else 1.0)


def _cosine(args, epoch: int) -> float:
    warm = _warmup(args, epoch)
    if warm is not None:
        return warm
    return args.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))


SCHEDULES.update(step=_step, cosine=_cosine)


def lr_at(args: argparse.Namespace, epoch: int) -> float:
    """The learning rate for (0-indexed) ``epoch`` under ``args.lr_schedule``."""
    return SCHEDULES[args.lr_schedule](args, epoch)


def validate_schedule(args: argparse.Namespace) -> None:
    if len(args.milestones) != len(args.lr_factors):
        raise ValueError(f"--milestones {args.milestones} and --lr_factors {args.lr_factors} must have the same "
                         "length: one LR factor per milestone")
    if list(args.milestones) != sorted(args.milestones):
        raise ValueError(f"--milestones must be increasing, got {args.milestones}")
    if args.warmup_epochs < 0:
        raise ValueError(f"--warmup_epochs must be >= 0, got {args.warmup_epochs}")
    factor = getattr(args, "warmup_factor", 0.0)
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"--warmup_factor must be in [0, 1], got {factor}")
