"""Readers of the data files behind the in-memory data sets, with presence and checksum checks (docs/protocols.md#long-tailed-subsets, docs/protocols.md#unlabeled-set).

* CIFAR-10 / CIFAR-100: the official python releases (pickled batches, Python 2 or 3), read with the restricted
  unpickler ``engine.data.safe_pickle``;
* SVHN: ``{train,test,extra}_32x32.mat`` (label 10 is digit 0);
* the 80M Tiny Images selection ``ti_80M_selected.pickle`` of the upstream semi-supervised CIFAR-10 protocol
  (``data`` uint8 N x 32 x 32 x 3 and ``extrapolated_targets``, the class the data-sourcing model of Carmon et al.
  2019 assigned to each image).

A file whose md5 differs from the official release only warns (``ChecksumWarning``); a missing file is one
``FileNotFoundError`` listing every missing path and how to get the data.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.io
from torchvision.datasets.utils import download_and_extract_archive, download_url

from engine.data import safe_pickle


class ChecksumWarning(UserWarning):
    """A data file differs from the official release (results are not comparable to papers)."""


_CHECKED_FILES = set()  # (path, size, mtime_ns) already compared with the official md5


def require_files(paths, dataset_name, how_to_get):
    """Raise one FileNotFoundError listing every missing path and how to get the data."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{dataset_name} not found: missing {', '.join(missing)}. "
                                f"{how_to_get}")


def _md5(path):
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def warn_if_not_official(files, dataset_name):
    """``warnings.warn`` (ChecksumWarning) once per file version whose md5 differs from the
    official one; never refuses. ``files``: iterable of (path, official md5)."""
    differ = []
    for path, md5 in files:
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
        if key not in _CHECKED_FILES:
            _CHECKED_FILES.add(key)
            if _md5(path) != md5:
                differ.append(path)
    if differ:
        warnings.warn(f"{dataset_name}: {', '.join(differ)} differ from the official release "
                      "(md5); accuracies are not comparable with published numbers (the JPEG "
                      "copy in shared/data scores a few points lower)", ChecksumWarning,
                      stacklevel=3)


def _str_keys(mapping):
    """Dict keys as str: Python 2 pickles read with encoding='bytes' have bytes keys."""
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in mapping.items()}


def _text(value):
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def load_pickle_dict(path, keys):
    """``engine.data.safe_pickle.load(path, encoding='latin1')`` as a str-keyed dict holding ``keys``."""
    content = safe_pickle.load(path, encoding="latin1")
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    content = _str_keys(content)
    absent = [k for k in keys if k not in content]
    if absent:
        raise ValueError(f"{path}: missing key(s) {absent}; found {sorted(content)}")
    return content


@dataclass(frozen=True)
class CifarRelease:
    """One official python release (file names and md5 sums as published with it)."""
    name: str
    folder: str
    url: str
    archive_md5: str
    train_files: tuple
    test_files: tuple
    meta_file: tuple
    label_key: str
    names_key: str
    offline_hint: str


CIFAR10 = CifarRelease(
    name="CIFAR-10", folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    train_files=(("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                 ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                 ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                 ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                 ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
    test_files=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
    meta_file=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
    label_key="labels", names_key="label_names",
    offline_hint=" Offline, expand the shared JPEG copy there: "
                 "python shared/data/expand_cifar10.py {root}")
CIFAR100 = CifarRelease(
    name="CIFAR-100", folder="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
    test_files=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
    meta_file=("meta", "7973b15100ade9c7d40fb424638fde48"),
    label_key="fine_labels", names_key="fine_label_names",
    offline_hint="")


def read_cifar(root, release, train, download=False):
    """One split of an official-layout CIFAR release under ``root``, read with engine.data.safe_pickle.

    Returns (images uint8 (N, 32, 32, 3) HWC, a view of the files' CHW rows; labels int64 (N,);
    class names), batches in file order. Keys may be str or bytes. Files whose md5 differs from
    the official release only warn (ChecksumWarning). ``download=True`` fetches and extracts the
    official archive first when files are missing.
    """
    folder = os.path.join(root, release.folder)
    files = [(os.path.join(folder, name), md5) for name, md5 in
             (release.train_files if train else release.test_files) + (release.meta_file,)]
    paths = [path for path, _ in files]
    if download and not all(os.path.isfile(p) for p in paths):
        download_and_extract_archive(release.url, root, filename=os.path.basename(release.url),
                                     md5=release.archive_md5)
    require_files(paths, release.name,
                  f"Get it with download=True (fetches {release.url})."
                  + release.offline_hint.format(root=root))
    warn_if_not_official(files, release.name)
    names = load_pickle_dict(paths[-1], [release.names_key])[release.names_key]
    if not (isinstance(names, (list, tuple)) and all(isinstance(n, (str, bytes)) for n in names)):
        raise ValueError(f"{paths[-1]}: {release.names_key!r} is not a list of class names")
    batches = [_cifar_batch(p, load_pickle_dict(p, ["data", release.label_key]), release.label_key, len(names))
               for p in paths[:-1]]
    data = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return data.transpose(0, 2, 3, 1), labels, [_text(name) for name in names]


def _array(path, content, key):
    """``content[key]`` as a NumPy array of integers (an empty list, e.g. of an empty batch, reads as floats);
    anything else (ragged lists, strings, objects) is a ValueError naming the file and the key."""
    try:
        array = np.asarray(content[key])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {key!r} is not an array of numbers ({e})") from None
    if array.size and not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)):
        raise ValueError(f"{path}: {key!r} holds {array.dtype} values, expected integers")
    return array


def _check_images(path, key, images, shape):
    """Refuse an image array that is not (N, *shape) of values in 0..255."""
    if images.ndim != 1 + len(shape) or images.shape[1:] != shape:
        raise ValueError(f"{path}: {key!r} has shape {images.shape}, expected (N, {', '.join(map(str, shape))})")
    if images.dtype != np.uint8 and images.size and (images.min() < 0 or images.max() > 255):
        raise ValueError(f"{path}: {key!r} holds values outside 0..255, expected uint8 pixels")


def _check_labels(path, key, labels, count, num_classes=None):
    """Refuse labels that are not one per image (``count``), or outside 0..num_classes-1."""
    if labels.shape != (count,):
        raise ValueError(f"{path}: {key!r} has shape {labels.shape} for {count} images, expected ({count},)")
    if num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: {key!r} holds labels outside 0..{num_classes - 1}")


def _cifar_batch(path, batch, label_key, num_classes):
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of one CIFAR batch: ``data`` rows of 3072 pixels (CHW) and
    one label per row, else a ValueError naming the file."""
    data, labels = _array(path, batch, "data"), _array(path, batch, label_key)
    _check_images(path, "data", data, (3072,))
    _check_labels(path, label_key, labels, len(data), num_classes)
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels.astype(np.int64)


SVHN_IMG_MAX = 1000  # the head class of SVHN-LT keeps 1000 images (hard-coded upstream)
SVHN_CLASS_ORDER = (1, 2, 3, 4, 5, 6, 7, 8, 9, 0)  # rank 0 (head) = digit 1, rank 9 = digit 0
SVHN_CLASSES = [str(digit) for digit in range(10)]
SVHN_FILES = {  # split -> (url, official md5)
    "train": ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
              "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
             "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ("http://ufldl.stanford.edu/housenumbers/extra_32x32.mat",
              "a93ce644f1a588dc4d68dda5feec44a7"),
}


def read_svhn(root, split, download=False):
    """``{root}/{split}_32x32.mat`` as (images uint8 (N, 32, 32, 3) HWC, a view of the file's
    array; labels int64 0..9).

    The file's X is (32, 32, 3, N) and its y uses 10 for digit 0. A file whose md5 differs from
    the official one only warns; ``download=True`` fetches a missing file from the official URL.
    """
    if split not in SVHN_FILES:
        raise ValueError(f"split must be one of {sorted(SVHN_FILES)}, got {split!r}")
    url, md5 = SVHN_FILES[split]
    path = os.path.join(root, os.path.basename(url))
    if download and not os.path.isfile(path):
        download_url(url, root, md5=md5)
    require_files([path], "SVHN", f"Get it with download=True (fetches {url}).")
    warn_if_not_official([(path, md5)], "SVHN")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several kinds (MatReadError, ValueError...) for a damaged file
        raise ValueError(f"{path}: not a readable MATLAB .mat file (truncated or another format: "
                         f"{type(e).__name__}: {' '.join(str(e).split())})") from None
    for key in ("X", "y"):
        if key not in mat:
            raise ValueError(f"{path}: no {key!r} array; an SVHN file holds X (32, 32, 3, N) and y (N, 1)")
    images = _array(path, mat, "X")
    images = images.transpose(3, 0, 1, 2) if images.ndim == 4 else images
    _check_images(path, "X", images, (32, 32, 3))
    labels = _array(path, mat, "y").ravel()
    _check_labels(path, "y", labels, len(images))
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise ValueError(f"{path}: 'y' holds labels outside 1..10 (10 is digit 0)")
    return images.astype(np.uint8), labels.astype(np.int64) % 10


TINY_IMAGES_FILE = "ti_80M_selected.pickle"


def read_tiny_images(path):
    """The 80M Tiny Images selection at ``path`` as (images uint8 (N, 32, 32, 3), ``extrapolated_targets`` int64
    (N,) or None when the file has none), in pool order. The targets are the upstream selection's class per image
    (they drive the per-class draw of D_U), not true labels."""
    require_files([path], "80M Tiny Images selection",
                  "It came from the Google-Drive link of the imbalanced-semi-self README; Tiny Images was "
                  "withdrawn by its authors: use --unlabeled_source cifar10_train (the CIFAR-10 training images "
                  "the labeled subset leaves out) instead.")
    pool = load_pickle_dict(path, ["data"])
    images = _array(path, pool, "data")
    _check_images(path, "data", images, (32, 32, 3))
    if pool.get("extrapolated_targets") is None:
        return np.ascontiguousarray(images, dtype=np.uint8), None
    targets = _array(path, pool, "extrapolated_targets")
    _check_labels(path, "extrapolated_targets", targets, len(images))
    return np.ascontiguousarray(images, dtype=np.uint8), targets.astype(np.int64)
