"""Shared pytest fixtures: small synthetic data sets in the official file layouts.

Every fixture is session-scoped, returns the data root as a ``str`` and must be treated as
read-only (copy or symlink it to add files). Synthetic images are learnable: each class has its
own mean colour plus uniform noise.

* ``cifar10_root``: ``cifar-10-batches-py`` with str keys (as shared/data/expand_cifar10.py
  writes): 100 train images per class (1,000, five batches of 200), 20 test images per class.
* ``cifar10_root_bytes``: the same layout pickled like the official Python 2 release (protocol 2,
  keys and strings as Python 2 ``str``, ``numpy.core.multiarray._reconstruct``): 10 train and 5
  test images per class.
* ``cifar100_root``: ``cifar-100-python`` (train/test/meta, ``fine_labels``): 10 train and 2 test
  images per class.
* ``svhn_root``: ``{train,test,extra}_32x32.mat`` (X (32, 32, 3, N), y (N, 1) in 1..10, 10 = digit
  0): 60 train, 10 test and 300 extra images per digit.
* ``shared_cifar10_root``: the real CIFAR-10 (JPEG copy) expanded from ../shared/data by its
  expand_cifar10.py (about 15 s, once per session); skipped when that folder is absent.

Tests marked ``realdata`` (pytest.ini) run only when LTR_REALDATA=1 (.ci/run sets it).
"""
import io
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from engine.train.runlog import RunLog

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("LTR_REALDATA") == "1":
        return
    skip = pytest.mark.skip(reason="uses the real CIFAR-10: set LTR_REALDATA=1 to run it")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def make_images(labels, num_classes, seed):
    """uint8 (N, 32, 32, 3): class mean colour (fixed per class) + uniform noise in [-32, 32]."""
    colours = np.random.default_rng(12345).integers(32, 224, size=(num_classes, 3),
                                                    dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-32, 33, size=(len(labels), 32, 32, 3),
                                                 dtype=np.int16)
    return (colours[labels][:, None, None, :] + noise).astype(np.uint8)


def balanced_labels(num_classes, per_class, seed):
    """``per_class`` labels of each class in a fixed random order (int64)."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def cifar_rows(images):
    """HWC images -> the release's (N, 3072) rows (channel-major, CHW flattened)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


class _Python2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing ``bytes`` as Python 2 ``str`` (BINSTRING opcodes), which is
    how the official CIFAR batches store keys, strings and array buffers."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def python2_pickle_bytes(obj):
    """``obj`` pickled like Python 2 + numpy 1.x would (bytes become Python 2 str)."""
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_cifar10(folder, per_class_train, per_class_test, seed, python2_bytes=False):
    """Write data_batch_1..5, test_batch and batches.meta under ``folder``."""
    folder.mkdir(parents=True)
    train = balanced_labels(10, per_class_train, seed)
    test = balanced_labels(10, per_class_test, seed + 1)
    size = len(train) // 5
    chunks = [(f"data_batch_{k + 1}", train[k * size:(k + 1) * size], seed + 2 + k)
              for k in range(5)] + [("test_batch", test, seed + 7)]
    key = (lambda s: s.encode()) if python2_bytes else str
    dumps = python2_pickle_bytes if python2_bytes else (lambda o: pickle.dumps(o, protocol=4))
    for name, labels, image_seed in chunks:
        batch = {key("batch_label"): key(name), key("labels"): labels.tolist(),
                 key("data"): cifar_rows(make_images(labels, 10, image_seed)),
                 key("filenames"): [key(f"img_{i:05d}.png") for i in range(len(labels))]}
        (folder / name).write_bytes(dumps(batch))
    meta = {key("label_names"): [key(c) for c in CIFAR10_CLASSES],
            key("num_cases_per_batch"): size, key("num_vis"): 3072}
    (folder / "batches.meta").write_bytes(dumps(meta))


REAL_FIGURES = RunLog.figures


@pytest.fixture(scope="session", autouse=True)
def no_figures():
    """Drawing a run's figures at its end costs seconds (matplotlib) and would multiply the suite's time: runs made
    by tests draw none, except with the ``drawing_figures`` fixture (tests/test_figures.py), which puts the real
    step back for a module."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(RunLog, "figures", lambda self, step=None: None)
        yield


@pytest.fixture(scope="module")
def drawing_figures():
    with pytest.MonkeyPatch.context() as m:
        m.setattr(RunLog, "figures", REAL_FIGURES)
        yield


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10")
    write_cifar10(root / "cifar-10-batches-py", 100, 20, seed=0)
    return str(root)


@pytest.fixture(scope="session")
def cifar10_root_bytes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10_bytes")
    write_cifar10(root / "cifar-10-batches-py", 10, 5, seed=100, python2_bytes=True)
    return str(root)


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar100")
    folder = root / "cifar-100-python"
    folder.mkdir()
    for split, per_class, seed in (("train", 10, 200), ("test", 2, 201)):
        labels = balanced_labels(100, per_class, seed)
        entry = {"batch_label": split, "fine_labels": labels.tolist(),
                 "coarse_labels": (labels // 5).tolist(),
                 "data": cifar_rows(make_images(labels, 100, seed)),
                 "filenames": [f"img_{i:05d}.png" for i in range(len(labels))]}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=4))
    meta = {"fine_label_names": [f"fine_{i}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=4))
    return str(root)


@pytest.fixture(scope="session")
def svhn_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("svhn")
    for split, per_class, seed in (("train", 60, 300), ("test", 10, 301), ("extra", 300, 302)):
        digits = balanced_labels(10, per_class, seed)
        scipy.io.savemat(root / f"{split}_32x32.mat", {
            "X": np.ascontiguousarray(make_images(digits, 10, seed).transpose(1, 2, 3, 0)),
            "y": np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]})
    return str(root)


@pytest.fixture(scope="session")
def shared_cifar10_root(tmp_path_factory):
    script, archive = SHARED_DATA / "expand_cifar10.py", SHARED_DATA / "cifar10_jpeg75.npz"
    if not (script.is_file() and archive.is_file()):
        pytest.skip(f"real CIFAR-10 copy absent: no {archive.name} / {script.name} in "
                    f"{SHARED_DATA}")
    root = tmp_path_factory.mktemp("shared_cifar10")
    subprocess.run([sys.executable, str(script), str(root)], check=True, capture_output=True)
    return str(root)


@pytest.fixture
def one_thread():
    """One intra-op thread: the tiny models of a test run fastest so on two shared cores (no oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_cifar10(tmp_path_factory):
    """CIFAR-10 layout with 4 training and 4 test images per class (40 with --imb_type none)."""
    root = tmp_path_factory.mktemp("tiny_cifar10")
    write_cifar10(root / "cifar-10-batches-py", 4, 4, seed=7)
    return str(root)
