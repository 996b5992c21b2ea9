"""Pseudo-labelling: the labelling pass of semi-supervised long-tailed learning (Yang & Xu 2020, sec. 3;
docs/protocols.md#semi-supervised-pipeline).

A base classifier trained on the labeled long-tailed set D_L labels the whole unlabeled pool once; the
semi-supervised data sets (``engine.data.datasets.DatasetSpec.build_semi``) draw D_U from the pool and train on D_L with true
labels plus D_U with these labels (one round of self-training). The pools (``DatasetSpec.pools``, read with
``DatasetSpec.load_pool``) and the pseudo-label files (engine/data/pseudolabel_files.py) belong to the data layer.

Prediction: y_hat = argmax_c z_c, confidence = max_c softmax(z)_c, with z the logits of the test-time input
(x / 255 - mean) / std. With a confidence threshold t, y_hat = -1 where confidence < t.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from engine.data.augment import normalization, normalize
from engine.eval.metrics import eval_outputs


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, mean: Sequence[float], std: Sequence[float],
            batch_size: int, progress: bool = True, logit_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Argmax prediction (int64) and max-softmax confidence (float32) of every image, in order.

    Batches of ``batch_size`` uint8 images are copied to the model's device and normalised there (the pool may
    not fit on the device); results stay on the device until the end (one host synchronisation). The forward
    pass is the evaluation's (``engine.eval.metrics.eval_outputs``). ``logit_scale`` multiplies the logits before
    the softmax: LDAM's s for a cosine head, whose raw cosines would give near-uniform confidences.
    """
    device = next(model.parameters()).device
    mean255, std255 = normalization(mean, std, device)
    starts = tqdm(range(0, len(images), batch_size), desc="pseudo-labelling", disable=not progress,
                  dynamic_ncols=True)
    batches = ((normalize(torch.from_numpy(images[s:s + batch_size]).to(device, non_blocking=True)
                          .permute(0, 3, 1, 2), mean255, std255), None) for s in starts)
    predictions, confidences = [], []
    for logits, _ in eval_outputs(model, batches):
        confidence, prediction = (logits * logit_scale).softmax(dim=1).max(dim=1)
        predictions.append(prediction)
        confidences.append(confidence)
    if not predictions:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (torch.cat(predictions).cpu().numpy().astype(np.int64),
            torch.cat(confidences).cpu().numpy().astype(np.float32))


def apply_threshold(predictions: np.ndarray, confidence: np.ndarray, threshold: float | None) -> np.ndarray:
    """``predictions`` with -1 where ``confidence < threshold`` (unchanged when threshold is None)."""
    if threshold is None:
        return predictions
    return np.where(confidence < threshold, -1, predictions).astype(np.int64)


def describe(predictions: np.ndarray, num_classes: int, ground_truth: np.ndarray | None) -> str:
    """Counts per predicted class, the number below the threshold (-1) and, when the pool has true labels, the
    accuracy of the pseudo-labels that were kept."""
    kept = predictions >= 0
    counts = np.bincount(predictions[kept], minlength=num_classes).tolist()
    line = f"{len(predictions)} pool images; per predicted class {counts}; below threshold {int((~kept).sum())}"
    if ground_truth is not None and kept.any():
        accuracy = 100.0 * float((predictions[kept] == ground_truth[kept]).mean())
        line += f"; pseudo-label accuracy against the true labels {accuracy:.2f}%"
    return line
