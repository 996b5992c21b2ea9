"""Exact resume with DataLoader workers: k epochs + --resume reach the bit-identical state of an unbroken run
(weights, optimizer, MoCo's queue and pointer, the logged records) for train.py, pretrain_rot.py and
train_semi.py with --loader torch and for pretrain_moco.py; the torch loader's batches depend on (seed, epoch)
alone, not on the epochs before nor on the number of workers."""
import glob
import json
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T

import pretrain_moco
import pretrain_rot
import train
import train_semi
from engine.data.datafiles import CIFAR10, read_cifar
from engine.data.imagesets import ImageArrayDataset
from engine.data.loaders import SeededSampler, TorchLoader
from engine.data.pseudolabel_files import write_pseudo_labels
from engine.data.samplers import ClassAwareSampler, WeightedSampler, sqrt_sampler
from engine.train import distributed
from engine.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_identical(a, b, where="checkpoint"):
    """Bit-identical nested checkpoint content: tensors by torch.equal, the rest by ==."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def records(root):
    """The run's metrics.jsonl records without their timings."""
    (path,) = glob.glob(str(root / "log" / "*" / "metrics.jsonl"))
    lines = [json.loads(line) for line in open(path)]
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in lines]


def the_checkpoint(root, pattern):
    (path,) = glob.glob(str(root / pattern))
    return path


def assert_same_state(path_a, path_b):
    """Two checkpoints hold the same run state: everything but the flags (folders, --resume) they were run with."""
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    assert a.pop("args") != b.pop("args")
    for ckpt in (a, b):  # the epoch records carry their timings
        ckpt["records"] = [{k: v for k, v in r.items() if not k.startswith("time")} for r in ckpt["records"]]
    assert_identical(a, b)


def assert_resumed_run_is_the_unbroken_one(run, root, pattern, epochs, split):
    """``run(folder, epochs, *extra)`` for ``epochs`` in one go, and for ``split`` epochs then the rest from the
    checkpoint ``pattern`` (under the folder) of the first part: identical checkpoints and records."""
    run(root / "unbroken", epochs)
    run(root / "resumed", split)
    first = the_checkpoint(root / "resumed", pattern.format(epochs=split))
    run(root / "resumed", epochs, "--resume", first)
    assert_same_state(the_checkpoint(root / "unbroken", pattern.format(epochs=epochs)),
                      the_checkpoint(root / "resumed", pattern.format(epochs=epochs)))
    assert records(root / "unbroken") == records(root / "resumed")


# -- the loader -----------------------------------------------------------------------------------------
def jitter_dataset(n=24):
    """Images whose batches show every random draw: torchvision's crop and flip (torch) and a Python-random
    brightness (the ``random`` module, as MoCo's blur)."""
    images = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    python_random = T.Lambda(lambda x: x * random.uniform(0.5, 1.5))
    transform = T.Compose([T.RandomCrop(8, padding=2), T.RandomHorizontalFlip(), T.ToTensor(), python_random])
    return ImageArrayDataset(images, np.arange(n) % 3, ["a", "b", "c"], transform=transform)


SAMPLERS = {"default": lambda labels: None,
            "class_aware": lambda labels: ClassAwareSampler(labels, seed=5, samples_per_class=2),
            "weighted": lambda labels: WeightedSampler(np.linspace(1, 3, len(labels)), seed=5),
            "sqrt": lambda labels: sqrt_sampler(labels, seed=5)}


def epoch_batches(workers, epochs, sampler="default"):
    dataset = jitter_dataset()
    loader = TorchLoader(dataset, batch_size=5, device=torch.device("cpu"), train=True, workers=workers, seed=5,
                         sampler=SAMPLERS[sampler](dataset.targets))
    out = {}
    for epoch in epochs:
        loader.set_epoch(epoch)
        out[epoch] = [(x, y) for x, y in loader]
    return out


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_torch_loader_epoch_depends_on_seed_and_epoch_only(sampler):
    """Epoch 2 alone (a resumed run) equals epoch 2 after epochs 0 and 1, with 0 or 2 persistent workers."""
    unbroken = epoch_batches(0, [0, 1, 2], sampler)
    assert_same_batches(epoch_batches(0, [2], sampler)[2], unbroken[2])
    assert_same_batches(epoch_batches(2, [0, 1, 2], sampler)[2], unbroken[2])
    assert_same_batches(epoch_batches(2, [2], sampler)[2], unbroken[2])
    assert not torch.equal(unbroken[1][0][0], unbroken[2][0][0])


def test_torch_loader_draws_each_sample_anew_and_leaves_the_global_generators_alone():
    """Weighted drawing repeats an index: each occurrence is augmented on its own; the loader's draws (workers=0:
    in this process) leave torch's and Python's global generator states as they were."""
    dataset = jitter_dataset()
    weights = np.full(len(dataset), 1e-9)
    weights[0] = 1.0  # nearly every draw is image 0
    loader = TorchLoader(dataset, batch_size=len(dataset), device=torch.device("cpu"), train=True, workers=0,
                         seed=1, sampler=WeightedSampler(weights, seed=1))
    torch.manual_seed(3)
    random.seed(3)
    before = torch.get_rng_state(), random.getstate()
    (x, y), = list(loader)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    views = x[y == 0]
    assert len(views) == len(dataset)
    assert len({tuple(v.flatten().tolist()) for v in views}) == len(views)  # the brightness factor differs


def test_samples_keep_their_seed_whatever_the_number_of_processes(monkeypatch):
    """Rank r of W holds positions r, r + W, ... of the epoch's order, each with the seed a single process gives
    that position."""
    def pairs(rank, world):
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        sampler = SeededSampler(ClassAwareSampler(np.arange(30) % 4, seed=2), seed=9)
        sampler.set_epoch(4)
        return list(sampler)

    single = pairs(0, 1)
    assert len({seed for _, seed in single}) == 30
    for r in range(3):
        assert pairs(r, 3) == single[r::3]


# -- the scripts --------------------------------------------------------------------------------------
def train_flags(root, out, epochs, *extra):
    return ["--data_path", root, "--epochs", str(epochs), "-b", "16",
            "--root_log", str(out / "log"), "--root_model", str(out / "ckpt"), "--device", "cpu", "--seed", "3",
            "--arch", "resnet20", "--loader", "torch", *extra]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_train_torch_loader_resume_is_exact(tiny_cifar10, tmp_path, workers):
    run = lambda out, epochs, *extra: train.main(train_flags(tiny_cifar10, out, epochs, "--imb_type", "none",
                                                            "-j", workers, *extra))
    assert_resumed_run_is_the_unbroken_one(run, tmp_path, "ckpt/*/ckpt.pth.tar", 2, 1)


def test_train_torch_loader_gives_one_run_for_any_worker_count(tiny_cifar10, tmp_path):
    for workers in ("0", "2"):
        train.main(train_flags(tiny_cifar10, tmp_path / workers, 2, "--imb_type", "none", "-j", workers))
    assert_same_state(the_checkpoint(tmp_path / "0", "ckpt/*/ckpt.pth.tar"),
                      the_checkpoint(tmp_path / "2", "ckpt/*/ckpt.pth.tar"))
    assert records(tmp_path / "0") == records(tmp_path / "2")


def test_pretrain_rot_torch_loader_resume_is_exact(tiny_cifar10, tmp_path):
    run = lambda out, epochs, *extra: pretrain_rot.main(["--dataset", "cifar10", "--imb_type", "none",
                                                         *train_flags(tiny_cifar10, out, epochs, "-j", "2", *extra)])
    assert_resumed_run_is_the_unbroken_one(run, tmp_path, "ckpt/*/ckpt.pth.tar", 2, 1)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_pretrain_moco_resume_is_exact(tiny_cifar10, tmp_path, workers):
    """Queue, pointer, both encoders and SGD state; Split-BN makes the key batch's shuffle (torch's global
    generator, drawn in this process next to the loader's own draws with -j 0) count."""
    def run(out, epochs, *extra):
        pretrain_moco.main(["--dataset", "cifar10", "--data", tiny_cifar10, "--imb_type", "none", "-a", "resnet20",
                            "--device", "cpu", "--seed", "3", "-j", workers, "--root_path", str(out / "moco"),
                            "--root_log", str(out / "log"), "--epochs", str(epochs), "-p", "1", "-b", "20",
                            "--moco-k", "60", "--moco-dim", "8", "--bn-splits", "2", *extra])
    assert_resumed_run_is_the_unbroken_one(run, tmp_path, "moco/cifar10/checkpoint/moco_ckpt_{epochs:04d}.pth.tar",
                                           3, 1)
    state = load_checkpoint(the_checkpoint(tmp_path / "resumed", "moco/cifar10/checkpoint/moco_ckpt_0003.pth.tar"))
    assert state["state_dict"]["module.queue_ptr"].item() == 3 * 2 * 20 % 60


def test_train_semi_torch_loader_resume_is_exact(cifar10_root, tmp_path):
    """D_L + D_U (pseudo-labels: the true labels of the CIFAR-10 training pool)."""
    _, labels, _ = read_cifar(cifar10_root, CIFAR10, True)
    pseudo = str(tmp_path / "pseudo.npz")
    write_pseudo_labels(pseudo, labels, np.ones(len(labels)), "test", labels)

    def run(out, epochs, *extra):
        train_semi.main(["--dataset", "cifar10", "--imb_factor", "0.1", "--imb_factor_unlabel", "0.1",
                         "--unlabeled_source", "cifar10_train", "--labeled_max", "8", "--unlabeled_max", "12",
                         "--pseudo_label_file", pseudo, *train_flags(cifar10_root, out, epochs, "-j", "2", *extra)])
    assert_resumed_run_is_the_unbroken_one(run, tmp_path, "ckpt/*/ckpt.pth.tar", 2, 1)
