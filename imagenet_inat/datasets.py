"""ImageNet-LT / iNaturalist 2018 as imagenet_inat.main names them: a view of the data-set registry.

The split-file data sets are ``engine.data.datasets.DatasetSpec`` entries of ``engine.data.datasets.DATASETS`` (``imagenet``,
``inat``); ``LT_DATASETS`` keys them by their ``list_name`` (``ImageNet_LT``, ``iNaturalist18``, the reference
configs' ``training_opt.dataset``), live, so a registered Places-LT entry appears here too. The split files, their
decoding and the reference pipeline are engine/data/filelists.py's.
"""
from __future__ import annotations

from engine.data.datasets import SPLIT_FILE_SETS
from engine.data.filelists import ListDataset, list_transform, read_split_file

__all__ = ["LT_DATASETS", "ListDataset", "list_transform", "read_split_file", "reference_split_file"]

LT_DATASETS = SPLIT_FILE_SETS


def reference_split_file(name: str, split: str) -> str:
    """Where the reference code keeps the split files of ``LT_DATASETS[name]``: imagenet_inat/data/{name}/{file}."""
    return LT_DATASETS[name].reference_list_file(split)
