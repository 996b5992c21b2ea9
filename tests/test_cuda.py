"""The project's CUDA paths, each against its CPU or eager counterpart: marked ``cuda`` and skipped without a GPU.

Run by the GPU check (``bench/gpu_check.py``, stage ``tests``) as ``pytest -m cuda tests/test_cuda.py``:
(a) the device loader on CUDA: batches equal, image for image, the CPU's crop/flip of the same epoch plan; orders
    are permutations, crop offsets uniform in [0, 2*pad], flips Bernoulli(1/2), class-balanced draws follow their
    weights (chi-square tests); (seed, epoch) redraws the same epoch, so a resume stays exact on the GPU;
(b) the compiled step (``default`` and ``reduce-overhead``) against eager: loss, logits and gradients, one graph per
    batch shape, no recompilation when DRW changes the class weights in place, CUDA graphs really used;
(c) bf16 autocast training steps: finite and close to fp32;
(d) evaluation on CUDA equals evaluation on the CPU for the same weights;
(e) a one-process NCCL group initialises, all_reduce works, DDP trains;
(f) checkpoints written on CUDA load on the CPU and back, and the resumed run continues exactly;
(g) no host synchronisation inside the training loop (``torch.cuda.set_sync_debug_mode("error")`` over the steps).
"""
import copy
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._dynamo.utils import counters

import losses
import models
import train
from engine.data import augment
from engine.train.checkpoint import load_checkpoint, load_model_weights
from engine.data.loaders import DeviceLoader
from engine.eval.metrics import collect_logits, evaluate
from engine.train.runlog import RunLog
from engine import config
from engine.methods import Classification
from engine.train.trainer import LoopConfig, Trainer
from models.resnet_cifar import NormedLinear

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device (torch.cuda.is_available() is False)")]

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fp32_math():
    """Plain fp32 convolutions and matrix products (no TF32), so that CUDA and CPU/eager results agree to ~1e-6."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def deterministic_cudnn():
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def random_images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def learnable_images(n, num_classes, seed):
    """uint8 (n, 32, 32, 3) images whose class shows as a fixed colour under noise, and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    colours = np.random.default_rng(1234).integers(32, 224, (num_classes, 3))
    return (colours[labels][:, None, None, :] + rng.integers(-32, 33, (n, 32, 32, 3))).astype(np.uint8), labels


def cuda_loader(images, labels, **kw):
    kw.setdefault("train", True)
    kw.setdefault("batch_size", 16)
    return DeviceLoader(images, labels, device=CUDA, mean=MEAN, std=STD, **kw)


def chi2_pvalue(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """P(chi-square with len - 1 degrees of freedom >= the statistic): the upper regularised gamma function."""
    stat = ((observed.double() - expected.double()) ** 2 / expected.double()).sum()
    return torch.special.gammaincc(torch.tensor((len(observed) - 1) / 2, dtype=torch.float64), stat / 2).item()


def tiny_model(num_classes=4, use_norm=False):
    """Conv-BN-ReLU-pool and a linear head (the cosine head of LDAM runs with ``use_norm``)."""
    torch.manual_seed(0)
    head = NormedLinear(8, num_classes) if use_norm else nn.Linear(8, num_classes)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def trainer_args(**overrides):
    """train.py's defaults (lr, schedule, DRW epoch...) with ``overrides``; the progress bar never reads the device
    (print_freq beyond any epoch here), as the sync test needs."""
    args = train.build_parser().parse_args([])
    args.print_freq = 10 ** 6
    vars(args).update(overrides)
    return args


def make_trainer(folder, model, loader, args, counts, loss_type="CE", rule="None", compile_mode=None,
                 ckpt_dir=None, meta=None):
    """The Trainer that train.py builds (loss, rule, SGD), on ``model`` (already on CUDA) and ``loader``."""
    hparams = config.registry_kwargs(losses.LOSSES, loss_type, args)
    criterion = losses.build_loss(loss_type, counts, **hparams).to(CUDA)
    method = Classification(model, criterion, rule_of(rule, counts, args), amp=args.amp, compile_mode=compile_mode)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return Trainer(method, optimizer, loader, config.schedule_from_args(args),
                   LoopConfig(args.epochs, 0, args.print_freq), RunLog(str(folder), None, tensorboard=False),
                   ckpt_dir, meta or {})


def rule_of(rule, counts, args):
    return losses.build_train_rule(rule, counts, **config.registry_kwargs(losses.TRAIN_RULES, rule, args))


# -- (a) the device loader ------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_device_loader_batches_equal_the_cpu_crop_of_the_epoch_plan(channels_last):
    images, labels = random_images(50, 32), np.arange(50) % 10
    loader = cuda_loader(images, labels, seed=11, channels_last=channels_last)
    loader.set_epoch(3)
    order, [(offsets, flips)] = loader._epoch_plan()
    plan = order, offsets, flips
    order, offsets, flips = (t.cpu() for t in plan)
    padded = F.pad(torch.from_numpy(images).permute(0, 3, 1, 2), (4,) * 4)
    crops = augment.crop_flip(padded, order, offsets, flips, 32)
    assert torch.equal(augment.crop_flip(loader.images, *plan, 32).cpu(), crops)  # the uint8 gather, exactly
    batches = list(loader)  # draws the plan again from (seed, epoch)
    assert [x.shape[0] for x, _ in batches] == [16, 16, 16, 2]
    assert all(x.device.type == CUDA.type and y.device.type == CUDA.type for x, y in batches)
    if channels_last:
        assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in batches)
    expected = augment.normalize(crops, *augment.normalization(MEAN, STD, "cpu"))
    torch.testing.assert_close(torch.cat([x for x, _ in batches]).cpu(), expected, rtol=0, atol=1e-5)
    assert torch.equal(torch.cat([y for _, y in batches]).cpu(), torch.as_tensor(labels)[order])


def test_device_loader_orders_are_permutations_and_crops_and_flips_follow_their_distribution():
    n, pad = 20000, 4
    loader = cuda_loader(np.zeros((n, 2, 2, 3), np.uint8), np.zeros(n, np.int64), seed=5, pad=pad)
    offsets, flips, orders = [], [], []
    for epoch in range(3):
        loader.set_epoch(epoch)
        order, [(off, flip)] = loader._epoch_plan()
        assert order.device.type == CUDA.type
        assert torch.equal(torch.sort(order).values, torch.arange(n, device=CUDA))
        orders.append(order.cpu())
        offsets.append(off.cpu())
        flips.append(flip.cpu())
    assert not torch.equal(orders[0], orders[1])
    off, flip = torch.cat(offsets), torch.cat(flips)
    assert off.min() == 0 and off.max() == 2 * pad
    # the (row, column) offset pairs: uniform over the 9 x 9 grid, so each axis is uniform and the two independent
    cells = (2 * pad + 1) ** 2
    joint = torch.bincount(off[:, 0] * (2 * pad + 1) + off[:, 1], minlength=cells)
    assert chi2_pvalue(joint, torch.full((cells,), len(off) / cells)) > 1e-4
    m = len(flip)
    assert abs(flip.sum().item() - m / 2) < 5 * math.sqrt(m / 4)  # Bernoulli(1/2): within 5 standard deviations


def test_device_loader_class_balanced_draws_follow_their_weights():
    counts = [400, 150, 50, 20, 8]
    labels = np.repeat(np.arange(5), counts)
    weights = losses.build_train_rule("Resample", counts).sample_weights(labels)
    loader = cuda_loader(np.zeros((len(labels), 2, 2, 3), np.uint8), labels, sample_weights=weights, seed=2,
                         batch_size=100)
    per_class = torch.zeros(5, dtype=torch.float64)
    per_sample = torch.zeros(len(labels), dtype=torch.float64)
    epochs = 40
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        drawn = torch.cat([y for _, y in loader]).cpu()
        per_class += torch.bincount(drawn, minlength=5)
        per_sample += torch.bincount(loader._epoch_plan()[0].cpu(), minlength=len(labels))
    total = epochs * len(labels)
    p = torch.as_tensor(weights / weights.sum(), dtype=torch.float64)
    class_p = torch.zeros(5, dtype=torch.float64).index_add_(0, torch.as_tensor(labels), p)
    assert per_class.sum() == total
    assert chi2_pvalue(per_class, total * class_p) > 1e-4
    assert chi2_pvalue(per_sample, total * p) > 1e-4
    # Resample's effective-number weights balance the classes: each draws about a fifth of the epoch
    assert torch.allclose(per_class / total, torch.full((5,), 0.2, dtype=torch.float64), atol=0.03)


@pytest.mark.parametrize("weighted", [False, True], ids=["shuffle", "weighted"])
def test_device_loader_redraws_an_epoch_from_seed_and_epoch_alone(weighted):
    images, labels = random_images(40, 8), np.arange(40) % 4
    weights = np.linspace(1.0, 3.0, 40) if weighted else None
    unbroken = cuda_loader(images, labels, seed=9, sample_weights=weights, batch_size=8)
    for epoch in range(4):
        unbroken.set_epoch(epoch)
        seen = [(x.clone(), y.clone()) for x, y in unbroken]
    resumed = cuda_loader(images, labels, seed=9, sample_weights=weights, batch_size=8)  # a new process, at epoch 3
    resumed.set_epoch(3)
    again = list(resumed)
    assert len(again) == len(seen)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(seen, again))
    resumed.set_epoch(2)
    assert not torch.equal(torch.cat([y for _, y in resumed]), torch.cat([y for _, y in seen]))


# -- (b) the compiled step ------------------------------------------------------------------------------------

def step_once(method, x, y):
    """Forward and backward of ``method``'s (compiled) loss; loss, logits and gradients cloned at once: CUDA-graph
    outputs are overwritten by the next replay."""
    params = list(method.model.parameters())
    for p in params:
        p.grad = None
    loss, logits = method._loss(x, y)
    loss.backward()
    return [loss.detach().clone(), logits.detach().clone(), *(p.grad.clone() for p in params)]


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_step_matches_eager_on_cuda(mode, fp32_math):
    counts = [40, 20, 8, 2]
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = (Classification(tiny_model().to(CUDA), losses.build_loss("LDAM", counts).to(CUDA),
                                      compile_mode=m) for m in (None, mode))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 3, 8, 8, generator=g).to(CUDA), torch.randint(0, 4, (n,), generator=g).to(CUDA))
               for n in (16, 6, 10)]
    # reduce-overhead runs each shape as a warm-up call, a CUDA-graph recording, then replays: three rounds, before
    # and after the DRW switch (class weights copied into the loss buffers in place)
    for weights in (None, losses.effective_number_weights(counts, 0.9999)):
        for step in (eager, compiled):
            if weights is not None:
                step.criterion.set_class_weights(weights)
        for x, y in batches * 3:
            expected = step_once(eager, x, y)
            got = step_once(compiled, x, y)
            tolerances = [(1e-4, 1e-5), (1e-4, 1e-4)] + [(1e-3, 1e-4)] * (len(got) - 2)  # conv bias: grad ~ 0
            for a, b, (rtol, atol) in zip(got, expected, tolerances):
                torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    # static shapes: one graph per batch size, none added by the weight change
    assert counters["stats"]["unique_graphs"] == 3
    plain = Classification(copy.deepcopy(eager.model), losses.build_loss("LDAM", counts).to(CUDA))
    assert not torch.allclose(plain.forward(*batches[0])[0], eager.forward(*batches[0])[0])  # the weights did change the loss
    if mode == "reduce-overhead":
        assert counters["inductor"]["cudagraph_skips"] == 0, (
            "reduce-overhead fell back to running without CUDA graphs (the log says why: 'skipping cudagraphs')")


# -- (c) bf16 autocast ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_bf16_autocast_training_stays_finite_and_close_to_fp32(channels_last, tmp_path):
    images, labels = learnable_images(256, 10, seed=3)
    counts = np.bincount(labels, minlength=10).tolist()
    runs = {}
    for amp in (False, True):
        torch.manual_seed(0)
        model = models.build_model("resnet20", 10).to(CUDA)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        start = torch.cat([p.detach().float().flatten() for p in model.parameters()])
        loader = cuda_loader(images, labels, batch_size=64, seed=4, channels_last=channels_last)
        trainer = make_trainer(tmp_path / str(amp), model, loader, trainer_args(amp=amp, epochs=2), counts)
        assert trainer.method.amp is amp
        x, _ = next(iter(loader))
        model.eval()  # the same batch through the same initial weights, running statistics untouched
        with torch.no_grad(), torch.autocast(CUDA.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
        records = [trainer.train_epoch(epoch) for epoch in range(2)]  # 8 SGD steps: a few, before paths diverge
        runs[amp] = logits, records, torch.cat([p.detach().float().flatten() for p in model.parameters()]) - start
    (z32, rec32, moved32), (z16, rec16, moved16) = runs[False], runs[True]
    assert not torch.equal(z16, z32)  # autocast did run in bf16
    assert (z16 - z32).abs().max() <= 0.05 * z32.abs().max() + 1e-2
    for r32, r16 in zip(rec32, rec16):
        assert math.isfinite(r16["train_loss"]) and math.isfinite(r32["train_loss"])
        assert r16["train_loss"] == pytest.approx(r32["train_loss"], rel=0.1)
    # bf16 moves the weights nearly where fp32 does (the bf16 autocast of the CPU, tried in place of CUDA's: 10 %)
    assert torch.isfinite(moved16).all()
    assert ((moved16 - moved32).norm() / moved32.norm()).item() < 0.3


# -- (d) evaluation -------------------------------------------------------------------------------------------

def near_ties(logits: torch.Tensor, k: int, gap: float = 1e-3) -> torch.Tensor:
    """Samples whose k-th and (k+1)-th largest logits are within ``gap``: their top-k may differ between devices."""
    top = logits.topk(k + 1, dim=1).values
    return (top[:, k - 1] - top[:, k]) < gap


def test_evaluation_on_cuda_equals_the_cpu(fp32_math):
    images, labels = learnable_images(600, 10, seed=5)
    train_counts = [500, 300, 150, 101, 100, 60, 20, 19, 10, 5]  # all three shot groups
    torch.manual_seed(0)
    cpu_model = models.build_model("resnet20", 10)
    with torch.no_grad():
        cpu_model.fc.weight.mul_(10.0)  # spreads the untrained model's predictions over the classes
    cuda_model = copy.deepcopy(cpu_model).to(CUDA)

    def batches(device):  # evaluation order, 3 batches (the last one partial)
        return DeviceLoader(images, labels, batch_size=256, device=device, mean=MEAN, std=STD, train=False)

    on_cpu = evaluate(cpu_model, batches(CPU), 10, train_counts)
    on_cuda = evaluate(cuda_model, batches(CUDA), 10, train_counts)
    z_cpu, y_cpu = collect_logits(cpu_model, batches(CPU))
    z_cuda, y_cuda = collect_logits(cuda_model, batches(CUDA))
    assert torch.equal(y_cpu, y_cuda)
    torch.testing.assert_close(z_cuda, z_cpu, rtol=1e-4, atol=1e-4)
    flips = z_cuda.argmax(1) != z_cpu.argmax(1)
    assert not (flips & ~near_ties(z_cpu, 1)).any()  # predictions differ only where two logits nearly tie
    n = len(labels)
    assert on_cuda["samples"] == on_cpu["samples"] == n
    assert abs(on_cuda["top1"] - on_cpu["top1"]) <= 100 * flips.sum().item() / n + 1e-9
    assert abs(on_cuda["top5"] - on_cpu["top5"]) <= 100 * near_ties(z_cpu, 5).sum().item() / n + 1e-9
    assert on_cuda["loss"] == pytest.approx(on_cpu["loss"], rel=1e-5)
    per_class_tol = 100 * flips.sum().item() / np.bincount(labels).min() + 1e-6
    np.testing.assert_allclose(on_cuda["per_class"], on_cpu["per_class"], rtol=0, atol=per_class_tol)
    for group in ("many", "medium", "few", "mean_class_acc"):
        assert on_cuda[group] == pytest.approx(on_cpu[group], abs=per_class_tol)
    if not flips.any():
        assert on_cuda["top1"] == on_cpu["top1"] and on_cuda["per_class"] == on_cpu["per_class"]


# -- (e) NCCL -------------------------------------------------------------------------------------------------

NCCL_SCRIPT = r"""
import json
import torch
from engine.train import distributed

device = distributed.init("cuda")
t = torch.arange(4.0, device=device)
model = distributed.wrap_ddp(torch.nn.Linear(4, 2).to(device), device)
model(torch.randn(8, 4, device=device)).square().mean().backward()
result = {"device": str(device), "backend": torch.distributed.get_backend(), "rank": distributed.rank(),
          "world": distributed.world_size(), "sum": distributed.all_reduce_sum(t.clone()).tolist(),
          "seed": distributed.shared_seed(1234, device), "ddp": type(model).__name__,
          "grads_finite": all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())}
distributed.barrier()
distributed.shutdown()
print("RESULT " + json.dumps(result))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_nccl_group_initialises_and_all_reduce_works():
    if not torch.distributed.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    # A subprocess: torchrun's environment stays out of this one, and a hanging NCCL start is cut off by the timeout.
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
               LOCAL_RANK="0")
    proc = subprocess.run([sys.executable, "-c", NCCL_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(line[-1][len("RESULT "):]) == {
        "device": "cuda:0", "backend": "nccl", "rank": 0, "world": 1, "sum": [0.0, 1.0, 2.0, 3.0], "seed": 1234,
        "ddp": "DistributedDataParallel", "grads_finite": True}


# -- (f) checkpoints ------------------------------------------------------------------------------------------

def test_checkpoint_written_on_cuda_loads_on_the_cpu_and_back(tmp_path, deterministic_cudnn):
    images, labels = learnable_images(128, 10, seed=6)
    counts = np.bincount(labels, minlength=10).tolist()
    meta = {"arch": "resnet20", "num_classes": 10, "use_norm": False}
    torch.manual_seed(0)
    model = models.build_model("resnet20", 10).to(CUDA)
    trainer = make_trainer(tmp_path / "a", model, cuda_loader(images, labels, batch_size=32, seed=1),
                           trainer_args(epochs=2), counts, ckpt_dir=str(tmp_path / "ckpt"), meta=meta)
    trainer.train_epoch(0)
    trainer.state.epoch = 1
    trainer.save((True, False))
    ckpt = load_checkpoint(str(tmp_path / "ckpt" / "ckpt.pth.tar"))
    state = [t for s in ckpt["optimizer"]["state"].values() for t in s.values() if torch.is_tensor(t)]
    assert state and all(t.device == CPU for t in [*ckpt["state_dict"].values(), *state])
    assert (tmp_path / "ckpt" / "ckpt.best.pth.tar").is_file()
    on_cpu = models.build_model("resnet20", 10)
    load_model_weights(on_cpu, ckpt)
    for key, value in model.state_dict().items():
        assert torch.equal(on_cpu.state_dict()[key], value.cpu()), key
    # back onto the GPU: a resumed trainer continues exactly as the one that wrote the checkpoint
    back = models.build_model("resnet20", 10).to(CUDA)
    load_model_weights(back, ckpt)
    resumed = make_trainer(tmp_path / "b", back, cuda_loader(images, labels, batch_size=32, seed=1),
                           trainer_args(epochs=2), counts, meta=meta)
    resumed.restore(ckpt, str(tmp_path / "ckpt" / "ckpt.pth.tar"))
    assert resumed.state.epoch == 1
    assert all(resumed.optimizer.state[p]["momentum_buffer"].device.type == CUDA.type for p in back.parameters())
    a, b = trainer.train_epoch(1), resumed.train_epoch(1)
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    for (key, x), y in zip(model.state_dict().items(), back.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6, msg=key)


# -- (g) no host synchronisation inside the training loop -----------------------------------------------------

class SyncChecked:
    """A loader whose iteration, while ``checking``, runs under ``torch.cuda.set_sync_debug_mode("error")``: from
    the first batch's request (the epoch plan's draw) to the end of the last step. The Trainer's epoch-end reads
    (the NaN check and the totals) come after the iteration and stay allowed."""

    def __init__(self, loader):
        self.loader, self.checking = loader, False

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __iter__(self):
        if not self.checking:
            yield from self.loader
            return
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from self.loader
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_the_sync_check_catches_a_host_read():
    loader = SyncChecked([torch.ones(1, device=CUDA)])
    loader.checking = True
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            for t in loader:
                t.item()
    finally:
        torch.cuda.set_sync_debug_mode("default")


SYNC_CASES = [(None, "CE", "None", False), (None, "LDAM", "DRW", False), (None, "CE", "Resample", False),
              ("reduce-overhead", "LDAM", "DRW", True)]


@pytest.mark.parametrize("compile_mode, loss_type, rule, fast", SYNC_CASES,
                         ids=["eager-CE", "eager-LDAM-DRW", "eager-Resample", "graphs-bf16-LDAM-DRW"])
def test_training_steps_do_not_synchronise_with_the_host(compile_mode, loss_type, rule, fast, tmp_path):
    torch._dynamo.reset()
    images, labels = learnable_images(300, 10, seed=7)  # 5 steps of 64 per epoch: four full, one of 44
    counts = np.bincount(labels, minlength=10).tolist()
    warmup, epochs = 3, 5
    args = trainer_args(epochs=epochs, drw_epoch=epochs - 1, amp=fast, channels_last=fast)  # DRW: a checked epoch
    model = tiny_model(10, use_norm=loss_type == "LDAM").to(CUDA)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    weights = rule_of(rule, counts, args).sample_weights(labels)
    loader = SyncChecked(cuda_loader(images, labels, batch_size=64, seed=3, sample_weights=weights,
                                     channels_last=fast))
    trainer = make_trainer(tmp_path, model, loader, args, counts, loss_type, rule, compile_mode)
    assert args.print_freq > len(loader)
    try:
        for epoch in range(epochs):
            # the first epochs warm up: compilation, then the CUDA-graph recording of each batch shape (the last,
            # partial batch comes once an epoch, so it is recorded in the second) synchronise, once per shape
            loader.checking = epoch >= warmup
            record = trainer.train_epoch(epoch)
            assert math.isfinite(record["train_loss"])
    finally:
        torch.cuda.set_sync_debug_mode("default")
