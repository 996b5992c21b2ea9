"""Dataset registry for the CIFAR-size benchmarks: name -> how to build the train and test sets.

A builder returns a torchvision-style dataset whose ``.data`` is uint8 (N, 32, 32, 3) and ``.targets`` the
labels, so the same object serves both loaders: the arrays go to the device for ``--loader device``, and
``transform`` is set for ``--loader torch``. Normalisation statistics are the reference code's.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torchvision.transforms as T

from imbalance_cifar import ImbalanceCIFAR10, ImbalanceCIFAR100
from imbalance_svhn import ImbalanceSVHN
from engine import distributed
from engine.loaders import DeviceLoader, TorchLoader

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
SVHN_MEAN = SVHN_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class DatasetSpec:
    """``in_memory``: the builders return ``.data`` arrays (either loader); False: image files whose datasets
    carry their own transforms (``--loader torch`` only, e.g. ImageNet-LT lists)."""
    num_classes: int
    mean: tuple
    std: tuple
    train: Callable[[argparse.Namespace], object]
    test: Callable[[argparse.Namespace], object]
    in_memory: bool = True


def build_dataset(cls, args: argparse.Namespace, **split):
    """``cls(data_path, **split, <long-tail flags>)``; with ``--download``, fetch the files when they are missing.

    Without network the error is the dataset's own "where it looked and how to get the data" message.
    """
    kwargs = dict(imb_type=args.imb_type, imb_factor=args.imb_factor, rand_number=args.rand_number, **split)
    try:
        return cls(args.data_path, **kwargs)
    except FileNotFoundError as missing:
        if not getattr(args, "download", False):
            raise
        try:
            return cls(args.data_path, download=True, **kwargs)
        except FileNotFoundError:  # the download worked, or was not needed, and something else is missing
            raise
        except OSError as failure:
            raise FileNotFoundError(f"{missing} (the download failed too: {failure})") from failure


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(10, CIFAR_MEAN, CIFAR_STD, train=lambda a: build_dataset(ImbalanceCIFAR10, a, train=True),
                           test=lambda a: build_dataset(ImbalanceCIFAR10, a, train=False)),
    "cifar100": DatasetSpec(100, CIFAR_MEAN, CIFAR_STD,
                            train=lambda a: build_dataset(ImbalanceCIFAR100, a, train=True),
                            test=lambda a: build_dataset(ImbalanceCIFAR100, a, train=False)),
    "svhn": DatasetSpec(10, SVHN_MEAN, SVHN_STD, train=lambda a: build_dataset(ImbalanceSVHN, a, split="train"),
                        test=lambda a: build_dataset(ImbalanceSVHN, a, split="test")),
}


def torch_transforms(spec: DatasetSpec, train: bool):
    """The reference PIL pipeline: RandomCrop(32, padding=4) + RandomHorizontalFlip for training; Normalize."""
    tail = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *tail] if train else tail)


def check_loader(spec: DatasetSpec, args: argparse.Namespace) -> None:
    """Image-file data sets are read by DataLoader workers: refuse ``--loader device`` for them."""
    if getattr(args, "loader", "device") == "device" and not spec.in_memory:
        raise ValueError(f"--loader device: --dataset {args.dataset} is read from image files by DataLoader "
                         "workers; use --loader torch")


def make_loader(dataset, spec: DatasetSpec, args: argparse.Namespace, device: torch.device, train: bool,
                sample_weights: np.ndarray | None = None, seed: int = 0, views: int = 1):
    """A ``DeviceLoader`` (``--loader device``) or ``TorchLoader`` (``--loader torch``) over ``dataset``;
    ``views`` augmented views of each training image (device loader only)."""
    check_loader(spec, args)
    if views > 1 and getattr(args, "loader", "device") != "device":
        raise ValueError(f"--loader torch: this method needs {views} views of each image, which only --loader device "
                         "draws; use --loader device")
    batch = distributed.per_process_batch(args.batch_size) if train else args.eval_batch_size
    channels_last = getattr(args, "channels_last", False)
    if getattr(args, "loader", "device") == "device":
        return DeviceLoader(dataset.data, dataset.targets, batch_size=batch, device=device, mean=spec.mean,
                            std=spec.std, train=train, sample_weights=sample_weights, seed=seed,
                            channels_last=channels_last, views=views)
    if spec.in_memory:
        dataset.transform = torch_transforms(spec, train)
    return TorchLoader(dataset, batch_size=batch, device=device, train=train, workers=args.workers,
                       sample_weights=sample_weights, seed=seed, channels_last=channels_last)
