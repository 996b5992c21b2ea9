"""Learning-rate schedules, evaluated once per epoch (as the reference code does).

``step``   (LDAM-DRW / imbalanced-semi-self, corrected order, docs/protocols.md#learning-rate-schedule): linear warm-up
           lr * (epoch + 1) / W for the first W epochs, then lr * factor_k where k is the number of
           milestones already reached (defaults: x0.01 from epoch 160, x1e-4 from epoch 180, 0-indexed).
           In general the warm-up is lr * (f + (1 - f) * (epoch + 1) / W) with f = ``warmup_factor``: f = 0
           is the above; f = 1/3 is LADE's WarmupMultiStep (Hong et al. 2021 code), whose scheduler steps at the
           start of every epoch, so epoch e runs at its value for e + 1 (and its milestones 120/160 are 119/159
           here, 0-indexed).
``cosine`` (MoCo v2, classifier-balancing): lr * 0.5 * (1 + cos(pi * epoch / epochs)), after the warm-up.

``LRSchedule`` holds the numbers and is called with the epoch; its keyword defaults declare the schedule flags
(engine/config.py derives ``--warmup_epochs --warmup_factor --milestones --lr_factors`` from them).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Sequence

from registry import Registry

SCHEDULES = Registry("schedule", flag="--lr_schedule")


@SCHEDULES.register("step")
def _step(schedule: "LRSchedule", epoch: int) -> float:
    k = bisect.bisect_right(schedule.milestones, epoch)
    return schedule.lr * (schedule.lr_factors[k - 1] if k else 1.0)


@SCHEDULES.register("cosine")
def _cosine(schedule: "LRSchedule", epoch: int) -> float:
    return schedule.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / schedule.epochs))


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of each (0-indexed) epoch: ``schedule(epoch) -> lr``.

    ``kind`` names the shape after the warm-up (``SCHEDULES``: step, cosine); ``lr`` is the base rate and
    ``epochs`` the run length (cosine). The constructor checks the numbers; errors name the flags.
    """

    flag_help = {"warmup_epochs": "linear warm-up length (epochs)",
                 "warmup_factor": "warm-up lr * (f + (1 - f) * (epoch + 1) / W): 0 as LDAM-DRW, 1/3 as LADE",
                 "milestones": "step schedule: epochs (0-indexed) where the LR factor changes",
                 "lr_factors": "step schedule: LR multiplier from each milestone on (absolute, not cumulative)"}

    kind: str
    lr: float
    epochs: int
    warmup_epochs: int = 5
    warmup_factor: float = 0.0
    milestones: Sequence[int] = (160, 180)
    lr_factors: Sequence[float] = (0.01, 0.0001)

    def __post_init__(self):
        SCHEDULES[self.kind]  # an unknown kind names --lr_schedule and the choices
        # tuples: the schedule is a value (hashable, not changed behind the trainer's back)
        object.__setattr__(self, "milestones", tuple(self.milestones))
        object.__setattr__(self, "lr_factors", tuple(self.lr_factors))
        if len(self.milestones) != len(self.lr_factors):
            raise ValueError(f"--milestones {list(self.milestones)} and --lr_factors {list(self.lr_factors)} must "
                             "have the same length: one LR factor per milestone")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"--milestones must be increasing, got {list(self.milestones)}")
        if self.warmup_epochs < 0:
            raise ValueError(f"--warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0.0 <= self.warmup_factor <= 1.0:
            raise ValueError(f"--warmup_factor must be in [0, 1], got {self.warmup_factor}")

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            f = self.warmup_factor
            return self.lr * (f + (1.0 - f) * (epoch + 1) / self.warmup_epochs)
        return SCHEDULES[self.kind](self, epoch)
