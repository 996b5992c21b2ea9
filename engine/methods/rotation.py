"""Rotation prediction (Gidaris et al. 2018) as self-supervised pre-training (Yang & Xu 2020, sec. 4)."""
from __future__ import annotations

import torch

from engine.data.augment import rotate_batch
from engine.methods.classification import Classification
from engine.data.samplers import epoch_seed

ROTATIONS = ("0", "90", "180", "270")  # class k = k * 90 degrees counter-clockwise


def rotation_labels(batch_size: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """The first B of a random permutation of [0, 1, 2, 3] repeated ceil(B/4) + 1 times (upstream's draw).

    Each label appears between ceil(B/4) + 1 - (4 * (ceil(B/4) + 1) - B) and ceil(B/4) + 1 times.
    """
    pool = torch.arange(4, device=device).repeat(-(-batch_size // 4) + 1)
    return pool[torch.randperm(len(pool), device=device, generator=generator)[:batch_size]]


class RotationPrediction(Classification):
    """A 4-way classifier of k, trained on each image rotated by k * 90 degrees CCW (k drawn per batch).

    Class labels are never used. The rotations come from a generator re-seeded from (``seed``, epoch) at each
    epoch, so a resumed run draws the rotations of an unbroken one; ``seed=None`` takes torch's initial seed
    (the run seed, set before the method is built).
    """

    def __init__(self, model, criterion, rule=None, *, seed: int | None = None, **kwargs):
        super().__init__(model, criterion, rule, **kwargs)
        self.seed = seed
        self.epoch, self.generator = 0, None

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        self.epoch, self.generator = epoch, None

    def targets(self, x, y):
        if self.generator is None:
            self.generator = torch.Generator(device=x.device)
            seed = torch.initial_seed() if self.seed is None else self.seed
            self.generator.manual_seed(epoch_seed(seed, self.epoch))
        k = rotation_labels(x.shape[0], x.device, self.generator)
        return rotate_batch(x, k), k
