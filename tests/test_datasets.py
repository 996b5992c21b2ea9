"""Long-tailed and semi-supervised CIFAR / SVHN construction (SPEC §2.1, §2.2)."""
import os
import pickle
import shutil
import warnings

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

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


# ---------------------------------------------------------------- profiles (SPEC §2.1)

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


# ---------------------------------------------------------------- unlabeled size rule (SPEC §2.2)

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
