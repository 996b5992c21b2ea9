"""A tiny long-tailed "ImageNet-LT" written in seconds: JPEGs in the ImageNet-LT layout and split files.

    python -m imagenet_inat.synthetic ./data/synthetic_lt --classes 20 --max 40 --min 2 --size 64

Class c has n_c = floor(max * (min / max)^(c / (C - 1))) training images (the exponential profile of Cao et al.
2019 with imbalance factor min / max; class 0 is the head) and ``--val`` / ``--test`` images each
(balanced, as ImageNet-LT's val/test). An image of class c is a field of stripes in the class's own hue,
orientation and frequency, with a random phase and pixel noise, so a small network learns it in a few epochs
even after RandomResizedCrop and colour jitter. Layout under OUT_DIR: ``{split}/c{c:04d}/c{c:04d}_{i:05d}.jpg``
and ``ImageNet_LT_{train,val,test}.txt`` (``relative/path label`` lines), the names the ImageNet_LT dataset
looks for inside ``--data_root``.
"""
from __future__ import annotations

import argparse
import colorsys
import math
import os

import numpy as np
from PIL import Image

from imagenet_inat.datasets import LT_DATASETS


def class_counts(classes: int, max_per_class: int, min_per_class: int) -> list[int]:
    """n_c = floor(max * (min / max)^(c / (C - 1))), c = 0..C-1."""
    if classes < 2 or not 1 <= min_per_class <= max_per_class:
        raise ValueError(f"need --classes >= 2 and 1 <= --min <= --max, got {classes}, {min_per_class}, "
                         f"{max_per_class}")
    factor = min_per_class / max_per_class
    return [int(max_per_class * factor ** (c / (classes - 1))) for c in range(classes)]


def class_image(c: int, classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (size, size, 3): stripes of class ``c``'s hue, angle and frequency; random phase and noise."""
    colour = np.array(colorsys.hsv_to_rgb(c / classes, 0.75, 0.85)) * 255.0
    angle = math.pi * ((7 * c) % classes) / classes
    frequency = 2 + c % 4
    y, x = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 2 * math.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * frequency * (x * math.cos(angle) + y * math.sin(angle)) + phase)
    img = colour * (0.45 + 0.55 * stripes[..., None]) + rng.normal(0, 12, size=(size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_split(out_dir: str, split: str, counts: list[int], size: int, rng: np.random.Generator,
                quality: int) -> str:
    """Write the images of ``split`` and its split file; returns the split file's path."""
    lines = []
    for c, n in enumerate(counts):
        folder = os.path.join(split, f"c{c:04d}")
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
        for i in range(n):
            rel = os.path.join(folder, f"c{c:04d}_{i:05d}.jpg")
            Image.fromarray(class_image(c, len(counts), size, rng)).save(os.path.join(out_dir, rel), quality=quality)
            lines.append(f"{rel} {c}\n")
    path = os.path.join(out_dir, LT_DATASETS["ImageNet_LT"].list_files[split])
    with open(path, "w") as f:
        f.writelines(lines)
    return path


def generate(out_dir: str, classes: int = 20, max_per_class: int = 40, min_per_class: int = 2, val: int = 5,
             test: int = 5, size: int = 64, seed: int = 0, quality: int = 90) -> dict[str, list[int]]:
    """Write the data set; returns the per-class image counts of each split."""
    if min(val, test) < 1 or size < 8:
        raise ValueError(f"need --val, --test >= 1 and --size >= 8, got {val}, {test}, {size}")
    rng = np.random.default_rng(seed)
    counts = {"train": class_counts(classes, max_per_class, min_per_class), "val": [val] * classes,
              "test": [test] * classes}
    for split, n in counts.items():
        write_split(out_dir, split, n, size, rng, quality)
    return counts


def main(argv=None) -> dict[str, list[int]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="folder to write (the --data_root of the synthetic configs)")
    p.add_argument("--classes", type=int, default=20, help="number of classes")
    p.add_argument("--max", dest="max_per_class", type=int, default=40, help="training images of class 0")
    p.add_argument("--min", dest="min_per_class", type=int, default=2, help="training images of the last class")
    p.add_argument("--val", type=int, default=5, help="validation images per class")
    p.add_argument("--test", type=int, default=5, help="test images per class")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    args = p.parse_args(argv)
    try:
        counts = generate(**{k: v for k, v in vars(args).items()})
    except ValueError as e:
        p.error(str(e))
    print(f"wrote {args.out_dir}: train {sum(counts['train'])} images {counts['train']}, "
          f"val {sum(counts['val'])}, test {sum(counts['test'])}")
    return counts


if __name__ == "__main__":
    main()
