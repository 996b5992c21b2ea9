"""Evaluation under shifted test label distributions (Hong et al. 2021, LADE, section 5 protocol).

From a (balanced) test set with n_max images in its smallest class, build one test subset per target
label distribution, in this order:

* ``forward_r``  for r in 50, 25, 10, 5, 2: class c keeps n_c = int(n_max * (1/r)^(c/(C-1))) images (the
  training exp profile of engine.data.longtail.get_img_num_per_cls, class 0 the head);
* ``uniform``: n_max images of every class (the whole test set when it is balanced);
* ``backward_r`` for r in 2, 5, 10, 25, 50: the forward counts reversed (class C-1 the head).

Class c's images are drawn by a permutation of its test indices from ``np.random.default_rng(seed)``, the
same permutation for every subset (so each subset keeps a prefix: the subsets are nested per class).
No count ever exceeds n_max, so no subset asks for more images than exist.

The model runs once over the whole test set; every subset is scored from the stored logits, twice:
``plain`` (argmax z) and ``prior`` (target-prior correction, losses.posthoc_adjustment('pc') with pi_t the
subset's label distribution: z - log pi_s + log pi_t, or z + log pi_t - (1 - s) log pi_s for a loss that
added s log pi_s in training, e.g. z + log pi_t for LADE). Results: a console table and ``shifted_eval.csv`` / ``shifted_eval.json`` in the run's log folder.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Iterable, Sequence

import numpy as np
import torch

import losses
from engine.train import distributed
from engine.train.checkpoint import atomic_write
from engine.data.longtail import get_img_num_per_cls
from engine.eval.metrics import collect_logits, summarize_confusion, topk_correct
from engine.train.runlog import RunLog, write_json

RATIOS = (50, 25, 10, 5, 2)
METRICS = ("top1", "top5", "mean_class_acc")
COLUMNS = ("distribution", "direction", "imbalance", "images",
           *METRICS, *(f"{m}_prior" for m in METRICS))


def shifted_profiles(num_classes: int, n_max: int, ratios: Sequence[int] = RATIOS) -> list[tuple[str, str, int, list]]:
    """[(name, direction, imbalance, per-class counts)]: forward (ratios descending), uniform, backward."""
    forward = [(f"forward_{r}", "forward", r, get_img_num_per_cls(n_max, num_classes, "exp", 1.0 / r))
               for r in sorted(ratios, reverse=True)]
    backward = [(f"backward_{r}", "backward", r, counts[::-1]) for _, _, r, counts in reversed(forward)]
    return forward + [("uniform", "uniform", 1, [n_max] * num_classes)] + backward


def subsample(labels: np.ndarray, counts: Sequence[int], seed: int) -> np.ndarray:
    """Sorted indices keeping counts[c] images of class c: the first counts[c] of a seeded permutation."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    kept = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        if n > len(idx):
            raise ValueError(f"shifted evaluation asks {n} test images of class {c}, only {len(idx)} exist")
        kept.append(rng.permutation(idx)[:n])
    return np.sort(np.concatenate(kept)).astype(np.int64)


def logits_metrics(logits: torch.Tensor, labels: torch.Tensor, adjustment: torch.Tensor | None = None) -> dict:
    """top1, top5, per-class and mean-class accuracy (%) of argmax(logits + adjustment).

    Shot groups are left out: a shifted subset may hold no image of some classes, which
    ``summarize_confusion`` would count as 0 % inside its group.
    """
    num_classes = logits.shape[1]
    if adjustment is not None:
        logits = logits + adjustment.to(logits.device)
    confusion = torch.bincount(labels * num_classes + logits.argmax(dim=1), minlength=num_classes * num_classes)
    out = summarize_confusion(confusion.view(num_classes, num_classes).cpu().numpy(), None)
    out["top5"] = topk_correct(logits, labels, (5,))[0].item() / max(len(labels), 1) * 100.0
    return out


def shifted_evaluation(logits: torch.Tensor, labels: torch.Tensor, cls_num_list: Sequence[int],
                       prior_scale: float, seed: int = 0) -> list[dict]:
    """One row per shifted test distribution (module docstring), from stored test logits and labels.

    ``prior_scale``: how much of log pi_s the training loss added (``losses.trained_prior_scale``)."""
    num_classes = logits.shape[1]
    labels_np = labels.cpu().numpy()
    per_class = np.bincount(labels_np, minlength=num_classes)
    n_max = int(per_class.min())
    if n_max == 0:
        raise ValueError(f"shifted evaluation needs test images of every class; classes "
                         f"{np.flatnonzero(per_class == 0).tolist()} have none")
    rows = []
    for name, direction, ratio, counts in shifted_profiles(num_classes, n_max):
        idx = torch.as_tensor(subsample(labels_np, counts, seed), device=logits.device)
        z, y = logits[idx], labels[idx]
        prior = losses.posthoc_adjustment("pc", cls_num_list, target_prior=counts, prior_scale=prior_scale)
        plain, corrected = logits_metrics(z, y), logits_metrics(z, y, prior)
        row = {"distribution": name, "direction": direction, "imbalance": ratio, "images": int(len(idx))}
        row.update({m: plain[m] for m in METRICS})
        row.update({f"{m}_prior": corrected[m] for m in METRICS})
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'distribution':<13}{'images':>8}{'top1':>9}{'top1+prior':>12}{'top5':>9}{'top5+prior':>12}"
    lines = [head] + [f"{r['distribution']:<13}{r['images']:>8}{r['top1']:>9.2f}{r['top1_prior']:>12.2f}"
                      f"{r['top5']:>9.2f}{r['top5_prior']:>12.2f}" for r in rows]
    return "\n".join(lines)


def write_rows(rows: list[dict], folder: str) -> tuple[str, str]:
    """``shifted_eval.csv`` (one line per row, COLUMNS) and ``shifted_eval.json`` (the rows), atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
    csv_path, json_path = os.path.join(folder, "shifted_eval.csv"), os.path.join(folder, "shifted_eval.json")
    atomic_write(csv_path, lambda f: f.write(text.getvalue().encode()))
    write_json(json_path, rows)
    return csv_path, json_path


def run_shifted_eval(model: torch.nn.Module, test_loader: Iterable, cls_num_list: Sequence[int],
                     loss_type: str, tau: float, seed: int, run: RunLog, amp: bool = False) -> list[dict]:
    """Score ``model`` on every shifted test distribution; print the table and write it under ``run.dir``."""
    if distributed.world_size() > 1:
        raise ValueError("--shifted_eval evaluates in one process: run it with python, not torchrun")
    logits, labels = collect_logits(model, test_loader, amp)
    scale = losses.trained_prior_scale(loss_type, tau)
    rows = shifted_evaluation(logits, labels, cls_num_list, scale, seed)
    source = {0.0: " - log pi_s", 1.0: ""}.get(scale, f" - ({1.0 - scale:g}) log pi_s")
    run.print(f"Shifted test label distributions (seed {seed}; +prior: target-prior correction, "
              f"z + log pi_t{source}):")
    run.print(format_table(rows))
    if distributed.is_main():
        for path in write_rows(rows, run.dir):
            run.print(f"=> wrote {path}")
    return rows
