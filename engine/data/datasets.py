"""The data-set registry: one ``DatasetSpec`` per data set in ``DATASETS`` (registry.Registry), and the loaders.

Two kinds of data set behind one spec type:

* in-memory sets (``read`` given; CIFAR-10/100, SVHN): the reader returns uint8 arrays and building the training
  split applies the long-tail profile with the upstream seeded draw (engine/data/longtail.py); either loader
  (``--loader device`` keeps the arrays on the device). Semi-supervised sets add unlabeled pools (``pools``) and
  pseudo-labels (engine/data/pseudolabel_files.py);
* split-file sets (``list_name`` given; ImageNet-LT, iNaturalist 2018): images listed in the authors' split files
  (engine/data/filelists.py), decoded by DataLoader workers (``--loader torch`` only).

Building takes explicit keywords (engine/config.py's ``dataset_kwargs(args)`` makes them from parsed flags)::

    spec = DATASETS["cifar10"]
    train_set = spec.build("train", data_path="./data", imb_type="exp", imb_factor=0.01, rand_number=0)
    test_set = spec.build(spec.eval_split, data_path="./data")
    semi_set = spec.build_semi(data_path="./data", imb_factor=0.01, imb_factor_unlabel=0.01)

A new data set is one registration. An in-memory one gives a reader ``read(data_path, split, download) ->
(images, labels, class names)``; a split-file one its files, e.g. Places-LT (Liu et al. 2019)::

    register(DatasetSpec("places", 365, 224, IMAGENET_MEAN, IMAGENET_STD, eval_split="val", default_arch="resnet152",
                         list_name="Places_LT", color_jitter=0.4, list_files={
                             "train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"}))

The scripts' --dataset choices are live views of the registry: ``DATASETS`` itself (pretrain_rot.py,
pretrain_moco.py), ``IN_MEMORY`` (train.py), ``SEMI_SUPERVISED`` (train_semi.py, gen_pseudolabels.py) and
``SPLIT_FILE_SETS`` keyed by ``list_name`` (imagenet_inat.main). Normalisation statistics are the reference code's.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torchvision.transforms as T

from engine.train import distributed
from engine.data.datafiles import (CIFAR10, CIFAR100, SVHN_CLASS_ORDER, SVHN_CLASSES, SVHN_IMG_MAX, TINY_IMAGES_FILE,
                              read_cifar, read_svhn, read_tiny_images)
from engine.data.filelists import ListDataset, list_transform
from engine.data.imagesets import ImageArrayDataset, SemiSupervisedImageDataset
from engine.data.loaders import DeviceLoader, TorchLoader
from engine.data.longtail import (check_imb_factor, get_img_num_per_cls, long_tail_indices, select_unlabeled,
                             unlabeled_counts)
from engine.data.pseudolabel_files import BELOW_THRESHOLD, read_pseudo_labels, resolve_pseudo_label_file
from engine.data.subsets import check_unique, holdout, read_subset_file
from registry import Registry

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
SVHN_MEAN = SVHN_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INAT_MEAN, INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)

Arrays = tuple[np.ndarray, np.ndarray, list]  # uint8 images (N, H, W, 3), int64 labels (N,), class names


@dataclass(frozen=True)
class UnlabeledPool:
    """An unlabeled pool of a semi-supervised data set, in pool order (the index a pseudo-label file refers to).

    ``split``: a split of the data set itself, read by its reader: SVHN's ``extra``, or CIFAR-10's ``train``,
    whose images the labeled subset drew are never candidates (the standard stand-in for the withdrawn Tiny
    Images). Else ``read(path) -> (images, reference labels or None)`` reads a file of its own, by default
    ``{data_path}/{file}`` (upstream's Tiny Images selection). The reference labels drive the per-class draw of
    D_U, never training; ``true_labels``: they are the true labels (gen_pseudolabels.py then reports the
    pseudo-labels' accuracy), which Tiny Images' extrapolated targets are not.
    """
    split: str | None = None
    read: Callable[[str], tuple[np.ndarray, np.ndarray | None]] | None = None
    file: str | None = None
    true_labels: bool = True


@dataclass(frozen=True)
class DatasetSpec:
    """One data set: what it is, what it builds and its defaults.

    ``name``: the --dataset name. ``image_size``: the training crop (RandomCrop(size, padding=4) of in-memory
    images, RandomResizedCrop(size) of image files, MoCo's views). ``mean``/``std``: the reference code's
    normalisation. ``splits``: what ``build`` makes (default: train and test, or the splits of ``list_files``);
    ``eval_split``: the split the scripts evaluate on. ``default_arch``: the reference scripts' backbone.

    In-memory sets: ``read(data_path, split, download) -> (uint8 images (N, H, W, 3), int64 labels, class
    names)``; the training split keeps the long-tail profile of n_max = ``img_max`` (default: its images per
    class) in ``class_order`` (rank 0 = head; default: label order). ``pools``: its unlabeled pools, the first
    the default; ``pseudo_label_stem``: the default pseudo-label file name (engine/data/pseudolabel_files.py).

    Split-file sets: ``list_name``, imagenet_inat.main's --dataset and the folder of the reference split files
    ``imagenet_inat/data/{list_name}/``; ``list_files``: split -> the authors' file name; ``color_jitter`` of
    the training pipeline (engine/data/filelists.py). They also build any split from a ``list_file`` given.
    """
    name: str
    num_classes: int
    image_size: int
    mean: tuple
    std: tuple
    splits: tuple[str, ...] | None = None
    eval_split: str = "test"
    default_arch: str = "resnet32"
    read: Callable[[str, str, bool], Arrays] | None = None
    img_max: int | None = None
    class_order: tuple[int, ...] | None = None
    pools: Mapping[str, UnlabeledPool] = field(default_factory=dict)
    pseudo_label_stem: str | None = None
    list_name: str | None = None
    list_files: Mapping[str, str] = field(default_factory=dict)
    color_jitter: float = 0.0

    def __post_init__(self):
        if (self.read is None) == (self.list_name is None):
            raise ValueError(f"dataset {self.name!r}: give read (in-memory arrays) or list_name (split files)")
        if self.splits is None:  # frozen: set the derived default once
            object.__setattr__(self, "splits", tuple(self.list_files) if self.list_name else ("train", "test"))

    @property
    def in_memory(self) -> bool:
        """The builders return ``.data`` arrays (either loader); False: image files read by DataLoader workers."""
        return self.read is not None

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"split must be one of {list(self.splits)} for --dataset {self.name}, got {split!r}")

    # -- in-memory sets ----------------------------------------------------------------------------------------
    def _read(self, data_path: str, split: str, download: bool) -> Arrays:
        """``read``; with ``download``, fetch the files when they are missing. Without network the error is the
        reader's own "where it looked and how to get the data" message."""
        try:
            return self.read(data_path, split, False)
        except FileNotFoundError as missing:
            if not download:
                raise
            try:
                return self.read(data_path, split, True)
            except FileNotFoundError:  # the download worked, or was not needed, and something else is missing
                raise
            except OSError as failure:
                raise FileNotFoundError(f"{missing} (the download failed too: {failure})") from failure

    def _long_tail(self, labels: np.ndarray, imb_type: str, imb_factor: float, rand_number: int,
                   img_max: float | None) -> np.ndarray:
        """Indices of the long-tailed training subset (engine/data/longtail.py: profile, then the seeded draw)."""
        if img_max is None:
            img_max = len(labels) / self.num_classes if self.img_max is None else self.img_max
        counts = get_img_num_per_cls(img_max, self.num_classes, imb_type, imb_factor)
        return long_tail_indices(labels, self.class_order or range(self.num_classes), counts, rand_number)

    def indexed_arrays(self, split: str, *, data_path: str, imb_type: str = "exp", imb_factor: float = 0.01,
                       rand_number: int = 0, download: bool = False, img_max: float | None = None,
                       subset_file: str | None = None) -> tuple[np.ndarray, np.ndarray, list, np.ndarray]:
        """``arrays`` with the indices into ``split`` of the images kept (engine/data/subsets.py: provenance).

        Training split: the long-tailed draw, or the images ``subset_file`` lists. Other splits: whole."""
        check_imb_factor(imb_factor)
        self._check_split(split)
        data, labels, classes = self._read(data_path, split, download)
        if split == "train":
            keep = (read_subset_file(subset_file, labels, self.num_classes) if subset_file else
                    self._long_tail(labels, imb_type, imb_factor, rand_number, img_max))
            check_unique(keep, f"the training subset of --dataset {self.name}")
        else:
            keep = np.arange(len(labels))
        return data[keep], labels[keep], classes, keep

    def arrays(self, split: str, **draw) -> Arrays:
        """(images, labels, class names) of ``split``: the training split long-tailed (Cao et al. 2019,
        docs/protocols.md#long-tailed-subsets; ``img_max`` replaces n_max), any other split whole (keywords of
        ``indexed_arrays``)."""
        return self.indexed_arrays(split, **draw)[:3]

    def build(self, split: str, *, data_path: str, imb_type: str = "exp", imb_factor: float = 0.01,
              rand_number: int = 0, download: bool = False, img_max: float | None = None, transform=None,
              list_file: str | None = None, augment: bool | None = None, crop_size: int = 224,
              resize_size: int = 256, decode: str = "tensor", num_classes: int | None = None,
              subset_file: str | None = None):
        """The ``split`` data set. In-memory: an ``ImageArrayDataset`` of ``indexed_arrays(...)`` with the PIL
        ``transform`` (``.indices``: its images' indices into the split). Split files: a ``ListDataset`` of
        ``list_file`` (default: the reference's split file) under ``data_path``, with ``transform`` or the
        reference pipeline (``augment``: its training version, default for the train split;
        ``crop_size``/``resize_size``), images decoded as ``decode``; its ``num_classes`` defaults to the largest
        label + 1."""
        if self.in_memory:
            *arrays, indices = self.indexed_arrays(split, data_path=data_path, imb_type=imb_type,
                                                   imb_factor=imb_factor, rand_number=rand_number, download=download,
                                                   img_max=img_max, subset_file=subset_file)
            return ImageArrayDataset(*arrays, transform=transform, indices=indices)
        if subset_file:
            raise ValueError(f"--subset_file is for the in-memory data sets; --dataset {self.name} has split files: "
                             "pass the lists")
        if transform is None:
            transform = list_transform(self, split == "train" if augment is None else augment, crop_size, resize_size)
        return ListDataset(data_path, list_file or self.reference_list_file(split), transform, num_classes,
                           decode=decode)

    def build_eval(self, *, val_split: int = 0, transform=None, **kwargs):
        """(test set, validation set or None) of ``eval_split`` (``build``'s keywords): with ``val_split`` K > 0,
        K images per class held out of it (seeded by ``rand_number``) form the validation part and the rest the
        test part; the split is read once."""
        if not val_split:
            return self.build(self.eval_split, transform=transform, **kwargs), None
        if not self.in_memory:
            raise ValueError(f"--val_split is for the in-memory data sets; --dataset {self.name} has split files: "
                             "its val list serves for selection")
        data, labels, classes, _ = self.indexed_arrays(self.eval_split, **kwargs)
        parts = holdout(labels, val_split, kwargs.get("rand_number", 0), self.num_classes)
        return tuple(ImageArrayDataset(data[i], labels[i], classes, transform=transform, indices=i) for i in parts)

    # -- semi-supervised sets --------------------------------------------------------------------------------
    def unlabeled_source(self, source: str | None) -> str | None:
        """--unlabeled_source resolved: ``source``, or the default pool when None; None for a data set with a
        single pool (nothing to choose)."""
        if not self.pools:
            raise ValueError(f"--dataset {self.name} has no unlabeled pool; the semi-supervised data sets are "
                             f"{', '.join(SEMI_SUPERVISED)}")
        if source is None:
            return next(iter(self.pools)) if len(self.pools) > 1 else None
        if len(self.pools) == 1 or source not in self.pools:
            hint = (f"choose one of {', '.join(self.pools)}" if len(self.pools) > 1 else
                    "it has a single pool; leave it out")
            raise ValueError(f"--unlabeled_source {source} is not available for --dataset {self.name}: {hint}")
        return source

    def pool_name(self, source: str | None) -> str:
        """The name of the pool --unlabeled_source ``source`` selects (``pools``' key)."""
        return self.unlabeled_source(source) or next(iter(self.pools))

    def load_pool(self, data_path: str, source: str | None = None, *, file: str | None = None,
                  download: bool = False, labeled_indices: np.ndarray | None = None):
        """(images uint8 (N, H, W, 3), reference labels int64 (N,) or None) of the pool ``source``, in pool order.

        ``file`` replaces a file pool's default name. A pool that is the training split itself gives the images
        of ``labeled_indices`` reference label -1: only the images the labeled subset leaves out can be drawn.
        """
        pool = self.pools[self.pool_name(source)]
        if pool.read is not None:
            return pool.read(os.path.join(data_path, file or pool.file))
        images, labels, _ = self._read(data_path, pool.split, download)
        if labeled_indices is not None and pool.split == "train":
            labels[labeled_indices] = -1
        return images, labels

    def pseudo_label_file(self, data_path: str, given: str | None = None, source: str | None = None) -> str:
        """``given``, else ``{data_path}/{pseudo_label_stem}.npz`` if present, else the upstream ``.pickle``
        (engine.data.pseudolabel_files.resolve_pseudo_label_file)."""
        resolved = self.unlabeled_source(source)
        return resolve_pseudo_label_file(self.name, self.pseudo_label_stem, data_path, given,
                                         None if resolved == self.unlabeled_source(None) else resolved)

    def semi_parts(self, split: str = "train", *, data_path: str, imb_type: str = "exp", imb_factor: float = 0.01,
                   rand_number: int = 0, download: bool = False, imb_factor_unlabel: float = 0.01,
                   unlabeled_source: str | None = None, pseudo_label_file: str | None = None,
                   unlabel_size_factor: float = 5, labeled_max: float | None = None,
                   unlabeled_max: float | None = None) -> dict:
        """The keywords of ``SemiSupervisedImageDataset``: D_L followed by D_U (Yang & Xu 2020; docs/protocols.md#unlabeled-set).

        D_L: the long-tailed training subset (``arrays``; ``labeled_max`` replaces n_max). D_U: on the same RNG
        stream, per class in ``class_order``, a shuffle of the pool images of that reference label, keeping the
        first u_c (engine.data.longtail.unlabeled_counts: T = unlabel_size_factor x |D_L| split with ρ_U =
        1/imb_factor_unlabel, or u_i = unlabeled_max * imb_factor_unlabel**(i/(C-1))), trained on with the
        pseudo-labels of ``pseudo_label_file`` (``pseudo_label_file()`` resolves the default); images below a
        confidence threshold (-1) are dropped after the draw, which stays upstream's. Other splits: whole, all
        labeled.
        """
        check_imb_factor(imb_factor)
        check_imb_factor(imb_factor_unlabel, "--imb_factor_unlabel")
        source = self.unlabeled_source(unlabeled_source)
        for flag, value in (("--labeled_max", labeled_max), ("--unlabeled_max", unlabeled_max)):
            if value is not None and not value > 0:
                raise ValueError(f"{flag} is a number of images per class and must be > 0, got {value}")
        self._check_split(split)
        data, labels, classes = self._read(data_path, split, download)
        if split != "train":
            return dict(data=data, targets=labels, classes=classes, labeled_indices=np.arange(len(labels)),
                        unlabeled_indices=np.zeros(0, np.int64))
        pseudo_label_file = self.pseudo_label_file(data_path, pseudo_label_file, source)
        labeled = self._long_tail(labels, imb_type, imb_factor, rand_number, labeled_max)
        pool_images, pool_labels = self.load_pool(data_path, source, download=download, labeled_indices=labeled)
        if pool_labels is None:
            raise ValueError(f"the {source} pool of --dataset {self.name} has no reference labels "
                             "('extrapolated_targets') to draw D_U per class")
        counts = unlabeled_counts(len(labeled), self.num_classes, imb_factor_unlabel, unlabel_size_factor,
                                  unlabeled_max)
        unlabeled = select_unlabeled(pool_labels, zip(self.class_order or range(self.num_classes), counts))
        pseudo = read_pseudo_labels(pseudo_label_file, unlabeled, len(pool_labels), self.num_classes)
        confident = pseudo != BELOW_THRESHOLD
        unlabeled, pseudo = unlabeled[confident], pseudo[confident]
        return dict(data=np.concatenate([data[labeled], pool_images[unlabeled]]),
                    targets=np.concatenate([labels[labeled], pseudo]), classes=classes, labeled_indices=labeled,
                    unlabeled_indices=unlabeled)

    def build_semi(self, *, transform=None, **draw) -> SemiSupervisedImageDataset:
        """``SemiSupervisedImageDataset`` of ``semi_parts(**draw)`` with the PIL ``transform``."""
        return SemiSupervisedImageDataset(**self.semi_parts(**draw), transform=transform)

    # -- split-file sets -------------------------------------------------------------------------------------
    def reference_list_file(self, split: str) -> str:
        """Where the reference code keeps the split files: imagenet_inat/data/{list_name}/{file}, relative to the
        repository."""
        if split not in self.list_files:
            raise ValueError(f"--dataset {self.name} has no default {split} split file; pass the split file")
        return os.path.join("imagenet_inat", "data", self.list_name, self.list_files[split])


DATASETS = Registry("dataset", flag="--dataset")


def register(spec: DatasetSpec) -> DatasetSpec:
    """``DATASETS.register(spec.name, spec)``."""
    DATASETS.register(spec.name, spec)
    return spec


class DatasetView(Mapping):
    """A live, read-only selection of ``DATASETS`` keyed by ``key(spec)``: entries registered later appear too."""

    def __init__(self, keep: Callable[[DatasetSpec], bool], key: Callable[[DatasetSpec], str] = lambda s: s.name):
        self._keep, self._key = keep, key

    def _selection(self) -> dict[str, DatasetSpec]:
        return {self._key(spec): spec for _, spec in DATASETS.items() if self._keep(spec)}

    def __getitem__(self, name: str) -> DatasetSpec:
        return self._selection()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._selection())

    def __len__(self) -> int:
        return len(self._selection())


IN_MEMORY = DatasetView(lambda spec: spec.in_memory)
SEMI_SUPERVISED = DatasetView(lambda spec: bool(spec.pools))
SPLIT_FILE_SETS = DatasetView(lambda spec: not spec.in_memory, key=lambda spec: spec.list_name)


def unlabeled_source_choices() -> list[str]:
    """The pools --unlabeled_source can name: those of the data sets with more than one."""
    return [name for spec in SEMI_SUPERVISED.values() if len(spec.pools) > 1 for name in spec.pools]


def _cifar(release) -> Callable[[str, str, bool], Arrays]:
    return lambda data_path, split, download: read_cifar(data_path, release, split == "train", download)


def _svhn(data_path: str, split: str, download: bool) -> Arrays:
    return (*read_svhn(data_path, split, download), SVHN_CLASSES)


register(DatasetSpec("cifar10", 10, 32, CIFAR_MEAN, CIFAR_STD, read=_cifar(CIFAR10),
                     pools={"tinyimages": UnlabeledPool(read=read_tiny_images, file=TINY_IMAGES_FILE,
                                                        true_labels=False),
                            "cifar10_train": UnlabeledPool(split="train")},
                     pseudo_label_stem="pseudo_labeled_cifar"))
register(DatasetSpec("cifar100", 100, 32, CIFAR_MEAN, CIFAR_STD, read=_cifar(CIFAR100)))
# SVHN-LT: n_max = 1000 and the profile in the original label order, digit 1 the head and digit 0 the tail.
register(DatasetSpec("svhn", 10, 32, SVHN_MEAN, SVHN_STD, splits=("train", "test", "extra"), read=_svhn,
                     img_max=SVHN_IMG_MAX, class_order=SVHN_CLASS_ORDER, pools={"extra": UnlabeledPool(split="extra")},
                     pseudo_label_stem="pseudo_labeled_svhn"))
register(DatasetSpec("imagenet", 1000, 224, IMAGENET_MEAN, IMAGENET_STD, eval_split="val", default_arch="resnet50",
                     list_name="ImageNet_LT", color_jitter=0.4,
                     list_files={"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt",
                                 "test": "ImageNet_LT_test.txt"}))
# iNaturalist 2018 has no test split: its validation split is the test set.
register(DatasetSpec("inat", 8142, 224, INAT_MEAN, INAT_STD, eval_split="val", default_arch="resnet50",
                     list_name="iNaturalist18",
                     list_files={"train": "iNaturalist18_train.txt", "val": "iNaturalist18_val.txt"}))


# -- loaders -------------------------------------------------------------------------------------------------
def torch_transforms(spec: DatasetSpec, train: bool):
    """The reference PIL pipeline: RandomCrop(image_size, padding=4) + RandomHorizontalFlip for training;
    Normalize."""
    tail = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose([T.RandomCrop(spec.image_size, padding=4), T.RandomHorizontalFlip(), *tail] if train else tail)


def check_loader(spec: DatasetSpec, loader: str) -> None:
    """Image-file data sets are read by DataLoader workers: refuse ``--loader device`` for them."""
    if loader == "device" and not spec.in_memory:
        raise ValueError(f"--loader device: --dataset {spec.name} is read from image files by DataLoader "
                         "workers; use --loader torch")


def make_loader(dataset, spec: DatasetSpec, device: torch.device, train: bool, *, batch_size: int = 128,
                eval_batch_size: int = 1000, loader: str = "device", workers: int = 4, channels_last: bool = False,
                sample_weights: np.ndarray | None = None, seed: int = 0, views: int = 1):
    """A ``DeviceLoader`` (``loader='device'``) or ``TorchLoader`` (``'torch'``) over ``dataset``.

    Training batches are ``batch_size`` over all processes (each takes its share under torchrun); evaluation
    batches ``eval_batch_size``. ``sample_weights``: draw with replacement (Resample); ``seed``: the epoch
    orders' seed; ``views``: augmented views of each training image (device loader only)."""
    check_loader(spec, loader)
    if views > 1 and loader != "device":
        raise ValueError(f"--loader {loader}: this method needs {views} views of each image, which only --loader "
                         "device draws; use --loader device")
    batch = distributed.per_process_batch(batch_size) if train else eval_batch_size
    if loader == "device":
        return DeviceLoader(dataset.data, dataset.targets, batch_size=batch, device=device, mean=spec.mean,
                            std=spec.std, train=train, sample_weights=sample_weights, seed=seed,
                            channels_last=channels_last, views=views)
    if spec.in_memory:
        dataset.transform = torch_transforms(spec, train)
    return TorchLoader(dataset, batch_size=batch, device=device, train=train, workers=workers,
                       sample_weights=sample_weights, seed=seed, channels_last=channels_last)
