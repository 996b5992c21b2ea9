"""Long-tailed CIFAR-10/100 and semi-supervised long-tailed CIFAR-10 (SPEC §2.1, §2.2).

Long-tail profile (Cao et al. 2019, LDAM-DRW; same in Yang & Xu 2020 and LADE): for C classes,
class i (0 = head) keeps n_i = int(img_max * imb_factor**(i/(C-1))) training images, where
imb_factor = 1/ρ and img_max = len(train)/C. The kept images are drawn at random: numpy's
legacy global RNG is seeded once with ``rand_number``, then for each class in label order its
indices are shuffled and the first n_i kept, so for the same data and seed the subset equals the
upstream one. The test split is returned whole.

Semi-supervised set (Yang & Xu 2020, "Rethinking the Value of Labels for Improving
Class-Imbalanced Learning"): the labeled long-tailed set (true labels) followed by unlabeled
images drawn per class from a pool, trained on with pseudo-labels from a base model.

The shared logic (profiles, seeded per-class draws, unlabeled size rule, pseudo-label files,
file checks, the in-memory dataset) lives here; imbalance_svhn.py imports it.
"""
import hashlib
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.utils import download_and_extract_archive

from engine import safe_pickle


# --------------------------------------------------------------------------------------------
# Profiles and seeded per-class draws (SPEC §2.1, §2.2)
# --------------------------------------------------------------------------------------------

def get_img_num_per_cls(img_max, cls_num, imb_type, imb_factor):
    """Per-class image counts, index = rank (0 = head) (Cao et al. 2019; SPEC §2.1).

    * ``'exp'``:  n_i = int(img_max * imb_factor**(i / (cls_num - 1))), i = 0..cls_num-1;
    * ``'step'``: the first cls_num//2 classes get int(img_max), the rest int(img_max * imb_factor)
      (upstream lists only 2*(cls_num//2) counts, which drops the last class when cls_num is odd);
    * any other ``imb_type``: int(img_max) for every class.
    """
    if imb_type == "exp":
        return [int(img_max * imb_factor ** (i / (cls_num - 1))) for i in range(cls_num)]
    if imb_type == "step":
        head = cls_num // 2
        return [int(img_max)] * head + [int(img_max * imb_factor)] * (cls_num - head)
    return [int(img_max)] * cls_num


def check_imb_factor(imb_factor, flag="--imb_factor"):
    """Raise ValueError unless imb_factor = 1/ρ lies in (0, 1]."""
    if 0 < imb_factor <= 1:
        return
    hint = f": did you mean {1 / imb_factor:g}?" if imb_factor > 1 else ""
    raise ValueError(f"{flag} is 1/ρ and must be in (0, 1] (0.01 for ρ=100): "
                     f"got {imb_factor:g}{hint}")


def select_per_class(labels, plan):
    """Indices drawn per class with numpy's global legacy RNG (SPEC §2.1).

    For each ``(cls, num)`` of ``plan`` in order: idx = np.where(labels == cls)[0];
    np.random.shuffle(idx); keep idx[:num] (all of them when the class has fewer). The caller
    seeds the RNG. Returns the kept indices concatenated class by class (int64).
    """
    kept = []
    for cls, num in plan:
        idx = np.where(labels == cls)[0]
        np.random.shuffle(idx)
        kept.append(idx[:num])
    return np.concatenate(kept).astype(np.int64)


def long_tail_indices(labels, class_order, counts, rand_number):
    """``np.random.seed(rand_number)`` then ``select_per_class(labels, zip(class_order, counts))``.

    Leaves the global RNG advanced: the unlabeled draw of the semi-supervised set continues on
    the same stream (SPEC §2.2), which is what makes it match upstream.
    """
    np.random.seed(rand_number)
    return select_per_class(labels, zip(class_order, counts))


def unlabeled_num_per_cls(num_labeled, cls_num, imb_factor_unlabel, unlabel_size_factor=5):
    """Upstream unlabeled size rule (Yang & Xu 2020; SPEC §2.2), index = rank (0 = head).

    T = unlabel_size_factor * num_labeled; b = T // C; u_i = int(b * f_U**(i/(C-1)));
    r = T / sum(u); u_i = int(u_i * r) (sums to T or a few less). f_U = imb_factor_unlabel.
    """
    total = unlabel_size_factor * num_labeled
    base = get_img_num_per_cls(total // cls_num, cls_num, "exp", imb_factor_unlabel)
    ratio = total / sum(base)
    return [int(num * ratio) for num in base]


def select_unlabeled(pool_labels, plan):
    """``select_per_class`` on the pool's reference labels, after checking that every class of
    ``plan`` has enough candidates (label -1 marks pool images that are never candidates)."""
    plan = list(plan)
    short = [(cls, num, int(np.count_nonzero(pool_labels == cls))) for cls, num in plan]
    short = [(cls, num, have) for cls, num, have in short if num > have]
    if short:
        detail = "; ".join(f"class {c}: asked {n}, available {h}" for c, n, h in short)
        raise ValueError(
            f"the unlabeled pool is too small ({detail}). Fix: a smaller --unlabeled_max or "
            "--imb_factor_unlabel (u_i = unlabeled_max * imb_factor_unlabel**(i/(C-1))), "
            "a smaller --labeled_max when the pool is the labeled split's leftovers, "
            "or a larger pool")
    return select_per_class(pool_labels, plan)


# --------------------------------------------------------------------------------------------
# Files: presence, checksums, pickles, pseudo-labels
# --------------------------------------------------------------------------------------------

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
    """``engine.safe_pickle.load(path, encoding='latin1')`` as a str-keyed dict holding ``keys``."""
    content = safe_pickle.load(path, encoding="latin1")
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    content = _str_keys(content)
    absent = [k for k in keys if k not in content]
    if absent:
        raise ValueError(f"{path}: missing key(s) {absent}; found {sorted(content)}")
    return content


def resolve_pseudo_label_file(root, pseudo_label_file, default_name, dataset):
    """``pseudo_label_file``, or ``{root}/{default_name}`` when it is None; FileNotFoundError
    (saying how to make one) when the file is absent."""
    path = os.path.join(root, default_name) if pseudo_label_file is None else pseudo_label_file
    require_files([path], "pseudo-label file",
                  f"Make one (SPEC §1.2-1.3): train a base model on the labeled set (train.py "
                  f"--dataset {dataset}), label the unlabeled pool with gen_pseudolabels.py "
                  f"--dataset {dataset} --resume CHECKPOINT, then pass the file as "
                  f"pseudo_label_file (default {os.path.join(root, default_name)}).")
    return path


BELOW_THRESHOLD, MISSING = -1, -2


def read_pseudo_labels(path, pool_indices, pool_size, num_classes):
    """Pseudo-labels (int64) of the pool images ``pool_indices``.

    Two formats: this project's ``.npz`` (``predictions`` int64, ``confidence`` float32,
    ``indices`` int64 pool indices; read with allow_pickle=False), or the upstream pickle dict
    whose ``extrapolated_targets`` holds one prediction per pool image in pool order (SPEC §1.3).
    A prediction of -1 marks an image below gen_pseudolabels.py's ``--confidence_threshold``: it
    is returned as -1 for the caller to drop. A pool image the file does not cover is an error.
    """
    if os.fspath(path).endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            predictions, covered = archive["predictions"], archive["indices"]
        if covered.size and (covered.min() < 0 or covered.max() >= pool_size):
            raise ValueError(f"{path}: pool indices outside [0, {pool_size}); was it made for "
                             "another unlabeled pool?")
        lookup = np.full(pool_size, MISSING, np.int64)
        lookup[covered] = predictions
    else:
        lookup = np.asarray(load_pickle_dict(path, ["extrapolated_targets"])
                            ["extrapolated_targets"], dtype=np.int64)
        if len(lookup) != pool_size:
            raise ValueError(f"{path}: {len(lookup)} pseudo-labels for a pool of {pool_size} "
                             "images; was it made for another unlabeled pool?")
    pseudo = lookup[pool_indices]
    invalid = pool_indices[(pseudo < BELOW_THRESHOLD) | (pseudo >= num_classes)]
    if invalid.size:
        raise ValueError(f"{path}: no pseudo-label in 0..{num_classes - 1} for pool indices "
                         f"{invalid[:5].tolist()} ({invalid.size} in all); regenerate it with "
                         "gen_pseudolabels.py over the whole pool")
    return pseudo


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

class ImageArrayDataset(Dataset):
    """In-memory images, torchvision style: ``.data`` uint8 (N, 32, 32, 3) HWC, ``.targets``
    list of int, ``.classes``, ``.num_classes``; items are (transform(PIL image),
    target_transform(target))."""

    def __init__(self, data, targets, classes, transform=None, target_transform=None):
        self.data = np.ascontiguousarray(data, dtype=np.uint8)
        self.targets = np.asarray(targets, np.int64).tolist()
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        img, target = Image.fromarray(self.data[index]), self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def get_cls_num_list(self):
        """Number of samples per class, index = label."""
        return np.bincount(self.targets, minlength=self.num_classes).tolist()


class SemiSupervisedImageDataset(ImageArrayDataset):
    """Labeled long-tailed samples (true labels) followed by unlabeled samples (pseudo-labels)
    (Yang & Xu 2020; SPEC §2.2).

    Draw: ``long_tail_indices`` (seeded) for the labeled part, then on the same RNG stream one
    shuffle per class of the pool images whose reference label is that class, keeping the first
    u_c. u = ``unlabeled_num_per_cls`` (upstream 5x rule, with T = unlabel_size_factor times the
    labeled set's size, which is sum(n_i) whenever every class has n_i images) or, with
    ``unlabeled_max``, the DARP/CReST rule u_i = int(unlabeled_max * f_U**(i/(C-1))).
    ``get_cls_num_list()`` = labeled counts + pseudo-label counts.

    Attributes: ``labeled_indices`` (into the training split), ``unlabeled_indices`` (into the
    pool), ``num_labeled``.
    """

    def __init__(self, data, labels, classes, class_order, labeled_counts, rand_number,
                 load_pool, imb_factor_unlabel, unlabel_size_factor, unlabeled_max,
                 pseudo_label_file, transform=None, target_transform=None):
        labeled = long_tail_indices(labels, class_order, labeled_counts, rand_number)
        pool_images, pool_labels = load_pool(labeled)
        cls_num = len(class_order)
        if unlabeled_max is None:
            counts = unlabeled_num_per_cls(len(labeled), cls_num, imb_factor_unlabel,
                                           unlabel_size_factor)
        else:
            counts = get_img_num_per_cls(unlabeled_max, cls_num, "exp", imb_factor_unlabel)
        unlabeled = select_unlabeled(pool_labels, zip(class_order, counts))
        pseudo = read_pseudo_labels(pseudo_label_file, unlabeled, len(pool_labels), cls_num)
        confident = pseudo != BELOW_THRESHOLD  # dropped after the draw, which stays upstream's
        unlabeled, pseudo = unlabeled[confident], pseudo[confident]
        super().__init__(np.concatenate([data[labeled], pool_images[unlabeled]]),
                         np.concatenate([labels[labeled], pseudo]), classes, transform,
                         target_transform)
        self.labeled_indices = labeled
        self.unlabeled_indices = unlabeled
        self.num_labeled = len(labeled)

    def _init_test_split(self, data, labels, classes, transform, target_transform):
        """The natural test split: all samples labeled, no unlabeled part."""
        ImageArrayDataset.__init__(self, data, labels, classes, transform, target_transform)
        self.labeled_indices = np.arange(len(labels))
        self.unlabeled_indices = np.zeros(0, np.int64)
        self.num_labeled = len(labels)


# --------------------------------------------------------------------------------------------
# CIFAR files
# --------------------------------------------------------------------------------------------

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
    """One split of an official-layout CIFAR release under ``root``, read with engine.safe_pickle.

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
    batches = [load_pickle_dict(p, ["data", release.label_key]) for p in paths[:-1]]
    meta = load_pickle_dict(paths[-1], [release.names_key])
    data = np.concatenate([np.asarray(b["data"], np.uint8).reshape(-1, 3, 32, 32)
                           for b in batches])
    labels = np.concatenate([np.asarray(b[release.label_key], np.int64) for b in batches])
    classes = [_text(name) for name in meta[release.names_key]]
    return data.transpose(0, 2, 3, 1), labels, classes


UNLABELED_SOURCES = ("tinyimages", "cifar10_train")
TINY_IMAGES_FILE = "ti_80M_selected.pickle"


def _check_unlabeled_source(source):
    if source not in UNLABELED_SOURCES:
        raise ValueError(f"unlabeled_source must be one of {UNLABELED_SOURCES}, got {source!r}")


def load_unlabeled_pool(root, source, labeled_indices=None):
    """Unlabeled pool for semi-supervised CIFAR-10, in pool order (SPEC §2.2).

    Returns (images uint8 (N, 32, 32, 3), reference labels int64 (N,)); reference labels only
    drive the per-class selection, never training.

    * ``'tinyimages'``: ``{root}/ti_80M_selected.pickle`` (``data``, ``extrapolated_targets``),
      the upstream 80M Tiny Images selection; ``labeled_indices`` is ignored (disjoint pool).
    * ``'cifar10_train'``: the full CIFAR-10 training split in file order (indices stay stable
      for gen_pseudolabels.py); the images of ``labeled_indices`` get reference label -1, so
      only images the labeled subset leaves out can be drawn. The standard stand-in since Tiny
      Images was withdrawn.
    """
    _check_unlabeled_source(source)
    if source == "tinyimages":
        path = os.path.join(root, TINY_IMAGES_FILE)
        require_files([path], "80M Tiny Images selection",
                      "It came from the Google-Drive link of the imbalanced-semi-self README; "
                      "Tiny Images was withdrawn by its authors, so use "
                      "unlabeled_source='cifar10_train' instead.")
        pool = load_pickle_dict(path, ["data", "extrapolated_targets"])
        return (np.ascontiguousarray(pool["data"], dtype=np.uint8),
                np.asarray(pool["extrapolated_targets"], dtype=np.int64))
    images, labels, _ = read_cifar(root, CIFAR10, train=True)
    if labeled_indices is not None:
        labels[labeled_indices] = -1
    return images, labels


class ImbalanceCIFAR10(ImageArrayDataset):
    """CIFAR-10-LT (Cao et al. 2019; SPEC §2.1): ``train=True`` keeps n_i images of class i
    (``get_img_num_per_cls`` with img_max = len(train)/C, or ``img_max`` when given: the labeled
    set of the semi-supervised stand-in protocol), drawn by ``long_tail_indices``;
    ``train=False`` is the official test split unchanged."""
    release = CIFAR10
    cls_num = 10

    def __init__(self, root, imb_type="exp", imb_factor=0.01, rand_number=0, train=True,
                 transform=None, target_transform=None, download=False, img_max=None):
        check_imb_factor(imb_factor)
        data, labels, classes = read_cifar(root, self.release, train, download)
        if train:
            img_max = len(labels) / self.cls_num if img_max is None else img_max
            counts = get_img_num_per_cls(img_max, self.cls_num, imb_type, imb_factor)
            keep = long_tail_indices(labels, range(self.cls_num), counts, rand_number)
            data, labels = data[keep], labels[keep]
        super().__init__(data, labels, classes, transform, target_transform)


class ImbalanceCIFAR100(ImbalanceCIFAR10):
    """CIFAR-100-LT (img_max = 500); labels are the 100 ``fine_labels``."""
    release = CIFAR100
    cls_num = 100


class SemiSupervisedImbalanceCIFAR10(SemiSupervisedImageDataset):
    """CIFAR-10-LT plus pseudo-labeled unlabeled images (Yang & Xu 2020; SPEC §2.2).

    The labeled part equals ``ImbalanceCIFAR10`` with the same arguments (same seed, same RNG
    stream), except that ``labeled_max`` replaces img_max when given. The unlabeled part comes
    from ``load_unlabeled_pool(root, unlabeled_source, labeled_indices)`` and is trained on with
    the pseudo-labels of ``pseudo_label_file`` (default ``{root}/pseudo_labeled_cifar.pickle``).
    ``train=False`` gives the official test split (no unlabeled part).
    """
    cls_num = 10

    def __init__(self, root, imb_type="exp", imb_factor=0.01, imb_factor_unlabel=0.01,
                 rand_number=0, train=True, transform=None, target_transform=None,
                 download=False, unlabeled_source="tinyimages", pseudo_label_file=None,
                 unlabel_size_factor=5, labeled_max=None, unlabeled_max=None):
        check_imb_factor(imb_factor)
        check_imb_factor(imb_factor_unlabel, "--imb_factor_unlabel")
        _check_unlabeled_source(unlabeled_source)
        for flag, value in (("--labeled_max", labeled_max), ("--unlabeled_max", unlabeled_max)):
            if value is not None and not value > 0:
                raise ValueError(f"{flag} is a number of images per class and must be > 0, "
                                 f"got {value}")
        data, labels, classes = read_cifar(root, CIFAR10, train, download)
        if not train:
            self._init_test_split(data, labels, classes, transform, target_transform)
            return
        img_max = len(labels) / self.cls_num if labeled_max is None else labeled_max
        super().__init__(
            data, labels, classes, range(self.cls_num),
            get_img_num_per_cls(img_max, self.cls_num, imb_type, imb_factor), rand_number,
            lambda labeled: load_unlabeled_pool(root, unlabeled_source, labeled),
            imb_factor_unlabel, unlabel_size_factor, unlabeled_max,
            resolve_pseudo_label_file(root, pseudo_label_file, "pseudo_labeled_cifar.pickle",
                                      "cifar10"),
            transform, target_transform)
