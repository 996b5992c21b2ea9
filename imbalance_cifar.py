"""Long-tailed CIFAR-10/100 and semi-supervised long-tailed CIFAR-10 (docs/protocols.md#long-tailed-subsets, docs/protocols.md#unlabeled-set): the upstream classes.

A thin view over the data layer in engine, which builds the same sets for the scripts (one code path):

* the long-tail profile (Cao et al. 2019, LDAM-DRW: class i keeps n_i = int(img_max * imb_factor**(i/(C-1)))
  training images, imb_factor = 1/ρ, img_max = len(train)/C) and the ``rand_number``-seeded draw of the upstream
  code (numpy's legacy global RNG seeded once, then per class in label order a shuffle keeping the first n_i),
  so for the same data and seed the subset equals the upstream one: engine/data/longtail.py;
* the CIFAR and Tiny Images file readers: engine/data/datafiles.py; pseudo-label files: engine/data/pseudolabel_files.py;
* the data sets ``engine.data.datasets.DATASETS["cifar10"]`` / ``["cifar100"]`` (``arrays``, ``semi_parts``).

Semi-supervised set (Yang & Xu 2020, "Rethinking the Value of Labels for Improving Class-Imbalanced Learning"):
the labeled long-tailed set (true labels) followed by unlabeled images drawn per class from a pool (the 80M Tiny
Images selection, or the CIFAR-10 training images the labeled subset leaves out), trained on with pseudo-labels
from a base model. The test split is returned whole.
"""
from engine.data.datasets import DATASETS
from engine.data.datafiles import (CIFAR10, CIFAR100, TINY_IMAGES_FILE, ChecksumWarning, CifarRelease, load_pickle_dict,
                              read_cifar, require_files, warn_if_not_official)
from engine.data.imagesets import ImageArrayDataset, SemiSupervisedImageDataset
from engine.data.longtail import (check_imb_factor, get_img_num_per_cls, long_tail_indices, select_per_class,
                             select_unlabeled, unlabeled_num_per_cls)
from engine.data.pseudolabel_files import BELOW_THRESHOLD, MISSING, read_pseudo_labels, resolve_pseudo_label_file

# The names this module has always exported (users and tests import them from here).
__all__ = ["BELOW_THRESHOLD", "CIFAR10", "CIFAR100", "ChecksumWarning", "CifarRelease", "IMBALANCECIFAR10",
           "IMBALANCECIFAR100", "ImageArrayDataset", "ImbalanceCIFAR10", "ImbalanceCIFAR100", "MISSING",
           "SemiSupervisedImageDataset", "SemiSupervisedImbalanceCIFAR10", "TINY_IMAGES_FILE", "UNLABELED_SOURCES",
           "check_imb_factor", "get_img_num_per_cls", "load_pickle_dict", "load_unlabeled_pool", "long_tail_indices",
           "read_cifar", "read_pseudo_labels", "require_files", "resolve_pseudo_label_file", "select_per_class",
           "select_unlabeled", "unlabeled_num_per_cls", "warn_if_not_official"]

UNLABELED_SOURCES = tuple(DATASETS["cifar10"].pools)  # ("tinyimages", "cifar10_train")


def load_unlabeled_pool(root, source, labeled_indices=None):
    """Unlabeled pool for semi-supervised CIFAR-10, in pool order (docs/protocols.md#unlabeled-set): (images uint8 (N, 32, 32, 3),
    reference labels int64 (N,)); reference labels only drive the per-class selection, never training.

    * ``'tinyimages'``: ``{root}/ti_80M_selected.pickle`` (``data``, ``extrapolated_targets``), the upstream 80M
      Tiny Images selection; ``labeled_indices`` is ignored (disjoint pool).
    * ``'cifar10_train'``: the full CIFAR-10 training split in file order (indices stay stable for
      gen_pseudolabels.py); the images of ``labeled_indices`` get reference label -1, so only images the labeled
      subset leaves out can be drawn. The standard stand-in since Tiny Images was withdrawn.
    """
    return DATASETS["cifar10"].load_pool(root, source, labeled_indices=labeled_indices)


class ImbalanceCIFAR10(ImageArrayDataset):
    """CIFAR-10-LT (Cao et al. 2019; docs/protocols.md#long-tailed-subsets): ``train=True`` keeps n_i images of class i (img_max =
    len(train)/C, or ``img_max`` when given: the labeled set of the semi-supervised stand-in protocol), drawn with
    ``rand_number``; ``train=False`` is the official test split unchanged."""
    dataset = "cifar10"
    cls_num = 10

    def __init__(self, root, imb_type="exp", imb_factor=0.01, rand_number=0, train=True,
                 transform=None, target_transform=None, download=False, img_max=None):
        super().__init__(*DATASETS[self.dataset].arrays(
            "train" if train else "test", data_path=root, imb_type=imb_type, imb_factor=imb_factor,
            rand_number=rand_number, download=download, img_max=img_max), transform, target_transform)


class ImbalanceCIFAR100(ImbalanceCIFAR10):
    """CIFAR-100-LT (img_max = 500); labels are the 100 ``fine_labels``."""
    dataset = "cifar100"
    cls_num = 100


class SemiSupervisedImbalanceCIFAR10(SemiSupervisedImageDataset):
    """CIFAR-10-LT plus pseudo-labeled unlabeled images (Yang & Xu 2020; docs/protocols.md#unlabeled-set).

    The labeled part equals ``ImbalanceCIFAR10`` with the same arguments (same seed, same RNG stream), except
    that ``labeled_max`` replaces img_max when given. The unlabeled part comes from
    ``load_unlabeled_pool(root, unlabeled_source, labeled_indices)`` and is trained on with the pseudo-labels of
    ``pseudo_label_file`` (default ``{root}/pseudo_labeled_cifar.npz`` if present, else the upstream
    ``{root}/pseudo_labeled_cifar.pickle``). ``train=False`` gives the official test split (no unlabeled part).
    """
    cls_num = 10

    def __init__(self, root, imb_type="exp", imb_factor=0.01, imb_factor_unlabel=0.01,
                 rand_number=0, train=True, transform=None, target_transform=None,
                 download=False, unlabeled_source="tinyimages", pseudo_label_file=None,
                 unlabel_size_factor=5, labeled_max=None, unlabeled_max=None):
        super().__init__(**DATASETS["cifar10"].semi_parts(
            "train" if train else "test", data_path=root, imb_type=imb_type, imb_factor=imb_factor,
            rand_number=rand_number, download=download, imb_factor_unlabel=imb_factor_unlabel,
            unlabeled_source=unlabeled_source, pseudo_label_file=pseudo_label_file,
            unlabel_size_factor=unlabel_size_factor, labeled_max=labeled_max, unlabeled_max=unlabeled_max),
            transform=transform, target_transform=target_transform)


# The upstream repository's class names (same constructor signature).
IMBALANCECIFAR10, IMBALANCECIFAR100 = ImbalanceCIFAR10, ImbalanceCIFAR100
