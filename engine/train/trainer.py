"""The one training loop: epochs of (schedule -> method steps -> evaluation -> checkpoint -> log).

Scripts differ only in what they hand it: the method (supervised classification, rotation prediction, MoCo...,
see ``engine.methods``), the loader, the learning-rate schedule and the evaluation. Per-step statistics are
accumulated on the device; the host reads them every ``print_freq`` steps (progress bar, NaN check) and at
the end of the epoch.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from engine.data.samplers import epoch_seed
from engine.train import distributed, runlock
from engine.train.checkpoint import copy_file, ensure_space, save_checkpoint, state_bytes
from engine.methods import Method
from engine.eval.metrics import format_metrics
from engine.train.runlog import METRICS, RunLog, read_records


@dataclass(frozen=True)
class LoopConfig:
    """How long the loop runs and how often it reports: ``epochs`` in all (``start_epoch`` first, unless a
    checkpoint is restored), progress every ``print_freq`` steps, a checkpoint every ``save_every`` epochs and
    after the last one."""
    epochs: int
    start_epoch: int = 0
    print_freq: int = 10
    save_every: int = 1


@dataclass
class TrainState:
    epoch: int = 0                      # next epoch to run
    best_acc1: float = 0.0
    best_epoch: int = -1
    best: dict = field(default_factory=dict)
    last: dict = field(default_factory=dict)
    records: list = field(default_factory=list)  # every epoch's record so far: the log is rebuilt from them
    val_best_acc1: float = 0.0          # with a validation part: the epoch selected on it
    val_best_epoch: int = -1
    val_selected: dict = field(default_factory=dict)  # that epoch's test metrics, and its val_top1

    def select(self, metrics: dict, val: dict | None, epoch: int) -> tuple[bool, bool]:
        """Record an evaluated epoch; returns whether it is the best on the test set, and on the validation part.
        Ties keep the earlier epoch."""
        self.last = dict(metrics, epoch=epoch)
        is_best = metrics["top1"] > self.best_acc1 or self.best_epoch < 0
        if is_best:
            self.best_acc1, self.best_epoch, self.best = metrics["top1"], epoch, dict(metrics, epoch=epoch)
        is_val_best = val is not None and (val["top1"] > self.val_best_acc1 or self.val_best_epoch < 0)
        if is_val_best:
            self.val_best_acc1, self.val_best_epoch = val["top1"], epoch
            self.val_selected = dict(metrics, epoch=epoch, val_top1=val["top1"])
        return is_best, is_val_best


PROGRESS = ("best_acc1", "best_epoch", "best", "last", "records", "val_best_acc1", "val_best_epoch", "val_selected")
SELECTED_FILES = {"best_epoch": "ckpt.best.pth.tar", "val_best_epoch": "ckpt.val_best.pth.tar"}


class Trainer:
    """Runs ``config.epochs`` epochs of ``method`` over ``loader`` with the learning rate ``schedule(epoch)``.

    ``evaluate()`` returns a metrics dict with ``top1`` (or None to skip); the best epoch is the one with
    the highest ``top1`` (on the test set for CIFAR/SVHN, as the papers do: reported with the last epoch). When
    the dict holds a ``val`` entry (the metrics of a validation part), the epoch with the highest validation top-1
    is selected too (``val_selected``: its test metrics; checkpoint ``ckpt.val_best.pth.tar``).
    ``checkpoint_meta`` is stored in every checkpoint (arch, num_classes, use_norm, args...); checkpoints go to
    ``ckpt_dir`` (None: none are written) under the method's file name. ``final``: entries the summary (and
    final.json) carries besides the results (e.g. the subsets' hashes).

    The run folder is kept as one consistent state whatever instant the process is killed at: an epoch writes
    its checkpoint (which carries every epoch record), then the best copy, then the ``metrics.jsonl`` line and
    TensorBoard scalars; ``restore`` rebuilds the log from the checkpoint's records and the best copy from the
    checkpoint when the kill came between the two. The checkpoint folder has one writer (``runlock``), and
    space for the next checkpoint is checked before training and before every save.
    """

    def __init__(self, method: Method, optimizer: torch.optim.Optimizer, loader: Iterable,
                 schedule: Callable[[int], float], config: LoopConfig, run: RunLog, ckpt_dir: str | None,
                 checkpoint_meta: dict, evaluate: Callable[[], dict | None] | None = None, final: dict | None = None):
        self.method, self.optimizer, self.loader, self.schedule = method, optimizer, loader, schedule
        self.config, self.run, self.ckpt_dir, self.meta = config, run, ckpt_dir, checkpoint_meta
        self.evaluate, self.final = evaluate, dict(final or {})
        self.state = TrainState(epoch=config.start_epoch)
        self.last_saved = ""

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_path(self, epochs_done: int) -> str:
        return os.path.join(self.ckpt_dir, self.method.checkpoint_file(epochs_done))

    @property
    def writes_checkpoints(self) -> bool:
        return self.ckpt_dir is not None and distributed.is_main()

    def checkpoint_state(self) -> dict:
        """Everything a checkpoint holds: the meta data, weights, optimizer, progress and the epoch records."""
        return dict(self.meta, epoch=self.state.epoch, state_dict=self.method.state_dict(),
                    optimizer=self.optimizer.state_dict(), **{k: getattr(self.state, k) for k in PROGRESS})

    def restore(self, ckpt: dict, source: str) -> None:
        """Continue the run saved in ``ckpt`` (read from the file ``source``): optimizer, epoch, best so far and
        the epoch records, from which the log is rebuilt (weights are loaded by the caller). When the checkpoint is
        of the best epoch, it is also the best copy (a kill may have come between writing the two)."""
        self.optimizer.load_state_dict(ckpt["optimizer"])
        epoch = int(ckpt["epoch"])
        defaults = TrainState()
        self.state = TrainState(epoch=epoch, **{k: ckpt.get(k) if ckpt.get(k) is not None else getattr(defaults, k)
                                                for k in PROGRESS if k != "records"},
                                records=self._records_of(ckpt, epoch))
        self.state.best_acc1 = float(self.state.best_acc1)  # a 0-dim tensor in the papers' released checkpoints
        self.state.best_epoch, self.state.val_best_epoch = int(self.state.best_epoch), int(self.state.val_best_epoch)
        for key, name in SELECTED_FILES.items():
            if self.writes_checkpoints and getattr(self.state, key) == epoch - 1 >= 0:
                copy_file(source, os.path.join(self.ckpt_dir, name))

    def _records_of(self, ckpt: dict, epoch: int) -> list:
        """The checkpoint's epoch records; a checkpoint written before they were stored gets them from the log."""
        if "records" in ckpt:
            return list(ckpt["records"])
        path = os.path.join(self.run.dir, METRICS)
        return [r for r in read_records(path) if r["epoch"] < epoch] if os.path.exists(path) else []

    def _ensure_space(self, state: dict) -> None:
        """The disk must hold a second copy of the checkpoint while it is written (temporary file, then rename)."""
        size = os.path.getsize(self.last_saved) if self.last_saved else state_bytes(state)
        ensure_space(self.ckpt_dir, int(size * 1.05) + 2 ** 20)

    def save(self, selected: tuple[bool, bool] = (False, False)) -> None:
        """Write the checkpoint atomically (main process only); the best epoch on the test set is also
        ``ckpt.best.pth.tar``, the one on the validation part ``ckpt.val_best.pth.tar``."""
        if not self.writes_checkpoints:
            return
        state = self.checkpoint_state()
        self._ensure_space(state)
        path = self.checkpoint_path(self.state.epoch)
        save_checkpoint(state, path)
        for chosen, name in zip(selected, SELECTED_FILES.values()):
            if chosen:
                copy_file(path, os.path.join(self.ckpt_dir, name))
        self.last_saved = path

    # -- the loop ----------------------------------------------------------------------------------
    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        """Stop on a NaN/inf loss; the value is summed over processes so that all of them stop together."""
        value = distributed.all_reduce_sum(loss_sum.detach().clone()).item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at epoch {epoch}, step {step}; stopped, "
                                     f"{self._last_good(epoch)}. Lower --lr or check the data and the loss settings.")

    def _last_good(self, epochs_done: int) -> str:
        """Where a stopped run's last good checkpoint is: the one this run saved, else the one it resumed from."""
        last = self.last_saved or (self.checkpoint_path(epochs_done) if self.ckpt_dir else "")
        return (f"the last good checkpoint is {last} (epoch {epochs_done})" if os.path.exists(last)
                else "no checkpoint was written yet")

    def _check_state_finite(self, epoch: int) -> None:
        """Refuse to checkpoint a non-finite model: a finite loss can hide NaN/inf weights or BatchNorm statistics,
        and a checkpoint is only ever written from a finite state (one host read per checkpoint)."""
        tensors = {k: v for k, v in self.method.state_dict().items() if torch.is_tensor(v) and v.is_floating_point()}
        finite = torch.stack([torch.isfinite(v).all() for v in tensors.values()]).cpu().tolist() if tensors else []
        bad = [name for name, ok in zip(tensors, finite) if not ok]
        if bad:
            raise FloatingPointError(f"after epoch {epoch} the model holds non-finite values in {len(bad)} tensors "
                                     f"({', '.join(bad[:4])}{'...' if len(bad) > 4 else ''}); not saved, "
                                     f"{self._last_good(epoch)}. Lower --lr or check the data and the loss settings.")

    def _means(self, sums: list[float], count: float) -> dict:
        scale = {name: 100.0 if name in self.method.percent_metrics else 1.0 for name in self.method.metric_names}
        return {name: scale[name] * s / max(count, 1) for name, s in zip(self.method.metric_names, sums)}

    def reseed(self, epoch: int) -> None:
        """Seed torch's and Python's global generators from (run seed, epoch, rank): what a method draws from them
        (MoCo's batch shuffle, rotation labels) then does not depend on the epochs before, so a resumed
        run draws exactly what an unbroken one does."""
        seed = epoch_seed(int(self.meta.get("seed") or 0), epoch, distributed.rank())
        torch.manual_seed(seed)
        random.seed(seed)

    def train_epoch(self, epoch: int) -> dict:
        lr = self.schedule(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.method.train()
        self.reseed(epoch)
        self.method.start_epoch(epoch)
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        sums = torch.zeros(len(self.method.metric_names), dtype=torch.float64, device=self.method.device)
        count = 0
        bar = tqdm(self.loader, total=len(self.loader), desc=f"epoch {epoch}", leave=False,
                   disable=not distributed.is_main(), dynamic_ncols=True)
        for i, (x, y) in enumerate(bar):
            step_sums, n = self.method.train_step(x, y, self.optimizer)
            sums += step_sums
            count += n
            if (i + 1) % self.config.print_freq == 0:
                self._check_finite(sums[0], epoch, i)
                bar.set_postfix({k: f"{v:.4f}" for k, v in self._means(sums.tolist(), count).items()}, lr=f"{lr:.4g}")
        self._check_finite(sums[0], epoch, len(self.loader))
        totals = distributed.all_reduce_sum(torch.cat([sums, sums.new_tensor([count])])).tolist()
        return {"lr": lr, **{f"train_{k}": v for k, v in self._means(totals[:-1], totals[-1]).items()}}

    def fit(self) -> dict:
        """Train from ``state.epoch`` to ``config.epochs``; returns the final summary (last and best)."""
        own_lock = self.writes_checkpoints and os.path.realpath(self.ckpt_dir) != os.path.realpath(self.run.dir)
        if own_lock:
            runlock.acquire(self.ckpt_dir)
        try:
            return self._fit()
        finally:
            if own_lock:
                runlock.release(self.ckpt_dir)

    def _fit(self) -> dict:
        if self.writes_checkpoints:
            runlock.remove_stale_temporaries(self.ckpt_dir)
            self._ensure_space(self.checkpoint_state())
        self.run.restore(self.state.records)
        for epoch in range(self.state.epoch, self.config.epochs):
            start = time.perf_counter()
            record = {"epoch": epoch, **self.train_epoch(epoch)}  # ends with a host sync: timings are real
            record["time_train"] = time.perf_counter() - start
            metrics = self.evaluate() if self.evaluate is not None else None
            record["time_epoch"] = time.perf_counter() - start
            self.state.epoch = epoch + 1
            selected = (False, False)
            if metrics is not None:
                metrics = dict(metrics)
                val = metrics.pop("val", None)
                # the confusion matrix goes to final.json with the selected epochs, not into every epoch's line
                record["test"] = {k: v for k, v in metrics.items() if k != "confusion"}
                if val is not None:
                    record["val"] = val
                selected = self.state.select(metrics, val, epoch)
            record["best_acc1"] = self.state.best_acc1
            self.state.records.append(record)
            if self.state.epoch % self.config.save_every == 0 or self.state.epoch == self.config.epochs:
                self._check_state_finite(epoch)
                self.save(selected)
            self.run.epoch(record)
            self._print_epoch(record)
        summary = self.summary()
        self.run.final(summary)
        self.run.figures(step=self.state.epoch)
        return summary

    def _print_epoch(self, record: dict) -> None:
        line = f"Epoch [{record['epoch'] + 1}/{self.config.epochs}] lr {record['lr']:.5f}  train " + " ".join(
            f"{'acc' if name == 'top1' else name} {record['train_' + name]:.{2 if name == 'top1' else 4}f}"
            for name in self.method.metric_names)
        if "val" in record:
            line += f" | val Prec@1 {record['val']['top1']:.3f}"
        if "test" in record:
            line += f" | test {format_metrics(record['test'])} | best Prec@1 {self.state.best_acc1:.3f}"
        self.run.print(line)

    def summary(self) -> dict:
        out = {**self.final, "epochs": self.state.epoch, "last": self.state.last, "best": self.state.best,
               "best_epoch": self.state.best_epoch,
               "selection": "best = highest test top-1 over epochs (the papers' protocol); last = final epoch"}
        if self.state.val_best_epoch >= 0:
            out["val_selected"] = self.state.val_selected
            out["selection"] += ("; val_selected = the epoch of highest top-1 on the validation part (its test-part "
                                 "metrics): the number to report when the test set must not choose the model")
        return out
