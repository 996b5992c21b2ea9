"""What a run leaves behind for people: console lines, ``args.yaml``, ``metrics.jsonl``, TensorBoard scalars.

Only the main process writes (rank 0 under torchrun). Layout, under ``root_log/store_name/``:
* ``args.yaml``: the full configuration (re-usable as ``--config``);
* ``metrics.jsonl``: one JSON object per epoch (train loss/accuracy, lr, test metrics, best so far);
* ``final.json``: last-epoch and best-epoch metrics once the run has finished (read by reproduce.py);
* TensorBoard event files, with the reference code's scalar names (``loss/train``, ``acc/test_val_top1``...).
"""
from __future__ import annotations

import json
import math
import os

import yaml

from engine.train import distributed
from engine.train.checkpoint import atomic_write


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


class RunLog:
    def __init__(self, log_dir: str, args_dict: dict | None = None, tensorboard: bool = True):
        self.dir = log_dir
        self.enabled = distributed.is_main()
        self.writer = None
        if not self.enabled:
            return
        os.makedirs(log_dir, exist_ok=True)
        if args_dict is not None:
            atomic_write(os.path.join(log_dir, "args.yaml"),
                         lambda f: f.write(yaml.safe_dump(_plain(args_dict), sort_keys=True).encode()))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir)

    def print(self, *msg) -> None:
        if self.enabled:
            print(*msg, flush=True)

    def epoch(self, record: dict) -> None:
        """Append one epoch's record to metrics.jsonl and its scalars to TensorBoard."""
        if not self.enabled:
            return
        with open(os.path.join(self.dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(_plain(record)) + "\n")
        if self.writer is None:
            return
        step = record["epoch"]
        for tag, key in (("loss/train", "train_loss"), ("acc/train_top1", "train_top1"), ("lr", "lr")):
            if key in record:
                self.writer.add_scalar(tag, record[key], step)
        test = record.get("test")
        if test:
            self.writer.add_scalar("loss/test_val", test["loss"], step)
            self.writer.add_scalar("acc/test_val_top1", test["top1"], step)
            self.writer.add_scalar("acc/test_val_top5", test["top5"], step)
            self.writer.add_scalars("acc/test_val_cls_acc",
                                    {str(i): a for i, a in enumerate(test.get("per_class", [])) if a is not None}, step)
            self.writer.add_scalar("acc/test_top1_best", record["best_acc1"], step)
        self.writer.flush()

    def forget_from(self, epoch: int) -> None:
        """Drop metrics.jsonl records of ``epoch`` and later: a run resumed from an older checkpoint logs them again."""
        path = os.path.join(self.dir, "metrics.jsonl")
        if not self.enabled or not os.path.exists(path):
            return
        with open(path) as f:
            kept = [line for line in f if json.loads(line)["epoch"] < epoch]
        atomic_write(path, lambda f: f.write("".join(kept).encode()))

    def final(self, summary: dict) -> None:
        if self.enabled:
            write_json(os.path.join(self.dir, "final.json"), summary)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
