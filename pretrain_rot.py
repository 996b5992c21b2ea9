"""Rotation-prediction self-supervised pre-training (Gidaris et al. 2018) on long-tailed training images.

Yang & Xu 2020 (sec. 4, SSP): pre-train the backbone on the imbalanced training images without their labels,
then train normally from it:

    python pretrain_rot.py --dataset cifar10 --imb_factor 0.01
    python train.py --dataset cifar10 --imb_factor 0.01 \\
        --pretrained_model ./checkpoint/cifar10_resnet32_CE_None_exp_0.01_pretrain_rot/ckpt.pth.tar

Task: each training image is rotated once by k * 90 degrees counter-clockwise and a 4-way head predicts k
with --loss_type (CE). Per batch, k is upstream's nearly balanced draw (a random permutation of [0, 1, 2, 3]
repeated, cut to the batch size), drawn from a generator seeded by (run seed, epoch): a resumed run draws
the rotations of an unbroken one. Class
labels are never used: the loss and --train_rule see the four balanced rotation classes, so re-balancing
rules have nothing to correct.
Evaluation: every test image under all four rotations, so the reported Prec@1 is a deterministic rotation
accuracy (upstream drew one random rotation per test image; it is not a classification accuracy either).

Differences from the reference: -a defaults to resnet32 (the reference's resnet50 default fails on 32x32
images, issue #22); --gpu defaults to None as there, which here means cuda:0 (no DataParallel; use torchrun).
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from engine import config
from engine.augment import rotate_batch
from engine.data import DATASETS
from engine.experiment import run_classification, store_name
from engine.samplers import epoch_seed
from imbalance_cifar import ImageArrayDataset

ROTATIONS = ("0", "90", "180", "270")  # class k = k * 90 degrees counter-clockwise


def rotation_labels(batch_size: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """The first B of a random permutation of [0, 1, 2, 3] repeated ceil(B/4) + 1 times (upstream's draw).

    Each label appears between ceil(B/4) + 1 - (4 * (ceil(B/4) + 1) - B) and ceil(B/4) + 1 times.
    """
    pool = torch.arange(4, device=device).repeat(-(-batch_size // 4) + 1)
    return pool[torch.randperm(len(pool), device=device, generator=generator)[:batch_size]]


class Rotate:
    """Batch transform: (images, class labels) -> (image i rotated by k_i * 90 degrees CCW, k).

    Labels come from a generator re-seeded from (run seed, epoch) at each epoch, so a resumed run draws the
    rotations of an unbroken one (the run seed is torch's, set by engine.experiment.seed_everything).
    """

    def __init__(self):
        self.epoch, self.generator = 0, None

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.generator = epoch, None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.generator is None:
            self.generator = torch.Generator(device=x.device)
            self.generator.manual_seed(epoch_seed(torch.initial_seed(), self.epoch))
        k = rotation_labels(x.shape[0], x.device, self.generator)
        return rotate_batch(x, k), k


def rotation_train_set(train_set) -> ImageArrayDataset:
    """The training images as a 4-class set. Targets i mod 4 stand for a balanced rotation assignment (the
    counts the loss and --train_rule are built from); the labels trained on are drawn per batch by ``rotate``."""
    return ImageArrayDataset(train_set.data, np.arange(len(train_set.data)) % 4, ROTATIONS)


def rotated_test_set(test_set) -> ImageArrayDataset:
    """Every test image under the four rotations: image k * N + i is image i rotated by k * 90 degrees CCW."""
    data = np.concatenate([np.rot90(test_set.data, k, axes=(1, 2)) for k in range(4)])
    return ImageArrayDataset(data, np.repeat(np.arange(4), len(test_set.data)), ROTATIONS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_data_args(p, DATASETS)
    config.add_model_args(p)
    config.add_optim_args(p)
    config.add_run_args(p, exp_str="pretrain_rot", gpu=None)
    config.add_speed_args(p)
    return p


def main(argv=None):
    args = config.parse(build_parser(), argv)
    data = DATASETS[args.dataset]
    spec = dataclasses.replace(data, num_classes=len(ROTATIONS))
    return run_classification(args, spec, rotation_train_set(data.train(args)), rotated_test_set(data.test(args)),
                              store_name(args), batch_transform=Rotate())


if __name__ == "__main__":
    config.run_cli(main)
