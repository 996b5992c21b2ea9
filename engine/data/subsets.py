"""Subset provenance: which images of a split a run trained, validated and tested on.

Results in this field stop being comparable when runs train on different long-tailed subsets (two CIFAR-LT
versions are in use, and a generator drawing with replacement once put duplicate images into every training set
of a published method). Every run therefore writes the indices of its subsets into its run folder
(``subsets.json``) with a SHA-256 of each, and ``--subset_file`` trains on an exported list instead of drawing
one, so a split made by another codebase can be used and checked.

The hash of an index list is the SHA-256 of its indices as little-endian int64 bytes, in the list's order.
``subsets.json``::

    {"format": "ltr-subsets/1", "dataset": "cifar10",
     "parts": {"train": {"size": 12406, "sha256": "...", "cls_num_list": [...], "indices": [...]},
               "test": {...}, "val": {...}, "unlabeled": {...}}}

``train`` indexes the training split (for a semi-supervised run, its labeled part), ``unlabeled`` the pool, and
``test`` / ``val`` the evaluation split.

``--subset_file`` reads that file's ``train`` part, a JSON list of indices, or a text file of whitespace- or
comma-separated indices.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

FORMAT = "ltr-subsets/1"
FILE = "subsets.json"


def indices_sha256(indices) -> str:
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def part_record(indices, targets, num_classes: int) -> dict:
    """The record of one part: its indices into the split it comes from, their hash, and the class counts of
    ``targets`` (the part's labels, in the same order)."""
    indices = np.asarray(indices, dtype=np.int64)
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes)
    return {"size": int(len(indices)), "sha256": indices_sha256(indices), "cls_num_list": counts.tolist(),
            "indices": indices.tolist()}


def check_unique(indices: np.ndarray, what: str) -> None:
    """Refuse a subset holding an image twice (a draw with replacement)."""
    values, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1]
        raise ValueError(f"{what} holds {int((counts - 1).sum())} duplicate images (e.g. index {int(dup[0])} "
                         f"{int(counts[counts > 1][0])} times): a subset must hold each image once")


def read_subset_file(path: str, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The training indices of ``path`` (--subset_file), checked against the split's ``labels``: integers, in
    range, no duplicates, every class present, and the class counts the file records (when it records them)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--subset_file: no file {path!r}")
    recorded = None
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    try:
        content = json.loads(text)
    except json.JSONDecodeError:
        content = text.replace(",", " ").split()
    if isinstance(content, dict):
        part = content.get("parts", {}).get("train")
        if not isinstance(part, dict) or "indices" not in part:
            raise ValueError(f"--subset_file {path!r}: a JSON object needs parts.train.indices (the layout of a "
                             f"run's {FILE})")
        content, recorded = part["indices"], part.get("cls_num_list")
    try:
        values = [int(v) if not isinstance(v, float) or v.is_integer() else None for v in content]
    except (TypeError, ValueError):
        values = [None]
    if not isinstance(content, list) or None in values:
        raise ValueError(f"--subset_file {path!r} must list integer image indices (JSON list, text, or a run's "
                         f"{FILE})")
    indices = np.asarray(values, dtype=np.int64)
    if len(indices) == 0:
        raise ValueError(f"--subset_file {path!r} lists no image")
    bad = indices[(indices < 0) | (indices >= len(labels))]
    if len(bad):
        raise ValueError(f"--subset_file {path!r}: index {int(bad[0])} is out of range: the training split has "
                         f"{len(labels)} images (0..{len(labels) - 1})")
    check_unique(indices, f"--subset_file {path!r}")
    counts = np.bincount(labels[indices], minlength=num_classes)
    if recorded is not None and list(counts) != list(recorded):
        raise ValueError(f"--subset_file {path!r}: its images have class counts {counts.tolist()} here but the "
                         f"file records {list(recorded)}: it was made from another version of the data")
    if (counts == 0).any():
        raise ValueError(f"--subset_file {path!r}: class {int(np.argmin(counts))} has no image")
    return indices


def holdout(labels: np.ndarray, per_class: int, seed: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held): ``per_class`` images of each class held out of ``labels`` (the validation part of a test split),
    drawn with a generator of its own seeded by ``seed`` (the same for every run and script of that seed and data
    set); both in index order."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A11D]))
    held = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= per_class:
            raise ValueError(f"--val_split {per_class}: class {c} has only {len(idx)} images in the test split; "
                             "hold out fewer per class")
        held.append(rng.choice(idx, per_class, replace=False))
    held = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held), held
