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

ImageNet-LT / iNaturalist 2018 (--dataset imagenet / inat, as the reference): the images listed in
--list_file (default imagenet_inat/data/{ImageNet_LT,iNaturalist18}/..._train.txt, paths under --data_path)
with the ImageNet-LT pipeline (RandomResizedCrop --crop_size, flip, colour jitter on ImageNet), read by
DataLoader workers (--loader torch, the default there); evaluation on the --val_list_file images under the
four rotations (Resize --resize_size, CenterCrop).

    python pretrain_rot.py --dataset imagenet --data_path /path/to/ImageNet -b 256

Differences from the reference: -a defaults to resnet32 for CIFAR/SVHN (the reference's resnet50 default fails
on 32x32 images, issue #22) and to resnet50 for imagenet/inat; --gpu defaults to None as there, which here
means cuda:0 (no DataParallel; use torchrun).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from engine import config
from engine.data.datasets import DATASETS, check_loader
from engine.train.experiment import run_classification
from engine.data.imagesets import ImageArrayDataset
from engine.methods import ROTATIONS, RotationPrediction
from engine.train.runspec import classification_run

def rotation_train_set(train_set):
    """The training images as a 4-class set. Targets i mod 4 stand for a balanced rotation assignment (the
    counts the loss and --train_rule are built from); the labels trained on are drawn per batch by ``rotate``."""
    if hasattr(train_set, "data"):
        return ImageArrayDataset(train_set.data, np.arange(len(train_set.data)) % 4, ROTATIONS,
                                 indices=getattr(train_set, "indices", None))
    relabeled = copy.copy(train_set)  # image files: same images and transform, rotation stand-in targets
    relabeled.targets, relabeled.num_classes = (np.arange(len(train_set)) % 4).tolist(), len(ROTATIONS)
    return relabeled


class RotatedDataset(Dataset):
    """Item 4 * i + k: item i of ``base`` (a (C, H, W) tensor, square) rotated by k * 90 degrees CCW, label k.

    The four rotations of an image are consecutive, and the last image read is kept, so each file is decoded
    once per pass (a DataLoader worker reads whole batches of consecutive items)."""

    def __init__(self, base: Dataset):
        self.base = base
        self.targets = np.tile(np.arange(4), len(base)).tolist()
        self._last = (-1, None)

    def __len__(self) -> int:
        return 4 * len(self.base)

    def __getitem__(self, index: int):
        i, k = divmod(index, 4)
        if self._last[0] != i:
            self._last = (i, self.base[i][0])
        return torch.rot90(self._last[1], k, dims=(1, 2)), k


def rotated_test_set(test_set):
    """Every test image under the four rotations: for arrays, image k * N + i is image i rotated by k * 90 degrees
    CCW; for image files, ``RotatedDataset`` (item 4 * i + k)."""
    if not hasattr(test_set, "data"):
        return RotatedDataset(test_set)
    data = np.concatenate([np.rot90(test_set.data, k, axes=(1, 2)) for k in range(4)])
    return ImageArrayDataset(data, np.repeat(np.arange(4), len(test_set.data)), ROTATIONS)


def list_file(args: argparse.Namespace, split: str) -> str:
    """--list_file (train) / --val_list_file (val), else the reference's split file of --dataset."""
    given = args.list_file if split == "train" else args.val_list_file
    return given or DATASETS[args.dataset].reference_list_file(split)


def data_set(args: argparse.Namespace, split: str):
    """The ``split`` set of --dataset (image-list data: from ``list_file``, with the ImageNet-LT pipeline)."""
    spec = DATASETS[args.dataset]
    files = {} if spec.in_memory else {"list_file": list_file(args, split)}
    return spec.build(split, **files, **config.dataset_kwargs(args))


# Per data source, besides its default backbone: DataLoader / evaluation batch 256 for image files.
LIST_DEFAULTS = {"loader": "torch", "eval_batch_size": 256}
ARRAY_DEFAULTS = {"loader": "device", "eval_batch_size": 1000}


def build_parser() -> argparse.ArgumentParser:
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_data_args(p, DATASETS)
    g = p.add_argument_group("imagenet / inat")
    g.add_argument("--list_file", default=None, help="training split file (default: the data set's LT train list)")
    g.add_argument("--val_list_file", default=None, help="evaluation split file (default: its val list)")
    g.add_argument("--crop_size", type=int, default=224, help="training crop and evaluation centre crop")
    g.add_argument("--resize_size", type=int, default=256, help="evaluation: shorter side before the centre crop")
    config.add_model_args(p)
    config.add_optim_args(p)
    config.add_run_args(p, exp_str="pretrain_rot", gpu=None)
    config.add_speed_args(p)
    # Per data source (resolve_defaults): resnet50 / DataLoader / batch 256 for image files, else the CIFAR ones.
    p.set_defaults(arch=None, **dict.fromkeys(LIST_DEFAULTS))
    return p


def source_defaults(values: dict) -> dict:
    """The flag values with the ones left unset (None) set to the data source's defaults."""
    spec = DATASETS[values["dataset"]]
    defaults = {"arch": spec.default_arch, **(ARRAY_DEFAULTS if spec.in_memory else LIST_DEFAULTS)}
    return {**values, **{key: value for key, value in defaults.items() if values[key] is None}}


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """``source_defaults``, then the checks (common ones, and the split files of image-list data)."""
    vars(args).update(source_defaults(vars(args)))
    config.validate_common(args)
    config.check_classifier_files(args, len(ROTATIONS), "the four rotations")
    check_loader(DATASETS[args.dataset], args.loader)
    if DATASETS[args.dataset].in_memory:
        return args
    for flag, split in (("--list_file", "train"), ("--val_list_file", "val")):
        if not os.path.isfile(list_file(args, split)):
            raise ValueError(f"{flag}: no split file {list_file(args, split)!r} for --dataset {args.dataset}: "
                             "get the ImageNet-LT / iNaturalist 2018 lists (imagenet_inat/README.md) or pass the path")
    return args


def run_name_fields(values: dict) -> tuple[str, ...]:
    """The reference's run-name fields: no long-tail fields for the image-list data sets."""
    long_tail = ("imb_type", "imb_factor") if DATASETS[values["dataset"]].in_memory else ()
    return ("dataset", "arch", "loss_type", "train_rule", *long_tail, "exp_str")


# e.g. cifar10_resnet32_CE_None_exp_0.01_pretrain_rot; reproduce.py keeps the suffix pretrain_rot (exp_str=False),
# the checkpoint name of the upstream README and of configs/ssp/
RUN = classification_run(run_name_fields, exp_str=False, resolve=source_defaults, checks=config.validate_common)


def main(argv=None):
    args = config.parse(build_parser(), argv, resolve_defaults)
    data = DATASETS[args.dataset]
    spec = dataclasses.replace(data, num_classes=len(ROTATIONS))
    return run_classification(config.classifier_run(args, RUN.run_name(vars(args))), spec,
                              rotation_train_set(data_set(args, "train")),
                              rotated_test_set(data_set(args, data.eval_split)), RotationPrediction)


if __name__ == "__main__":
    config.run_cli(main)
