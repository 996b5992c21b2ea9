"""Evaluation: top-k accuracy, per-class accuracy, many/medium/few-shot accuracy and calibration.

Everything is accumulated on the device (a confusion matrix via ``bincount`` and running sums), so an
evaluation pass synchronises with the host once, at its end.

Shot groups follow Liu et al. 2019 (OLTR) and every paper reproduced here: a class is *many-shot* with
more than 100 training images, *medium-shot* with 20 to 100, *few-shot* with fewer than 20. A group
with no class is reported as None (the reference code reported 0, which reads like a real accuracy).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.eval.calibration import CalibrationSums
from engine.train import distributed

MANY_SHOT, FEW_SHOT = 100, 20


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (device tensors, no sync)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == target[:, None]
    return [hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks]


def shot_groups(train_counts: Sequence[int]) -> dict[str, np.ndarray]:
    counts = np.asarray(train_counts)
    return {"many": counts > MANY_SHOT, "medium": (counts >= FEW_SHOT) & (counts <= MANY_SHOT),
            "few": counts < FEW_SHOT}


def shot_accuracy(per_class_acc: np.ndarray, train_counts: Sequence[int]) -> dict[str, float | None]:
    """Unweighted mean of per-class accuracies within each shot group; NaN entries (classes without test
    images) are left out, and a group with no class left is None."""
    groups = shot_groups(train_counts)
    return {name: (float(np.nanmean(per_class_acc[mask])) if np.isfinite(per_class_acc[mask]).any() else None)
            for name, mask in groups.items()}


def macro_f1(confusion: np.ndarray) -> float:
    """Macro-averaged F1 (percent) of a (true, predicted) confusion matrix: the mean over classes of
    F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c), over the classes that occur as a label or a prediction (as
    scikit-learn's ``f1_score(average='macro')``, the reference ImageNet-LT code's "Averaged F-measure")."""
    tp = np.diag(confusion).astype(np.float64)
    fp, fn = confusion.sum(axis=0) - tp, confusion.sum(axis=1) - tp
    seen = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    return float(np.mean(2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen])) * 100.0) if seen.any() else 0.0


def summarize_confusion(confusion: np.ndarray, train_counts: Sequence[int] | None) -> dict:
    """Metrics from a (true, predicted) confusion matrix: overall top-1, per-class accuracy and shot groups.

    Per-class accuracy = diag / row sum (as the reference ``confusion_matrix`` based code); a class with no
    test sample gets NaN and is left out of means.
    """
    rows = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(rows > 0, np.diag(confusion) / np.maximum(rows, 1), np.nan) * 100.0
    out = {"top1": float(np.trace(confusion) / max(confusion.sum(), 1) * 100.0),
           "per_class": [None if np.isnan(a) else round(float(a), 4) for a in per_class],
           "mean_class_acc": float(np.nanmean(per_class)) if np.isfinite(per_class).any() else None,
           "macro_f1": macro_f1(confusion)}
    if train_counts is not None:
        out.update(shot_accuracy(per_class, train_counts))
    return out


@torch.no_grad()
def eval_outputs(model: torch.nn.Module, batches: Iterable, amp: bool = False
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass in eval mode, batch by batch: (logits float32, labels) on the model's device. ``amp`` (bf16
    autocast) applies on CUDA only, as in training. The model's train/eval mode is restored at the end."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for x, y in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                logits = model(x).float()
            yield logits, y
    finally:
        model.train(was_training)


def collect_logits(model: torch.nn.Module, batches: Iterable, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C), labels (N,)) on the host, in loader order; moved batch by batch, so a large evaluation set
    (iNaturalist: 8,142 classes) never holds every logit on the device."""
    pairs = [(z.cpu(), y.cpu()) for z, y in eval_outputs(model, batches, amp)]
    return torch.cat([z for z, _ in pairs]), torch.cat([y for _, y in pairs])


def collect_features(model: torch.nn.Module, batches: Iterable, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) that the head ``model.fc`` receives, labels (N,)) on the host, in loader order."""
    feats = []
    hook = model.fc.register_forward_hook(lambda module, inputs, output: feats.append(inputs[0].float().cpu()))
    try:
        labels = [y.cpu() for _, y in eval_outputs(model, batches, amp)]
    finally:
        hook.remove()
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable, num_classes: int, train_counts: Sequence[int] | None = None,
             logit_adjustment: torch.Tensor | None = None, amp: bool = False, confusion: bool = False) -> dict:
    """Evaluate ``model`` on ``batches`` of (x, y) already on the model's device. Under torchrun each process
    evaluates its shard of the test set (the loaders shard it) and the counts are summed over processes.

    ``logit_adjustment`` (C,) is added to the logits before the prediction: a post-hoc correction such as
    -tau * log(pi_s) (Menon et al. 2021) or -log(pi_s) + log(pi_t) (PC softmax, Hong et al. 2021). The
    reported ``loss`` is the plain cross-entropy of the raw logits, as in the reference code; the calibration
    (engine.eval.calibration: ``ece``, ``ece_many/medium/few``, ``classwise_ece``, ``nll``, ``reliability``) is
    that of the adjusted logits the prediction is made from. ``amp`` (bf16 autocast) applies on CUDA only, as in
    training. ``confusion``: also return the (true, predicted) count matrix as a list of rows (C x C numbers).
    Returns top1, top5, loss, per_class, mean_class_acc, macro_f1, many/medium/few, ece, ece_* and
    classwise_ece (percent), nll, reliability and ``samples``.
    """
    distributed.broadcast_buffers(model)  # every process evaluates rank 0's BatchNorm statistics
    device = next(model.parameters()).device
    matrix = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, top-5 hits, count
    calibration = CalibrationSums(num_classes, device)
    for logits, y in eval_outputs(model, batches, amp):
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        if logit_adjustment is not None:
            logits = logits + logit_adjustment
        sums[1] += topk_correct(logits, y, (5,))[0]
        sums[2] += y.numel()
        # index_add_, not bincount: bincount reads its maximum back to the host (a sync per batch on CUDA)
        cells = y * num_classes + logits.argmax(dim=1)
        matrix.index_add_(0, cells, torch.ones_like(cells))
        calibration.add(logits, y)
    for t in (matrix, sums, calibration.sums):
        distributed.all_reduce_sum(t)
    loss_sum, top5, count = sums.tolist()
    matrix = matrix.view(num_classes, num_classes).cpu().numpy()
    out = summarize_confusion(matrix, train_counts)
    out.update(top5=top5 / max(count, 1) * 100.0, loss=loss_sum / max(count, 1), samples=int(count))
    out.update(calibration.summary(None if train_counts is None else shot_groups(train_counts)))
    if confusion:
        out["confusion"] = matrix.tolist()
    return out


def format_metrics(m: dict) -> str:
    """One console line: Prec@1, Prec@5, loss, and the shot groups when present."""
    parts = [f"Prec@1 {m['top1']:.3f}", f"Prec@5 {m['top5']:.3f}", f"Loss {m['loss']:.4f}"]
    for name in ("many", "medium", "few"):
        if name in m:
            parts.append(f"{name} {'-' if m[name] is None else format(m[name], '.2f')}")
    return "  ".join(parts)
