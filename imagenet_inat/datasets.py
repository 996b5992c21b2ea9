"""Datasets read from split files: one ``relative/path.jpg label`` per line, paths under a data root.

The split files are the ones of Liu et al. 2019 (OLTR; ImageNet-LT) and the iNaturalist 2018 lists used by
classifier-balancing and imbalanced-semi-self; they are the authors' and are not shipped here.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


def read_split_file(path: str) -> tuple[list[str], np.ndarray]:
    """Parse a split file into (relative paths, int64 labels); errors name the file and the line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file {path!r} not found: get the ImageNet-LT / iNaturalist 2018 lists "
                                "(see README, 'ImageNet-LT and iNaturalist') or pass the right path")
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
    return paths, np.asarray(labels, dtype=np.int64)


class ListDataset(Dataset):
    """Images listed in a split file, loaded as RGB PIL images and passed through ``transform``."""

    def __init__(self, root: str, split_file: str, transform=None, num_classes: int | None = None):
        self.root, self.transform = root, transform
        self.paths, labels = read_split_file(split_file)
        self.targets = labels.tolist()
        self.num_classes = num_classes or int(labels.max()) + 1

    def __len__(self) -> int:
        return len(self.paths)

    def get_cls_num_list(self) -> list[int]:
        return np.bincount(self.targets, minlength=self.num_classes).tolist()

    def __getitem__(self, i: int):
        path = os.path.join(self.root, self.paths[i])
        try:
            with open(path, "rb") as f:
                img = Image.open(f).convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"image {path!r} (listed in the split file) is missing under the data root "
                                    f"{self.root!r}") from None
        return (self.transform(img) if self.transform else img), self.targets[i]
