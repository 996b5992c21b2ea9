"""Long-tailed SVHN and semi-supervised long-tailed SVHN (docs/protocols.md#long-tailed-subsets, docs/protocols.md#unlabeled-set): the upstream classes.

A thin view over ``engine.data.datasets.DATASETS["svhn"]`` (the profile and seeded draw of engine/data/longtail.py, as for
CIFAR) with two SVHN specifics: img_max = 1000 (hard-coded upstream), and the profile is applied in the class
order [1, 2, ..., 9, 0], the original SVHN label order where digit 0 was label 10, so digit 1 is the head and
digit 0 the tail. Labels are digits: the .mat files' label 10 becomes 0. The unlabeled pool of the
semi-supervised set is the ``extra`` split, selected by its true labels.
"""
from engine.data.datasets import DATASETS
from engine.data.datafiles import SVHN_CLASS_ORDER, SVHN_CLASSES, SVHN_FILES, SVHN_IMG_MAX, read_svhn
from engine.data.imagesets import ImageArrayDataset, SemiSupervisedImageDataset

# The names this module has always exported (users and tests import them from here).
__all__ = ["ImbalanceSVHN", "SVHN_CLASSES", "SVHN_CLASS_ORDER", "SVHN_FILES", "SVHN_IMG_MAX",
           "SemiSupervisedImbalanceSVHN", "load_unlabeled_pool", "read_svhn"]


def load_unlabeled_pool(root, download=False):
    """Unlabeled pool of semi-supervised SVHN: the ``extra`` split in file order, as
    (images uint8 (N, 32, 32, 3), true labels int64); labels only drive the selection."""
    return DATASETS["svhn"].load_pool(root, download=download)


class _SVHNLabels:
    """torchvision's SVHN names its targets ``labels``; both names refer to one list."""

    @property
    def labels(self):
        return self.targets


class ImbalanceSVHN(_SVHNLabels, ImageArrayDataset):
    """SVHN-LT (docs/protocols.md#long-tailed-subsets): ``split='train'`` keeps n_r = int(1000 * imb_factor**(r/9)) images of the digit of
    rank r in ``SVHN_CLASS_ORDER``, drawn with ``rand_number``; other splits are returned unchanged (the test split
    is naturally imbalanced). ``get_cls_num_list()`` is indexed by digit, so index 0 is the tail count."""
    cls_num = 10

    def __init__(self, root, imb_type="exp", imb_factor=0.01, rand_number=0, split="train",
                 transform=None, target_transform=None, download=False):
        super().__init__(*DATASETS["svhn"].arrays(
            split, data_path=root, imb_type=imb_type, imb_factor=imb_factor, rand_number=rand_number,
            download=download), transform, target_transform)


class SemiSupervisedImbalanceSVHN(_SVHNLabels, SemiSupervisedImageDataset):
    """SVHN-LT plus pseudo-labeled images of the ``extra`` split (Yang & Xu 2020; docs/protocols.md#unlabeled-set).

    The labeled part equals ``ImbalanceSVHN`` with the same arguments; the unlabeled sizes follow the upstream
    rule (``unlabeled_num_per_cls``) in ``SVHN_CLASS_ORDER``; training targets of unlabeled images come from
    ``pseudo_label_file`` (default ``{root}/pseudo_labeled_svhn.npz`` if present, else the upstream
    ``{root}/pseudo_labeled_svhn.pickle``). Other splits than 'train' are returned unchanged.
    """
    cls_num = 10

    def __init__(self, root, imb_type="exp", imb_factor=0.01, imb_factor_unlabel=0.01,
                 rand_number=0, split="train", transform=None, target_transform=None,
                 download=False, pseudo_label_file=None, unlabel_size_factor=5):
        super().__init__(**DATASETS["svhn"].semi_parts(
            split, data_path=root, imb_type=imb_type, imb_factor=imb_factor, rand_number=rand_number,
            download=download, imb_factor_unlabel=imb_factor_unlabel, pseudo_label_file=pseudo_label_file,
            unlabel_size_factor=unlabel_size_factor), transform=transform, target_transform=target_transform)
