"""Calibration of the softmax confidences: ECE (overall and per shot group), classwise ECE, NLL, reliability data.

* **ECE** (Guo et al. 2017, "On Calibration of Modern Neural Networks"): a sample's confidence is its largest
  softmax probability, its prediction the argmax; samples fall into M = 15 equal-width confidence bins
  B_m = ((m-1)/M, m/M] (a confidence of exactly 0 joins the first), and
  ECE = sum_m |B_m|/N |acc(B_m) - conf(B_m)|.
* **ECE per shot group**: the same over the samples whose *true* class is in the group (N the group's samples).
* **classwise ECE** (Kull et al. 2019, "Beyond temperature scaling"): for every class c each sample falls into a
  bin by its p_c, and classwise-ECE = 1/C sum_c sum_m |B_cm|/N |freq_c(B_cm) - conf_c(B_cm)|, freq_c the
  fraction of class-c samples in the bin and conf_c its mean p_c (every class counts, with test samples or not).
* **NLL**: the mean cross-entropy (nats).

ECE, classwise ECE and the reliability data are in percent (like the accuracies); NLL in nats. Everything is
summed on the device in one float64 buffer (per true class and confidence bin: count, confidence and correct
sums; per class and p_c bin: the sum of 1[y = c] - p_c; the NLL sum), so a pass costs no host sync per batch,
torchrun's processes add their buffers in one all-reduce, and the memory is 4 * C * M + 1 numbers.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

BINS = 15


def confidence_bin(p: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Index of the bin ((m-1)/M, m/M] holding each probability (0 goes to the first bin)."""
    return (p * bins).ceil().long().sub_(1).clamp_(0, bins - 1)


class CalibrationSums:
    """Running calibration sums of one evaluation pass (module docstring)."""

    def __init__(self, num_classes: int, device: torch.device, bins: int = BINS):
        self.num_classes, self.bins = num_classes, bins
        cells = num_classes * bins
        self.sums = torch.zeros(4 * cells + 1, dtype=torch.float64, device=device)
        self.by_class = self.sums[:3 * cells].view(num_classes * bins, 3)  # count, confidence, correct
        self.classwise = self.sums[3 * cells:4 * cells]                      # sum of 1[y = c] - p_c
        self.nll = self.sums[4 * cells:]

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of (logits (B, C) that the prediction is made from, labels (B,))."""
        log_p = logits.float().log_softmax(dim=1)
        probs = log_p.exp()
        pred = logits.argmax(dim=1)  # the prediction evaluate() counts (not probs' argmax, which ties can move)
        conf = probs.gather(1, pred[:, None]).squeeze(1)
        cells = target * self.bins + confidence_bin(conf, self.bins)
        values = torch.stack([torch.ones_like(conf), conf, (pred == target).float()], dim=1)
        self.by_class.index_add_(0, cells, values.double())
        residual = -probs
        residual.scatter_add_(1, target[:, None], torch.ones_like(conf)[:, None])
        class_cells = torch.arange(self.num_classes, device=logits.device) * self.bins + confidence_bin(probs, self.bins)
        self.classwise.index_add_(0, class_cells.flatten(), residual.flatten().double())
        self.nll -= log_p.gather(1, target[:, None]).sum().double()

    def summary(self, groups: Mapping[str, np.ndarray] | None = None) -> dict:
        """``ece``, ``classwise_ece`` (percent), ``nll`` and ``reliability``; with ``groups`` (shot group -> class
        mask) also ``ece_<group>`` (None for a group without test samples). Reads the sums to the host."""
        sums = self.sums.cpu().numpy()
        cells = self.num_classes * self.bins
        by_class = sums[:3 * cells].reshape(self.num_classes, self.bins, 3)
        per_bin = by_class.sum(axis=0)
        count = per_bin[:, 0].sum()
        out = {"ece": expected_calibration_error(per_bin),
               "classwise_ece": float(np.abs(sums[3 * cells:4 * cells]).reshape(self.num_classes, self.bins)
                                      .sum(axis=1).mean() / max(count, 1) * 100.0),
               "nll": float(sums[-1] / max(count, 1)),
               "reliability": reliability(per_bin)}
        for name, mask in (groups or {}).items():
            out[f"ece_{name}"] = expected_calibration_error(by_class[np.asarray(mask)].sum(axis=0))
        return out


def expected_calibration_error(per_bin: np.ndarray) -> float | None:
    """ECE (percent) from per-bin (count, confidence sum, correct sum) rows; None without samples."""
    count = per_bin[:, 0].sum()
    if count == 0:
        return None
    return float(np.abs(per_bin[:, 2] - per_bin[:, 1]).sum() / count * 100.0)


def reliability(per_bin: np.ndarray) -> dict:
    """The reliability diagram: per confidence bin its sample count, mean confidence and accuracy (percent; None
    for an empty bin)."""
    count = per_bin[:, 0]

    def mean(column):
        return [round(float(s / n * 100.0), 4) if n > 0 else None for s, n in zip(per_bin[:, column], count)]

    return {"bins": len(per_bin), "count": [int(n) for n in count], "confidence": mean(1), "accuracy": mean(2)}
