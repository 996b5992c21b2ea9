"""The one training loop: epochs of (schedule -> steps -> evaluation -> checkpoint -> log).

Scripts differ only in what they hand it: the loader, the ``step`` (supervised classification, rotation
prediction, MoCo...), and the evaluation. Per-step statistics are accumulated on the device; the host
reads them every ``print_freq`` steps (progress bar, NaN check) and at the end of the epoch.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import torch
import torch.nn as nn
from tqdm import tqdm

from engine import distributed
from engine.checkpoint import save_checkpoint
from engine.metrics import format_metrics
from engine.runlog import RunLog
from engine.schedules import LRSchedule


class Step(Protocol):
    """One training step's forward: returns (loss, logits, targets) for a batch (x, y)."""

    def start_epoch(self, epoch: int) -> None: ...

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


class ClassificationStep:
    """logits = model(transform(x)); loss = criterion(logits, y). ``rule`` sets per-epoch class weights.

    ``batch_transform(x, y) -> (x, y)`` replaces the batch before the forward (e.g. rotation prediction).
    ``compile_mode`` compiles model and loss together with torch.compile (``reduce-overhead`` adds CUDA
    graphs). Shapes are compiled static (``dynamic=False``): an epoch has at most two batch shapes (full and
    the last partial one, the same every epoch), so two specialised graphs cover a run and no image is dropped
    or padded. The class weights the rule sets live in a buffer updated in place, so the compiled step stays
    valid when they change (tests/test_compiled_step.py).
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, rule=None,
                 batch_transform: Callable | None = None, compile_mode: str | None = None):
        self.model, self.criterion, self.rule, self.batch_transform = model, criterion, rule, batch_transform
        self._forward = torch.compile(self._loss, mode=compile_mode, dynamic=False) if compile_mode else self._loss

    def _loss(self, x, y):
        logits = self.model(x)
        return self.criterion(logits, y), logits

    def start_epoch(self, epoch: int) -> None:
        if self.rule is not None:
            self.criterion.set_class_weights(self.rule.class_weights(epoch))
        if hasattr(self.batch_transform, "start_epoch"):
            self.batch_transform.start_epoch(epoch)

    def __call__(self, x, y):
        if self.batch_transform is not None:
            x, y = self.batch_transform(x, y)
        loss, logits = self._forward(x, y)
        return loss, logits, y


@dataclass
class TrainState:
    epoch: int = 0                      # next epoch to run
    best_acc1: float = 0.0
    best_epoch: int = -1
    best: dict = field(default_factory=dict)
    last: dict = field(default_factory=dict)


class Trainer:
    """Runs ``args.epochs`` epochs of ``step`` over ``loader``.

    ``evaluate()`` returns a metrics dict with ``top1`` (or None to skip); the best epoch is the one with
    the highest ``top1`` (on the test set for CIFAR/SVHN, as the papers do: reported with the last epoch).
    ``checkpoint_meta`` is stored in every checkpoint (arch, num_classes, use_norm, args...).
    ``schedule(epoch) -> lr`` sets the learning rate at the start of each epoch (``engine.schedules.LRSchedule``).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: Iterable, step: Step, args,
                 run: RunLog, ckpt_dir: str | None, checkpoint_meta: dict,
                 evaluate: Callable[[], dict | None] | None = None, save_every: int = 1, *,
                 schedule: LRSchedule | Callable[[int], float]):
        self.model, self.optimizer, self.loader, self.step = model, optimizer, loader, step
        self.schedule = schedule
        self.args, self.run, self.ckpt_dir, self.meta = args, run, ckpt_dir, checkpoint_meta
        self.evaluate, self.save_every = evaluate, save_every
        self.state = TrainState(epoch=args.start_epoch)
        self.device = next(model.parameters()).device
        self.amp = bool(getattr(args, "amp", False)) and self.device.type == "cuda"
        self.last_saved = ""

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_path(self, epochs_done: int) -> str:
        """Where the checkpoint after ``epochs_done`` epochs goes (upstream: one file, overwritten)."""
        return os.path.join(self.ckpt_dir, "ckpt.pth.tar")

    def checkpoint_state(self) -> dict:
        """Everything a checkpoint holds: the meta data, weights, optimizer and progress."""
        model = self.model.module if hasattr(self.model, "module") else self.model
        return dict(self.meta, epoch=self.state.epoch, state_dict=model.state_dict(),
                    optimizer=self.optimizer.state_dict(), best_acc1=self.state.best_acc1,
                    best_epoch=self.state.best_epoch, best=self.state.best, last=self.state.last)

    def restore(self, ckpt: dict) -> None:
        """Continue the run saved in ``ckpt``: optimizer, epoch, best so far (weights are loaded by the caller)."""
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(epoch=int(ckpt["epoch"]), best_acc1=float(ckpt.get("best_acc1", 0.0)),
                                best_epoch=int(ckpt.get("best_epoch", -1)), best=ckpt.get("best", {}),
                                last=ckpt.get("last", {}))
        self.run.forget_from(self.state.epoch)

    def save(self, is_best: bool) -> None:
        """Write the checkpoint atomically (main process only); the best epoch is also ``ckpt.best.pth.tar``."""
        if self.ckpt_dir is None or not distributed.is_main():
            return
        path = self.checkpoint_path(self.state.epoch)
        save_checkpoint(self.checkpoint_state(), path,
                        os.path.join(self.ckpt_dir, "ckpt.best.pth.tar") if is_best else None)
        self.last_saved = path

    # -- the loop ----------------------------------------------------------------------------------
    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        """Stop on a NaN/inf loss; the value is summed over processes so that all of them stop together."""
        value = distributed.all_reduce_sum(loss_sum.detach().clone()).item()
        if not math.isfinite(value):
            last = self.last_saved or (self.checkpoint_path(self.state.epoch) if self.ckpt_dir else "")
            where = (f"the last good checkpoint is {last} (epoch {self.state.epoch})" if os.path.exists(last)
                     else "no checkpoint was written yet")
            raise FloatingPointError(f"training loss became {value} at epoch {epoch}, step {step}; stopped, {where}. "
                                     "Lower --lr or check the data and the loss settings.")

    def train_epoch(self, epoch: int) -> dict:
        lr = self.schedule(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.model.train()
        self.step.start_epoch(epoch)
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, correct
        count = 0
        bar = tqdm(self.loader, total=len(self.loader), desc=f"epoch {epoch}", leave=False,
                   disable=not distributed.is_main(), dynamic_ncols=True)
        for i, (x, y) in enumerate(bar):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss, logits, target = self.step(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            n = target.shape[0]
            count += n
            sums[0] += loss.detach() * n
            sums[1] += (logits.detach().argmax(1) == target).sum()
            if (i + 1) % self.args.print_freq == 0:
                self._check_finite(sums[0], epoch, i)
                loss_sum, correct = sums.tolist()
                bar.set_postfix(loss=f"{loss_sum / count:.4f}", acc=f"{100 * correct / count:.2f}", lr=f"{lr:.4g}")
        self._check_finite(sums[0], epoch, len(self.loader))
        totals = distributed.all_reduce_sum(torch.cat([sums, sums.new_tensor([count])]))
        loss_sum, correct, count = totals.tolist()
        return {"lr": lr, "train_loss": loss_sum / max(count, 1), "train_top1": 100.0 * correct / max(count, 1)}

    def fit(self) -> dict:
        """Train from ``state.epoch`` to ``args.epochs``; returns the final summary (last and best)."""
        for epoch in range(self.state.epoch, self.args.epochs):
            start = time.perf_counter()
            record = {"epoch": epoch, **self.train_epoch(epoch)}  # ends with a host sync: timings are real
            record["time_train"] = time.perf_counter() - start
            metrics = self.evaluate() if self.evaluate is not None else None
            record["time_epoch"] = time.perf_counter() - start
            self.state.epoch = epoch + 1
            is_best = False
            if metrics is not None:
                record["test"] = metrics
                self.state.last = dict(metrics, epoch=epoch)
                is_best = metrics["top1"] > self.state.best_acc1 or self.state.best_epoch < 0
                if is_best:
                    self.state.best_acc1, self.state.best_epoch = metrics["top1"], epoch
                    self.state.best = dict(metrics, epoch=epoch)
            record["best_acc1"] = self.state.best_acc1
            if self.state.epoch % self.save_every == 0 or self.state.epoch == self.args.epochs:
                self.save(is_best)
            self.run.epoch(record)
            self._print_epoch(record)
        summary = self.summary()
        self.run.final(summary)
        return summary

    def _print_epoch(self, record: dict) -> None:
        line = (f"Epoch [{record['epoch'] + 1}/{self.args.epochs}] lr {record['lr']:.5f}  "
                f"train loss {record['train_loss']:.4f} acc {record['train_top1']:.2f}")
        if "test" in record:
            line += f" | test {format_metrics(record['test'])} | best Prec@1 {self.state.best_acc1:.3f}"
        self.run.print(line)

    def summary(self) -> dict:
        return {"epochs": self.state.epoch, "last": self.state.last, "best": self.state.best,
                "best_epoch": self.state.best_epoch,
                "selection": "best = highest test top-1 over epochs (the papers' protocol); last = final epoch"}
