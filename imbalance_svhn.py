"""Long-tailed SVHN and semi-supervised long-tailed SVHN (SPEC §2.1, §2.2).

Same construction as imbalance_cifar.py (whose functions this module uses) with two SVHN
specifics: img_max = 1000 (hard-coded upstream), and the profile is applied in the class order
[1, 2, ..., 9, 0], the original SVHN label order where digit 0 was label 10, so digit 1 is the
head and digit 0 the tail. Labels are digits: the .mat files' label 10 becomes 0. The unlabeled
pool of the semi-supervised set is the ``extra`` split, selected by its true labels.
"""
import os

import numpy as np
import scipy.io
from torchvision.datasets.utils import download_url

from imbalance_cifar import (ImageArrayDataset, SemiSupervisedImageDataset, check_imb_factor,
                             get_img_num_per_cls, long_tail_indices, require_files,
                             resolve_pseudo_label_file, warn_if_not_official)

SVHN_IMG_MAX = 1000
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
    mat = scipy.io.loadmat(path)
    images = np.asarray(mat["X"], np.uint8).transpose(3, 0, 1, 2)
    labels = np.asarray(mat["y"], np.int64).ravel() % 10
    return images, labels


def load_unlabeled_pool(root, download=False):
    """Unlabeled pool of semi-supervised SVHN: the ``extra`` split in file order, as
    (images uint8 (N, 32, 32, 3), true labels int64); labels only drive the selection."""
    return read_svhn(root, "extra", download)


class _SVHNLabels:
    """torchvision's SVHN names its targets ``labels``; both names refer to one list."""

    @property
    def labels(self):
        return self.targets


class ImbalanceSVHN(_SVHNLabels, ImageArrayDataset):
    """SVHN-LT (SPEC §2.1): ``split='train'`` keeps n_r = int(1000 * imb_factor**(r/9)) images
    of the digit of rank r in ``SVHN_CLASS_ORDER``, drawn by ``long_tail_indices``; other splits
    are returned unchanged (the test split is naturally imbalanced).
    ``get_cls_num_list()`` is indexed by digit, so index 0 is the tail count."""
    cls_num = 10

    def __init__(self, root, imb_type="exp", imb_factor=0.01, rand_number=0, split="train",
                 transform=None, target_transform=None, download=False):
        check_imb_factor(imb_factor)
        data, labels = read_svhn(root, split, download)
        if split == "train":
            counts = get_img_num_per_cls(SVHN_IMG_MAX, self.cls_num, imb_type, imb_factor)
            keep = long_tail_indices(labels, SVHN_CLASS_ORDER, counts, rand_number)
            data, labels = data[keep], labels[keep]
        super().__init__(data, labels, SVHN_CLASSES, transform, target_transform)


class SemiSupervisedImbalanceSVHN(_SVHNLabels, SemiSupervisedImageDataset):
    """SVHN-LT plus pseudo-labeled images of the ``extra`` split (Yang & Xu 2020; SPEC §2.2).

    The labeled part equals ``ImbalanceSVHN`` with the same arguments; the unlabeled sizes follow
    the upstream rule (``unlabeled_num_per_cls``) in ``SVHN_CLASS_ORDER``; training targets of
    unlabeled images come from ``pseudo_label_file`` (default
    ``{root}/pseudo_labeled_svhn.pickle``). Other splits than 'train' are returned unchanged.
    """
    cls_num = 10

    def __init__(self, root, imb_type="exp", imb_factor=0.01, imb_factor_unlabel=0.01,
                 rand_number=0, split="train", transform=None, target_transform=None,
                 download=False, pseudo_label_file=None, unlabel_size_factor=5):
        check_imb_factor(imb_factor)
        check_imb_factor(imb_factor_unlabel, "--imb_factor_unlabel")
        data, labels = read_svhn(root, split, download)
        if split != "train":
            self._init_test_split(data, labels, SVHN_CLASSES, transform, target_transform)
            return
        super().__init__(
            data, labels, SVHN_CLASSES, SVHN_CLASS_ORDER,
            get_img_num_per_cls(SVHN_IMG_MAX, self.cls_num, imb_type, imb_factor), rand_number,
            lambda labeled: load_unlabeled_pool(root, download), imb_factor_unlabel,
            unlabel_size_factor, None,
            resolve_pseudo_label_file(root, pseudo_label_file, "pseudo_labeled_svhn.pickle",
                                      "svhn"),
            transform, target_transform)
