"""What a run leaves behind for people: console lines, ``args.yaml``, ``metrics.jsonl``, TensorBoard scalars.

Only the main process writes (rank 0 under torchrun). Layout, under ``root_log/store_name/``:
* ``args.yaml``: the full configuration (re-usable as ``--config``);
* ``metrics.jsonl``: one JSON object per epoch (train loss/accuracy, lr, test metrics, best so far);
* ``final.json``: last-epoch and best-epoch metrics once the run has finished (read by reproduce.py);
* TensorBoard event files (one writer), with the reference code's scalar names (``loss/train``,
  ``acc/test_val_top1``...; per-class accuracies as ``acc/test_val_cls_acc/<class>``);
* ``figures/``: the run's figures at its end (engine/eval/figures.py; ``python report.py RUN_DIR`` redraws them);
* ``.lock``: the lock of the one process writing the folder (``engine.train.runlock``).

The checkpoint is the source of truth of a run's progress: it carries every epoch record, and ``restore``
rewrites ``metrics.jsonl`` and the TensorBoard scalars from them, so that after a kill at any instant a resumed
run's log holds exactly the epochs its checkpoint has done.
"""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
import sys

import yaml

from engine.train import distributed, runlock
from engine.train.checkpoint import atomic_write

METRICS = "metrics.jsonl"


def _plain(value):
    """JSON/YAML-safe value: NaN and inf become None, tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def write_json(path: str, obj) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(_plain(obj), indent=2) + "\n").encode()))


def record_line(record: dict) -> str:
    return json.dumps(_plain(record)) + "\n"


def read_records(path: str) -> list[dict]:
    """The epoch records of a ``metrics.jsonl``; a last line cut off by a kill is dropped with a warning (a
    damaged line elsewhere is an error naming the file and the line)."""
    with open(path) as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[number:]):
                raise ValueError(f"{path}: line {number} is not a JSON record; the file is damaged") from None
            print(f"=> warning: {path}: dropped its last line, cut off mid-write ({len(line)} characters)",
                  file=sys.stderr, flush=True)
    return records


def append_line(path: str, text: str) -> None:
    """Append ``text`` to ``path`` and flush it to the disk before the run goes on."""
    try:
        with open(path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, path) from e  # write() itself names no file


class RunLog:
    """The run's log folder. ``args_dict`` (None: an evaluation, which writes no configuration) and
    ``tensorboard`` say what is written; nothing, not even the folder, is created for a run that writes neither
    until it writes a file of its own (e.g. the shifted-evaluation table). A training run first takes the
    folder's lock (a second run into the same folder stops at once) and removes temporary files a killed run
    left behind."""

    def __init__(self, log_dir: str, args_dict: dict | None = None, tensorboard: bool = True, figures: bool = True):
        self.dir = log_dir
        self.enabled = distributed.is_main()
        self.tensorboard, self.draw_figures = tensorboard, figures
        self.writer = None
        self.locked = self.enabled and (args_dict is not None or tensorboard)
        if not self.locked:
            return
        runlock.acquire(log_dir)
        runlock.remove_stale_temporaries(log_dir)
        if args_dict is not None:
            atomic_write(os.path.join(log_dir, "args.yaml"),
                         lambda f: f.write(yaml.safe_dump(_plain(args_dict), sort_keys=True).encode()))

    def print(self, *msg) -> None:
        if self.enabled:
            print(*msg, flush=True)

    def restore(self, records: list[dict]) -> None:
        """Make ``metrics.jsonl`` and the TensorBoard scalars hold exactly ``records`` (the epochs a checkpoint has
        done; none for a fresh start): what a killed run logged past its checkpoint, or a line it tore, is gone,
        and so is ``final.json``, which marks a finished run."""
        if not self.enabled:
            return
        atomic_write(os.path.join(self.dir, METRICS), lambda f: f.write("".join(map(record_line, records)).encode()))
        final = os.path.join(self.dir, "final.json")
        if os.path.exists(final):  # the mark of a finished run, and this one is not (any more)
            os.remove(final)
        if not self.tensorboard:
            return
        self._close_writer()
        for path in glob.glob(os.path.join(self.dir, "events.out.tfevents.*")):
            os.remove(path)
        for path in glob.glob(os.path.join(self.dir, "acc_test_val_cls_acc_*")):  # add_scalars' folders (older runs)
            shutil.rmtree(path, ignore_errors=True)
        for record in records:
            self._scalars(record)

    def epoch(self, record: dict) -> None:
        """Append one epoch's record to metrics.jsonl and its scalars to TensorBoard."""
        if not self.enabled:
            return
        append_line(os.path.join(self.dir, METRICS), record_line(record))
        if self.tensorboard:
            self._scalars(record)

    def _writer(self):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(self.dir)
        return self.writer

    def figures(self, step: int | None = None) -> None:
        """Draw the run's figures (engine.eval.figures) into ``figures/`` and TensorBoard's images at ``step``."""
        if not (self.enabled and self.draw_figures):
            return
        from engine.eval.figures import write_figures  # matplotlib is loaded only to draw
        paths, _ = write_figures(self.dir, writer=self._writer() if self.tensorboard else None, step=step)
        if paths:
            self.print(f"=> {len(paths)} figures in {os.path.join(self.dir, 'figures')}")

    def _scalars(self, record: dict) -> None:
        self._writer()
        step = record["epoch"]
        for tag, key in (("loss/train", "train_loss"), ("acc/train_top1", "train_top1"), ("lr", "lr")):
            if key in record:
                self.writer.add_scalar(tag, record[key], step)
        test = record.get("test")
        if test:
            self.writer.add_scalar("loss/test_val", test["loss"], step)
            self.writer.add_scalar("acc/test_val_top1", test["top1"], step)
            self.writer.add_scalar("acc/test_val_top5", test["top5"], step)
            for key in ("ece", "classwise_ece", "nll"):
                if test.get(key) is not None:
                    self.writer.add_scalar(f"calibration/test_{key}", test[key], step)
            for i, acc in enumerate(test.get("per_class", [])):
                if acc is not None:
                    self.writer.add_scalar(f"acc/test_val_cls_acc/{i}", acc, step)
            self.writer.add_scalar("acc/test_top1_best", record["best_acc1"], step)
        self.writer.flush()

    def final(self, summary: dict) -> None:
        if self.enabled:
            write_json(os.path.join(self.dir, "final.json"), summary)

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def close(self) -> None:
        """End the run: close TensorBoard and give up the folder's lock."""
        self._close_writer()
        if self.locked:
            runlock.release(self.dir)
