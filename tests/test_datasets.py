"""Long-tailed and semi-supervised CIFAR / SVHN construction (docs/protocols.md#long-tailed-subsets, docs/protocols.md#unlabeled-set), and the data-set registry
(engine/data/datasets.py): views, the one code path, --imb_type, a new data set as one registration."""
import ast
import json
import os
import pickle
import shutil
import warnings

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import imagenet_inat.main as imagenet_main
import pretrain_rot
import train
from conftest import REPO_ROOT
from engine.train.checkpoint import load_checkpoint
from engine.data.datasets import (DATASETS, IMAGENET_MEAN, IMAGENET_STD, IN_MEMORY, SEMI_SUPERVISED, DatasetSpec, register,
                         torch_transforms)
from imagenet_inat.datasets import LT_DATASETS, reference_split_file
from imbalance_cifar import (ChecksumWarning, ImbalanceCIFAR10, ImbalanceCIFAR100,
                             SemiSupervisedImbalanceCIFAR10, check_imb_factor,
                             get_img_num_per_cls, load_unlabeled_pool, read_pseudo_labels,
                             unlabeled_num_per_cls)
from imbalance_svhn import ImbalanceSVHN, SemiSupervisedImbalanceSVHN
from imbalance_svhn import load_unlabeled_pool as load_svhn_pool

CIFAR_TRAIN_FILES = [f"data_batch_{k}" for k in range(1, 6)]
SVHN_ORDER = [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]


# ---------------------------------------------------------------- independent readers / draws

def raw_cifar10(root, names):
    """The fixture files read with plain pickle (trusted: conftest wrote them)."""
    batches = []
    for name in names:
        with open(os.path.join(root, "cifar-10-batches-py", name), "rb") as f:
            batches.append(pickle.load(f, encoding="latin1"))
    data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
    return data.transpose(0, 2, 3, 1), np.concatenate([b["labels"] for b in batches])


def raw_svhn(root, split):
    mat = scipy.io.loadmat(os.path.join(root, f"{split}_32x32.mat"))
    return mat["X"].transpose(3, 0, 1, 2), mat["y"].ravel().astype(np.int64) % 10


def upstream_draw(labels, order, counts):
    """The upstream per-class draw on the already seeded global RNG."""
    kept = []
    for cls, num in zip(order, counts):
        idx = np.where(labels == cls)[0]
        np.random.shuffle(idx)
        kept.append(idx[:num])
    return np.concatenate(kept)


def write_npz(path, predictions, indices):
    np.savez(path, predictions=np.asarray(predictions, np.int64),
             confidence=np.ones(len(indices), np.float32), indices=np.asarray(indices, np.int64))
    return str(path)


def write_upstream_pickle(path, predictions, **extra):
    with open(path, "wb") as f:
        pickle.dump({"extrapolated_targets": np.asarray(predictions, np.int64),
                     "prediction_model": "base.pth", **extra}, f)
    return str(path)


# ---------------------------------------------------------------- profiles (docs/protocols.md#long-tailed-subsets)

@pytest.mark.parametrize("imb_factor, counts, total", [
    (0.01, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 12406),
    (0.02, [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100], 13996),
    (0.1, [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500], 20431),
])
def test_cifar10_profile(imb_factor, counts, total):
    profile = get_img_num_per_cls(50000 / 10, 10, "exp", imb_factor)
    assert profile == counts and sum(profile) == total


CIFAR100_RHO100 = [
    500, 477, 455, 434, 415, 396, 378, 361, 344, 328, 314, 299, 286, 273, 260, 248, 237, 226,
    216, 206, 197, 188, 179, 171, 163, 156, 149, 142, 135, 129, 123, 118, 112, 107, 102, 98, 93,
    89, 85, 81, 77, 74, 70, 67, 64, 61, 58, 56, 53, 51, 48, 46, 44, 42, 40, 38, 36, 35, 33, 32,
    30, 29, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 15, 14, 13, 13, 12, 12, 11, 11,
    10, 10, 9, 9, 8, 8, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5]


@pytest.mark.parametrize("imb_factor, total, smallest, shots", [
    (0.01, 10847, 5, (35, 35, 30)), (0.02, 12608, 10, (41, 41, 18)), (0.1, 19573, 50, (69, 31, 0)),
])
def test_cifar100_profile(imb_factor, total, smallest, shots):
    profile = get_img_num_per_cls(50000 / 100, 100, "exp", imb_factor)
    assert sum(profile) == total and max(profile) == 500 and min(profile) == smallest
    split = (sum(n > 100 for n in profile), sum(20 <= n <= 100 for n in profile),
             sum(n < 20 for n in profile))
    assert split == shots
    if imb_factor == 0.01:
        assert profile == CIFAR100_RHO100


@pytest.mark.parametrize("imb_factor, counts", [
    (0.01, [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]),
    (0.02, [1000, 647, 419, 271, 175, 113, 73, 47, 30, 20]),
    (0.1, [1000, 774, 599, 464, 359, 278, 215, 166, 129, 100]),
])
def test_svhn_profile(imb_factor, counts):
    assert get_img_num_per_cls(1000, 10, "exp", imb_factor) == counts


def test_step_and_uniform_profiles():
    assert get_img_num_per_cls(5000, 10, "step", 0.01) == [5000] * 5 + [50] * 5
    assert get_img_num_per_cls(500, 100, "step", 0.1) == [500] * 50 + [50] * 50
    assert get_img_num_per_cls(5000.0, 10, "none", 0.01) == [5000] * 10


@pytest.mark.parametrize("value, message", [
    (100, r"--imb_factor .*got 100: did you mean 0\.01\?"),
    (50, r"got 50: did you mean 0\.02\?"),
    (0, r"--imb_factor .*\(0, 1\].*got 0$"),
    (-0.01, r"got -0\.01$"),
])
def test_bad_imb_factor(value, message):
    with pytest.raises(ValueError, match=message):
        check_imb_factor(value)


def test_datasets_validate_imb_factors_first(tmp_path):
    with pytest.raises(ValueError, match=r"--imb_factor .*did you mean 0\.01\?"):
        ImbalanceCIFAR10(tmp_path, imb_factor=100)
    with pytest.raises(ValueError, match=r"--imb_factor .*did you mean 0\.01\?"):
        ImbalanceSVHN(tmp_path, imb_factor=100)
    check_imb_factor(1)


# ---------------------------------------------------------------- unlabeled size rule (docs/protocols.md#unlabeled-set)

@pytest.mark.parametrize("labeled_total, imb_factor_unlabel, counts", [
    (13996, 1, [6998] * 10),
    (13996, 1 / 25, [21651, 15138, 10587, 7403, 5176, 3619, 2530, 1769, 1237, 863]),
    (13996, 0.02, [24999, 16186, 10477, 6784, 4390, 2843, 1839, 1189, 771, 496]),
    (13996, 0.01, [28208, 16909, 10133, 6074, 3639, 2180, 1306, 781, 467, 278]),
    (12406, 0.01, [24999, 14984, 8983, 5384, 3228, 1934, 1156, 693, 415, 249]),
    (2795, 1, [1397] * 10),
    (2795, 0.02, [4998, 3234, 2093, 1355, 876, 565, 364, 236, 153, 96]),
])
def test_unlabeled_rule_spec_examples(labeled_total, imb_factor_unlabel, counts):
    assert 5 * labeled_total in (69980, 62030, 13975)
    result = unlabeled_num_per_cls(labeled_total, 10, imb_factor_unlabel)
    assert result == counts and 5 * labeled_total - 10 <= sum(result) <= 5 * labeled_total


@pytest.mark.parametrize("num_labeled, cls_num, imb_factor_unlabel, factor, counts", [
    # T=500, b=250, u=[250, 125], r=500/375 -> [333, 166]
    (100, 2, 0.5, 5, [333, 166]),
    # T=50, b=16, u=[16, 8, 4], r=50/28 -> [28, 14, 7]
    (10, 3, 0.25, 5, [28, 14, 7]),
    # T=20, b=10, uniform
    (10, 2, 1.0, 2, [10, 10]),
])
def test_unlabeled_rule_by_hand(num_labeled, cls_num, imb_factor_unlabel, factor, counts):
    assert unlabeled_num_per_cls(num_labeled, cls_num, imb_factor_unlabel, factor) == counts


# ---------------------------------------------------------------- long-tailed CIFAR

SYNTH_RHO100 = [100, 59, 35, 21, 12, 7, 4, 2, 1, 1]  # img_max = 1000 / 10


def test_cifar10_lt_counts_and_layout(cifar10_root):
    ds = ImbalanceCIFAR10(cifar10_root, imb_factor=0.01)
    assert ds.get_cls_num_list() == SYNTH_RHO100 and len(ds) == 242
    assert ds.data.dtype == np.uint8 and ds.data.shape == (242, 32, 32, 3)
    assert all(type(t) is int for t in ds.targets) and ds.targets[:100] == [0] * 100
    assert ds.classes[0] == "airplane" and ds.num_classes == 10
    img, target = ds[150]
    assert isinstance(img, Image.Image) and img.size == (32, 32) and target == ds.targets[150]
    np.testing.assert_array_equal(np.asarray(img), ds.data[150])


def test_transforms_are_applied(cifar10_root):
    ds = ImbalanceCIFAR10(cifar10_root, imb_factor=0.1, transform=lambda im: torch.tensor(
        np.asarray(im)).permute(2, 0, 1), target_transform=lambda t: t + 100)
    img, target = ds[0]
    assert img.shape == (3, 32, 32) and target == 100


@pytest.mark.parametrize("rand_number", [0, 7])
@pytest.mark.parametrize("imb_type, imb_factor", [("exp", 0.01), ("step", 0.1), ("exp", 0.5)])
def test_subset_equals_upstream_procedure(cifar10_root, rand_number, imb_type, imb_factor):
    images, labels = raw_cifar10(cifar10_root, CIFAR_TRAIN_FILES)
    counts = get_img_num_per_cls(len(labels) / 10, 10, imb_type, imb_factor)
    np.random.seed(rand_number)
    expected = []
    for cls in range(10):
        idx = np.where(labels == cls)[0]
        np.random.shuffle(idx)
        expected.append(idx[:counts[cls]])
    expected = np.concatenate(expected)
    np.random.seed(999)  # the dataset must not depend on the RNG state before it
    ds = ImbalanceCIFAR10(cifar10_root, imb_type, imb_factor, rand_number)
    np.testing.assert_array_equal(ds.data, images[expected])
    assert ds.targets == labels[expected].tolist() and ds.get_cls_num_list() == counts


def test_subset_is_deterministic_and_changes_with_rand_number(cifar10_root):
    first, again = (ImbalanceCIFAR10(cifar10_root, rand_number=3) for _ in range(2))
    other = ImbalanceCIFAR10(cifar10_root, rand_number=4)
    np.testing.assert_array_equal(first.data, again.data)
    assert first.get_cls_num_list() == other.get_cls_num_list()
    assert not np.array_equal(first.data, other.data)


def test_cifar10_test_split_untouched(cifar10_root):
    images, labels = raw_cifar10(cifar10_root, ["test_batch"])
    ds = ImbalanceCIFAR10(cifar10_root, imb_factor=0.01, train=False)
    np.testing.assert_array_equal(ds.data, images)
    assert ds.targets == labels.tolist() and ds.get_cls_num_list() == [20] * 10


def test_cifar100_lt(cifar100_root):
    ds = ImbalanceCIFAR100(cifar100_root, imb_factor=0.1)
    assert ds.get_cls_num_list() == get_img_num_per_cls(10, 100, "exp", 0.1)
    assert len(ds) == 346 and ds.num_classes == 100 and ds.classes[99] == "fine_99"
    test = ImbalanceCIFAR100(cifar100_root, imb_factor=0.1, train=False)
    assert test.get_cls_num_list() == [2] * 100


def test_reads_official_python2_release(cifar10_root_bytes):
    images, labels = raw_cifar10(cifar10_root_bytes, CIFAR_TRAIN_FILES)
    ds = ImbalanceCIFAR10(cifar10_root_bytes, imb_factor=1.0)
    assert ds.classes[9] == "truck" and ds.get_cls_num_list() == [10] * 10
    np.random.seed(0)
    np.testing.assert_array_equal(ds.data, images[upstream_draw(labels, range(10), [10] * 10)])


def test_checksum_warning_once(cifar10_root, tmp_path):
    shutil.copytree(os.path.join(cifar10_root, "cifar-10-batches-py"),
                    tmp_path / "cifar-10-batches-py")
    with pytest.warns(ChecksumWarning, match="differ from the official release"):
        ImbalanceCIFAR10(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChecksumWarning)
        ImbalanceCIFAR10(tmp_path)


def test_missing_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        ImbalanceCIFAR10(tmp_path)
    message = str(error.value)
    for part in (os.path.join(str(tmp_path), "cifar-10-batches-py", "data_batch_1"),
                 "batches.meta", "download=True", "shared/data/expand_cifar10.py"):
        assert part in message
    with pytest.raises(FileNotFoundError, match="cifar-100-python/train.*download=True"):
        ImbalanceCIFAR100(tmp_path)
    with pytest.raises(FileNotFoundError, match="test_32x32.mat.*download=True"):
        ImbalanceSVHN(tmp_path, split="test")
    with pytest.raises(FileNotFoundError, match="ti_80M_selected.pickle.*cifar10_train"):
        load_unlabeled_pool(tmp_path, "tinyimages")


# ---------------------------------------------------------------- long-tailed SVHN

SVHN_RHO100_BY_DIGIT = [10, 60, 60, 60, 60, 60, 60, 46, 27, 16]  # 60 train images per digit


def test_svhn_head_is_digit_1_and_tail_digit_0(svhn_root):
    ds = ImbalanceSVHN(svhn_root, imb_factor=0.01)
    assert ds.get_cls_num_list() == SVHN_RHO100_BY_DIGIT
    assert ds.labels is ds.targets and set(ds.targets) == set(range(10))
    assert ds.data.shape == (459, 32, 32, 3) and ds.data.dtype == np.uint8


@pytest.mark.parametrize("rand_number", [0, 5])
def test_svhn_subset_equals_upstream_procedure(svhn_root, rand_number):
    images, labels = raw_svhn(svhn_root, "train")
    np.random.seed(rand_number)
    expected = upstream_draw(labels, SVHN_ORDER, get_img_num_per_cls(1000, 10, "exp", 0.02))
    ds = ImbalanceSVHN(svhn_root, imb_factor=0.02, rand_number=rand_number)
    np.testing.assert_array_equal(ds.data, images[expected])
    assert ds.targets == labels[expected].tolist()


def test_svhn_test_split_untouched(svhn_root):
    images, labels = raw_svhn(svhn_root, "test")
    ds = ImbalanceSVHN(svhn_root, imb_factor=0.01, split="test")
    np.testing.assert_array_equal(ds.data, images)
    assert ds.labels == labels.tolist() and ds.get_cls_num_list() == [10] * 10
    with pytest.raises(ValueError, match="split"):
        ImbalanceSVHN(svhn_root, split="validation")


# ---------------------------------------------------------------- pseudo-label files

def test_pseudo_label_formats(tmp_path):
    predictions = np.arange(50) % 7
    order = np.random.default_rng(0).permutation(50)
    wanted = np.array([3, 49, 0, 17])
    npz = write_npz(tmp_path / "p.npz", predictions[order], order)
    upstream = write_upstream_pickle(tmp_path / "p.pickle", predictions)
    for path in (npz, upstream):
        np.testing.assert_array_equal(read_pseudo_labels(path, wanted, 50, 10), predictions[wanted])
    partial = write_npz(tmp_path / "partial.npz", predictions[:10], np.arange(10))
    with pytest.raises(ValueError, match=r"pool indices \[49, 17\].*gen_pseudolabels.py"):
        read_pseudo_labels(partial, wanted, 50, 10)
    with pytest.raises(ValueError, match="50 pseudo-labels for a pool of 60"):
        read_pseudo_labels(upstream, wanted, 60, 10)
    with pytest.raises(ValueError, match="outside"):
        read_pseudo_labels(npz, wanted, 40, 10)
    with pytest.raises(ValueError, match=r"no pseudo-label in 0..2 for pool indices \[3, 17\]"):
        read_pseudo_labels(npz, wanted, 50, 3)


# ---------------------------------------------------------------- semi-supervised CIFAR-10

TI_PER_CLASS = 200


@pytest.fixture(scope="module")
def ti_root(cifar10_root, tmp_path_factory):
    """cifar10_root's batches + a synthetic Tiny Images selection + upstream pseudo-labels."""
    root = tmp_path_factory.mktemp("ti")
    os.symlink(os.path.join(cifar10_root, "cifar-10-batches-py"), root / "cifar-10-batches-py")
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(10), TI_PER_CLASS))
    with open(root / "ti_80M_selected.pickle", "wb") as f:
        pickle.dump({"data": np.random.default_rng(2).integers(0, 256, (len(labels), 32, 32, 3),
                                                               dtype=np.uint8),
                     "extrapolated_targets": labels}, f)
    write_upstream_pickle(root / "pseudo_labeled_cifar.pickle", (labels + 1) % 10)
    return str(root)


@pytest.mark.parametrize("rand_number", [0, 1])
def test_semi_tinyimages_equals_upstream_procedure(ti_root, rand_number):
    images, labels = raw_cifar10(ti_root, CIFAR_TRAIN_FILES)
    with open(os.path.join(ti_root, "ti_80M_selected.pickle"), "rb") as f:
        pool = pickle.load(f)
    counts = get_img_num_per_cls(100, 10, "exp", 0.01)
    np.random.seed(rand_number)
    labeled = upstream_draw(labels, range(10), counts)
    total = 5 * sum(counts)
    base = [int(total // 10 * 0.5 ** (i / 9)) for i in range(10)]
    unlabeled_counts = [int(u * total / sum(base)) for u in base]
    unlabeled = upstream_draw(pool["extrapolated_targets"], range(10), unlabeled_counts)

    ds = SemiSupervisedImbalanceCIFAR10(ti_root, imb_factor=0.01, imb_factor_unlabel=0.5,
                                        rand_number=rand_number)
    pseudo = (pool["extrapolated_targets"][unlabeled] + 1) % 10
    np.testing.assert_array_equal(ds.labeled_indices, labeled)
    np.testing.assert_array_equal(ds.unlabeled_indices, unlabeled)
    np.testing.assert_array_equal(ds.data, np.concatenate([images[labeled],
                                                           pool["data"][unlabeled]]))
    assert ds.targets == labels[labeled].tolist() + pseudo.tolist()
    assert ds.num_labeled == 242 and len(ds) == 242 + sum(unlabeled_counts)
    assert ds.get_cls_num_list() == (np.bincount(labels[labeled], minlength=10)
                                     + np.bincount(pseudo, minlength=10)).tolist()
    supervised = ImbalanceCIFAR10(ti_root, imb_factor=0.01, rand_number=rand_number)
    np.testing.assert_array_equal(ds.data[:ds.num_labeled], supervised.data)


def test_semi_cifar10_train_stand_in(cifar10_root, tmp_path):
    images, labels = raw_cifar10(cifar10_root, CIFAR_TRAIN_FILES)
    pool_order = np.random.default_rng(3).permutation(len(labels))
    pseudo_file = write_npz(tmp_path / "pseudo.npz", (labels[pool_order] + 3) % 10, pool_order)
    kwargs = dict(imb_factor=0.1, imb_factor_unlabel=0.1, unlabeled_source="cifar10_train",
                  pseudo_label_file=pseudo_file, labeled_max=40, unlabeled_max=50)
    ds = SemiSupervisedImbalanceCIFAR10(cifar10_root, rand_number=2, **kwargs)
    labeled, unlabeled = ds.labeled_indices, ds.unlabeled_indices
    assert not set(labeled) & set(unlabeled)
    assert np.bincount(labels[labeled]).tolist() == [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]
    assert np.bincount(labels[unlabeled]).tolist() == [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]
    np.testing.assert_array_equal(ds.data[ds.num_labeled:], images[unlabeled])
    assert ds.targets[ds.num_labeled:] == ((labels[unlabeled] + 3) % 10).tolist()
    assert ds.targets[:ds.num_labeled] == labels[labeled].tolist()

    again = SemiSupervisedImbalanceCIFAR10(cifar10_root, rand_number=2, **kwargs)
    other = SemiSupervisedImbalanceCIFAR10(cifar10_root, rand_number=3, **kwargs)
    np.testing.assert_array_equal(again.data, ds.data)
    assert again.targets == ds.targets and not np.array_equal(other.data, ds.data)


def test_semi_unavailable_counts_error(cifar10_root, tmp_path):
    pseudo_file = write_npz(tmp_path / "pseudo.npz", np.zeros(1000), np.arange(1000))
    with pytest.raises(ValueError, match=r"class 0: asked \d+, available 0.*--unlabeled_max.*"
                                         r"--imb_factor_unlabel"):
        SemiSupervisedImbalanceCIFAR10(cifar10_root, unlabeled_source="cifar10_train",
                                       pseudo_label_file=pseudo_file)
    with pytest.raises(ValueError, match=r"class 0: asked 61, available 60"):
        SemiSupervisedImbalanceCIFAR10(cifar10_root, unlabeled_source="cifar10_train",
                                       pseudo_label_file=pseudo_file, labeled_max=40,
                                       unlabeled_max=61)


def test_semi_pseudo_file_formats_agree(ti_root, tmp_path):
    with open(os.path.join(ti_root, "pseudo_labeled_cifar.pickle"), "rb") as f:
        predictions = pickle.load(f)["extrapolated_targets"]
    npz = write_npz(tmp_path / "p.npz", predictions, np.arange(len(predictions)))
    from_pickle = SemiSupervisedImbalanceCIFAR10(ti_root, imb_factor_unlabel=1)
    from_npz = SemiSupervisedImbalanceCIFAR10(ti_root, imb_factor_unlabel=1,
                                              pseudo_label_file=npz)
    assert from_pickle.targets == from_npz.targets


def test_semi_errors(cifar10_root):
    with pytest.raises(FileNotFoundError, match="pseudo_labeled_cifar.pickle.*gen_pseudolabels"):
        SemiSupervisedImbalanceCIFAR10(cifar10_root, unlabeled_source="cifar10_train")
    with pytest.raises(ValueError, match=r"--imb_factor_unlabel .*did you mean 0\.02\?"):
        SemiSupervisedImbalanceCIFAR10(cifar10_root, imb_factor_unlabel=50)
    with pytest.raises(ValueError, match=r"--imb_factor_unlabel .*got 0$"):
        SemiSupervisedImbalanceSVHN(cifar10_root, imb_factor_unlabel=0)
    with pytest.raises(ValueError, match="unlabeled_source"):
        SemiSupervisedImbalanceCIFAR10(cifar10_root, unlabeled_source="stl10")
    with pytest.raises(ValueError, match="--unlabeled_max .* got -5"):
        SemiSupervisedImbalanceCIFAR10(cifar10_root, unlabeled_max=-5)


def test_semi_test_split(cifar10_root):
    ds = SemiSupervisedImbalanceCIFAR10(cifar10_root, train=False)
    assert len(ds) == ds.num_labeled == 200 and len(ds.unlabeled_indices) == 0


def test_cifar10_train_pool(cifar10_root):
    images, labels = raw_cifar10(cifar10_root, CIFAR_TRAIN_FILES)
    pool_images, pool_labels = load_unlabeled_pool(cifar10_root, "cifar10_train", [0, 5])
    np.testing.assert_array_equal(pool_images, images)
    assert pool_labels[0] == pool_labels[5] == -1
    np.testing.assert_array_equal(np.delete(pool_labels, [0, 5]), np.delete(labels, [0, 5]))
    with pytest.raises(ValueError, match="unlabeled_source"):
        load_unlabeled_pool(cifar10_root, "stl10")


# ---------------------------------------------------------------- semi-supervised SVHN

def test_semi_svhn_equals_upstream_procedure(svhn_root, tmp_path):
    images, labels = raw_svhn(svhn_root, "train")
    extra_images, extra_labels = raw_svhn(svhn_root, "extra")
    pseudo_file = write_upstream_pickle(tmp_path / "pseudo_labeled_svhn.pickle",
                                        (extra_labels + 5) % 10, ground_truth=extra_labels)
    np.random.seed(4)
    labeled = upstream_draw(labels, SVHN_ORDER, get_img_num_per_cls(1000, 10, "exp", 0.01))
    unlabeled = upstream_draw(extra_labels, SVHN_ORDER, [229] * 10)  # T = 5 * 459

    ds = SemiSupervisedImbalanceSVHN(svhn_root, imb_factor=0.01, imb_factor_unlabel=1,
                                     rand_number=4, pseudo_label_file=pseudo_file)
    np.testing.assert_array_equal(ds.labeled_indices, labeled)
    np.testing.assert_array_equal(ds.unlabeled_indices, unlabeled)
    np.testing.assert_array_equal(ds.data, np.concatenate([images[labeled],
                                                           extra_images[unlabeled]]))
    assert ds.labels == labels[labeled].tolist() + ((extra_labels[unlabeled] + 5) % 10).tolist()
    assert ds.get_cls_num_list() == [10 + 229, 60 + 229, 60 + 229, 60 + 229, 60 + 229,
                                     60 + 229, 60 + 229, 46 + 229, 27 + 229, 16 + 229]
    with pytest.raises(ValueError, match=r"class 1: asked \d+, available 300"):
        SemiSupervisedImbalanceSVHN(svhn_root, imb_factor=0.01, imb_factor_unlabel=0.01,
                                    pseudo_label_file=pseudo_file)
    with pytest.raises(FileNotFoundError, match="pseudo_labeled_svhn.pickle"):
        SemiSupervisedImbalanceSVHN(svhn_root)
    pool_images, pool_labels = load_svhn_pool(svhn_root)
    assert pool_images.shape == (3000, 32, 32, 3)
    assert np.bincount(pool_labels).tolist() == [300] * 10


# ---------------------------------------------------------------- real CIFAR-10 (shared copy)

@pytest.mark.realdata
def test_real_cifar10(shared_cifar10_root, tmp_path):
    ds = ImbalanceCIFAR10(shared_cifar10_root, imb_factor=0.01)
    assert ds.get_cls_num_list() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert len(ds) == 12406 and ds.classes[0] == "airplane"
    test = ImbalanceCIFAR10(shared_cifar10_root, imb_factor=0.01, train=False)
    assert test.get_cls_num_list() == [1000] * 10
    _, pool_labels = load_unlabeled_pool(shared_cifar10_root, "cifar10_train")
    pseudo_file = write_npz(tmp_path / "pseudo.npz", pool_labels, np.arange(len(pool_labels)))
    semi = SemiSupervisedImbalanceCIFAR10(
        shared_cifar10_root, imb_factor=0.01, imb_factor_unlabel=0.01,
        unlabeled_source="cifar10_train", pseudo_label_file=pseudo_file, labeled_max=1500,
        unlabeled_max=3000)
    assert semi.get_cls_num_list() == [4500, 2697, 1617, 969, 580, 348, 208, 124, 75, 45]


# ---------------------------------------------------------------- the registry (engine/data/datasets.py)

@pytest.fixture
def registered():
    """``registered(spec)`` adds ``spec`` to engine.data.datasets.DATASETS for one test (the registry has no removal: the
    fixture takes its entries out again, so other tests see the built-in table)."""
    names = []

    def add(spec):
        names.append(spec.name)
        return register(spec)
    yield add
    for name in names:
        DATASETS.unregister(name)


def test_builtin_entries_and_views():
    assert list(DATASETS) == ["cifar10", "cifar100", "svhn", "imagenet", "inat"]
    assert list(IN_MEMORY) == ["cifar10", "cifar100", "svhn"] and sorted(SEMI_SUPERVISED) == ["cifar10", "svhn"]
    assert list(LT_DATASETS) == ["ImageNet_LT", "iNaturalist18"] and LT_DATASETS["ImageNet_LT"] is DATASETS["imagenet"]
    cifar, svhn, inat = DATASETS["cifar10"], DATASETS["svhn"], DATASETS["inat"]
    assert (cifar.image_size, cifar.default_arch, cifar.splits, list(cifar.pools)) == \
        (32, "resnet32", ("train", "test"), ["tinyimages", "cifar10_train"])
    assert svhn.mean == svhn.std == (0.5, 0.5, 0.5) and svhn.splits == ("train", "test", "extra")
    assert (inat.image_size, inat.default_arch, inat.splits, inat.eval_split, inat.in_memory) == \
        (224, "resnet50", ("train", "val"), "val", False)
    assert reference_split_file("iNaturalist18", "val") == os.path.join(
        "imagenet_inat", "data", "iNaturalist18", "iNaturalist18_val.txt")
    with pytest.raises(ValueError, match="unknown --dataset 'places'; choose one of: cifar10, cifar100"):
        DATASETS["places"]
    with pytest.raises(ValueError, match="no default test split file"):
        inat.reference_list_file("test")


def test_spec_builds_the_upstream_classes_subsets(cifar10_root, svhn_root, ti_root):
    """One code path: the registry's sets equal the upstream classes' for the same arguments."""
    kwargs = dict(imb_type="exp", imb_factor=0.02, rand_number=3)
    for name, root, upstream in (("cifar10", cifar10_root, ImbalanceCIFAR10),
                                 ("svhn", svhn_root, ImbalanceSVHN)):
        built, expected = DATASETS[name].build("train", data_path=root, **kwargs), upstream(root, **kwargs)
        np.testing.assert_array_equal(built.data, expected.data)
        assert built.targets == expected.targets
    semi = DATASETS["cifar10"].build_semi(data_path=ti_root, imb_factor_unlabel=1, rand_number=1)
    expected = SemiSupervisedImbalanceCIFAR10(ti_root, imb_factor_unlabel=1, rand_number=1)
    np.testing.assert_array_equal(semi.data, expected.data)
    assert semi.targets == expected.targets and semi.num_labeled == expected.num_labeled
    np.testing.assert_array_equal(semi.unlabeled_indices, expected.unlabeled_indices)


def test_imb_type_choices_and_none_is_balanced(tiny_cifar10, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"--imb_type must be one of exp, step, none \(none: balanced\), got 'expo'"):
        get_img_num_per_cls(100, 10, "expo", 0.1)
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--imb_type", "expo"])
    assert "--imb_type: invalid choice: 'expo'" in capsys.readouterr().err
    assert DATASETS["cifar10"].build("train", data_path=tiny_cifar10, imb_type="none").get_cls_num_list() == [4] * 10
    args = train.build_parser().parse_args(["--imb_type", "none"])
    assert train.RUN.run_name(vars(args)) == "cifar10_resnet32_CE_None_none_0.01_ss_pretrained"  # the run name keeps the value


def test_one_pseudo_label_resolver_prefers_npz(ti_root, tmp_path):
    """The data sets and train_semi.py resolve the default file alike: the .npz if present, else upstream's
    .pickle."""
    for name in ("cifar-10-batches-py", "ti_80M_selected.pickle", "pseudo_labeled_cifar.pickle"):
        os.symlink(os.path.join(ti_root, name), tmp_path / name)
    from_pickle = SemiSupervisedImbalanceCIFAR10(str(tmp_path), imb_factor_unlabel=1)
    with open(tmp_path / "pseudo_labeled_cifar.pickle", "rb") as f:
        pool_predictions = pickle.load(f)["extrapolated_targets"]
    write_npz(tmp_path / "pseudo_labeled_cifar.npz", (pool_predictions + 1) % 10, np.arange(len(pool_predictions)))
    assert DATASETS["cifar10"].pseudo_label_file(str(tmp_path)) == str(tmp_path / "pseudo_labeled_cifar.npz")
    from_npz = SemiSupervisedImbalanceCIFAR10(str(tmp_path), imb_factor_unlabel=1)
    np.testing.assert_array_equal(from_npz.unlabeled_indices, from_pickle.unlabeled_indices)
    assert from_npz.targets[from_npz.num_labeled:] == \
        ((np.asarray(from_pickle.targets[from_pickle.num_labeled:]) + 1) % 10).tolist()


def test_engine_does_not_import_the_root_data_modules():
    """The import graph is a DAG: imbalance_cifar / imbalance_svhn are views over engine, never the reverse."""
    for folder in ("engine", "imagenet_inat"):
        for path in sorted((REPO_ROOT / folder).glob("*.py")):
            imported = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom):
                    imported.add(node.module)
            assert not imported & {"imbalance_cifar", "imbalance_svhn"}, path


# ---------------------------------------------------------------- a new data set is one registration

TINY_PER_CLASS = {"train": 30, "test": 6}


def read_tiny(data_path, split, download):
    """A 3-class, 28x28 synthetic data set: class c is a grey level around 40 + 80 c with noise."""
    labels = np.repeat(np.arange(3), TINY_PER_CLASS[split])
    noise = np.random.default_rng(len(labels)).integers(0, 40, size=(len(labels), 28, 28, 3))
    return (40 + 80 * labels[:, None, None, None] + noise).astype(np.uint8), labels, ["dark", "grey", "light"]


@pytest.mark.parametrize("loader", ["device", "torch"])
def test_registered_in_memory_dataset_trains_with_its_long_tail(registered, tmp_path, loader, one_thread):
    spec = registered(DatasetSpec("tiny28", 3, 28, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), read=read_tiny))
    assert "tiny28" in IN_MEMORY and "tiny28" in train.build_parser()._option_string_actions["--dataset"].choices
    crop = torch_transforms(spec, train=True)(Image.fromarray(read_tiny("", "test", False)[0][0]))
    assert crop.shape == (3, 28, 28)  # RandomCrop(image_size, padding=4), not CIFAR's 32
    summary = train.main(["--dataset", "tiny28", "--data_path", str(tmp_path), "--imb_factor", "0.1", "--epochs", "1",
                          "-b", "16", "-a", "resnet20", "--device", "cpu", "--seed", "0", "--loader", loader, "-j", "0",
                          "--root_log", str(tmp_path / "log"), "--root_model", str(tmp_path / "ckpt")])
    name = "tiny28_resnet20_CE_None_exp_0.1_ss_pretrained"
    ckpt = load_checkpoint(str(tmp_path / "ckpt" / name / "ckpt.pth.tar"))
    assert ckpt["cls_num_list"] == get_img_num_per_cls(30, 3, "exp", 0.1) == [30, 9, 3]
    assert ckpt["num_classes"] == 3 and ckpt["state_dict"]["fc.weight"].shape == (3, 64)
    final = json.load(open(tmp_path / "log" / name / "final.json"))
    assert final["last"]["samples"] == 18 and len(final["last"]["per_class"]) == 3
    assert summary["last"]["top1"] == final["last"]["top1"]


def test_places_lt_is_one_registration(registered, tmp_path):
    """The entry a user adds for Places-LT (Liu et al. 2019): the split-file scripts take it from the registry."""
    spec = registered(DatasetSpec(
        "places", 365, 224, IMAGENET_MEAN, IMAGENET_STD, eval_split="val", default_arch="resnet152",
        list_name="Places_LT", color_jitter=0.4,
        list_files={"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"}))
    assert LT_DATASETS["Places_LT"] is spec and "Places_LT" in imagenet_main.build_parser()._option_string_actions[
        "--dataset"].choices
    assert reference_split_file("Places_LT", "test") == os.path.join("imagenet_inat", "data", "Places_LT",
                                                                     "Places_LT_test.txt")
    values = pretrain_rot.source_defaults(vars(pretrain_rot.build_parser().parse_args(["--dataset", "places"])))
    assert (values["arch"], values["loader"], values["eval_batch_size"]) == ("resnet152", "torch", 256)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.jpg")
    (tmp_path / "val.txt").write_text("a.jpg 364\n")
    data = spec.build("val", data_path=str(tmp_path), list_file=str(tmp_path / "val.txt"), crop_size=24,
                      resize_size=28, num_classes=365)
    image, label = data[0]
    assert image.shape == (3, 24, 24) and label == 364 and len(data.get_cls_num_list()) == 365
