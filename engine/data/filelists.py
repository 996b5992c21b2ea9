"""Data sets read from split files: one ``relative/path.jpg label`` per line, paths under a data root.

The split files are the ones of Liu et al. 2019 (OLTR; ImageNet-LT) and the iNaturalist 2018 lists used by
classifier-balancing and imbalanced-semi-self; they are the authors' and are not shipped here (see
imagenet_inat/README.md for where to get them).

Images are decoded with ``torchvision.io.decode_image`` on the file bytes (libjpeg-turbo, no PIL round trip)
into uint8 (3, H, W) tensors, and augmented with ``torchvision.transforms.v2`` on those tensors, in the
DataLoader workers. Files torchvision cannot decode fall back to PIL. The reference pipeline (classifier-balancing,
Kang et al. 2020): training RandomResizedCrop(224) + horizontal flip (+ ColorJitter(0.4, 0.4, 0.4, 0) on ImageNet only)
+ Normalize; evaluation Resize(256) + CenterCrop(224) + Normalize. Crop and resize sizes are parameters so
the tiny synthetic set can run at 32-64 pixels.

The split-file DatasetSpec entries of engine/data/datasets.py (ImageNet-LT, iNaturalist 2018) build ``ListDataset``s with
``list_transform``.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Callable

import numpy as np
import torch
import torchvision.transforms.v2 as T
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image


def read_split_file(path: str) -> tuple[list[str], np.ndarray]:
    """Parse a split file into (relative paths, int64 labels); errors name the file and the line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file {path!r} not found: get the ImageNet-LT / iNaturalist 2018 lists "
                                "(see imagenet_inat/README.md) or pass the right path")
    paths, labels = [], []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{lineno}: expected 'relative/path.jpg label', got {line.strip()!r}")
            paths.append(parts[0])
            labels.append(int(parts[1]))
    if not paths:
        raise ValueError(f"split file {path!r} lists no image")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min() < 0:
        raise ValueError(f"split file {path!r}: negative label {int(labels.min())}")
    return paths, labels


def _read_bytes(path: str, root: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path!r} (listed in the split file) is missing under the data root "
                                f"{root!r}: check --data_root") from None


def _pil_rgb(data: bytes, path: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as e:  # PIL raises many types for broken files
        raise ValueError(f"image {path!r} cannot be decoded ({e}); the file is corrupt or not an image") from e


def decode_tensor(data: bytes, path: str) -> torch.Tensor:
    """uint8 (3, H, W) RGB from encoded bytes: torchvision's decoders (JPEG, PNG, WebP, GIF), else PIL.

    torchvision 0.29 marks its decoders deprecated in favour of TorchCodec (not a dependency here); the
    warning is silenced, requirements.txt pins torchvision < 0.30.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return torch.from_numpy(np.asarray(_pil_rgb(data, path))).permute(2, 0, 1).contiguous()


DECODERS: dict[str, Callable[[bytes, str], object]] = {"tensor": decode_tensor, "pil": _pil_rgb}


class ListDataset(Dataset):
    """Images listed in a split file, decoded and passed through ``transform``.

    ``decode='pil'`` gives RGB PIL images (for PIL transform pipelines); ``decode='tensor'`` gives uint8
    (3, H, W) tensors from torchvision's decoders (faster; use with ``transforms.v2``).
    """

    def __init__(self, root: str, split_file: str, transform=None, num_classes: int | None = None,
                 decode: str = "pil"):
        if decode not in DECODERS:
            raise ValueError(f"decode must be one of {sorted(DECODERS)}, got {decode!r}")
        self.root, self.transform, self.decode = root, transform, DECODERS[decode]
        paths, labels = read_split_file(split_file)
        self.paths = np.asarray(paths)  # one numpy array: no per-item refcounts touched in forked workers
        self.targets = labels.tolist()
        self.num_classes = num_classes or int(labels.max()) + 1

    def __len__(self) -> int:
        return len(self.paths)

    def get_cls_num_list(self) -> list[int]:
        return np.bincount(self.targets, minlength=self.num_classes).tolist()

    def __getitem__(self, i: int):
        path = os.path.join(self.root, str(self.paths[i]))
        img = self.decode(_read_bytes(path, self.root), path)
        return (self.transform(img) if self.transform else img), self.targets[i]


def list_transform(spec, train: bool, crop: int = 224, resize: int = 256) -> T.Compose:
    """The reference pipeline on uint8 tensors (Kang et al. 2020) with ``spec``'s mean, std and colour jitter;
    ``crop``/``resize`` replace 224/256."""
    tail = [T.ToDtype(torch.float32, scale=True), T.Normalize(spec.mean, spec.std)]
    if not train:
        return T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(crop), *tail])
    jitter = [T.ColorJitter(spec.color_jitter, spec.color_jitter, spec.color_jitter, 0)] if spec.color_jitter else []
    return T.Compose([T.RandomResizedCrop(crop, antialias=True), T.RandomHorizontalFlip(), *jitter, *tail])
