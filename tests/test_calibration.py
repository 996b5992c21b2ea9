"""Calibration metrics against hand-computed values and a direct (non-streamed) float64 computation."""
import math

import numpy as np
import pytest
import torch

from engine.eval import metrics
from engine.eval.calibration import CalibrationSums, confidence_bin


class Identity(torch.nn.Module):
    """The model whose logits are its inputs."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x + self.w


def as_logits(probs):
    """Logits whose softmax is ``probs``."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


def run(probs, labels, batch=2, **kwargs):
    x, y = as_logits(probs), torch.tensor(labels)
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)]
    return metrics.evaluate(Identity(), batches, x.shape[1], **kwargs)


# Bins are ((m-1)/15, m/15]: no probability below sits on a boundary k/15.
TWO_CLASS = ([[0.9, 0.1], [0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.45, 0.55]], [0, 1, 0, 0, 1])
THREE_CLASS = ([[0.5, 0.35, 0.15], [0.25, 0.1, 0.65], [0.05, 0.9, 0.05], [0.55, 0.1, 0.35]], [0, 1, 1, 2])


def test_confidence_bins_are_right_closed():
    p = torch.tensor([0.0, 1 / 30, 0.0667, 0.5, 0.9, 1.0])
    assert confidence_bin(p).tolist() == [0, 0, 1, 7, 13, 14]


def test_ece_hand_computed():
    m = run(*TWO_CLASS)
    # bin 13 (conf 0.9): 2 samples, 1 right: 2/5 * |0.5 - 0.9|; bin 10 (0.7): 2 samples, 1 right: 2/5 * 0.2;
    # bin 8 (0.55): 1 sample, right: 1/5 * 0.45.
    assert m["ece"] == pytest.approx((0.16 + 0.08 + 0.09) * 100, abs=1e-4)
    rel = m["reliability"]
    assert rel["bins"] == 15 and rel["count"] == [0] * 8 + [1, 0, 2, 0, 0, 2, 0]
    assert rel["confidence"][13] == pytest.approx(90.0, abs=1e-4) and rel["accuracy"][13] == 50.0
    assert rel["confidence"][8] == pytest.approx(55.0, abs=1e-4) and rel["accuracy"][8] == 100.0
    assert rel["confidence"][0] is None and rel["accuracy"][14] is None


def test_perfectly_calibrated_set_has_zero_ece():
    # conf 0.7: 7 of 10 right; conf 0.75: 3 of 4 right -> every bin's accuracy equals its confidence, and for each
    # class and p_c bin the class frequency equals the mean p_c too.
    probs = [[0.7, 0.3]] * 10 + [[0.25, 0.75]] * 4
    labels = [0] * 7 + [1] * 3 + [1] * 3 + [0]
    m = run(probs, labels, batch=4)
    assert m["ece"] == pytest.approx(0.0, abs=1e-4) and m["classwise_ece"] == pytest.approx(0.0, abs=1e-4)
    assert m["top1"] == pytest.approx(10 / 14 * 100)


def test_classwise_ece_hand_computed():
    m = run(*THREE_CLASS)
    # per class, sum over its p_c bins of |sum (1[y = c] - p_c)|:
    # class 0: 0.5 + 0.25 + 0.05 + 0.55; class 1: 0.35 + |(1 - 0.1) + (0 - 0.1)| + 0.1 (the two 0.1 share a bin);
    # class 2: 0.15 + 0.65 + 0.05 + 0.65. Divided by N = 4, averaged over C = 3.
    assert m["classwise_ece"] == pytest.approx((1.35 + 1.25 + 1.5) / 4 / 3 * 100, abs=1e-4)
    assert m["ece"] == pytest.approx((0.5 + 0.65 + 0.1 + 0.55) / 4 * 100, abs=1e-4)


def test_nll_is_the_mean_cross_entropy_of_the_prediction_logits():
    m = run(*TWO_CLASS)
    expected = -(math.log(0.9) + math.log(0.1) + math.log(0.7) + math.log(0.3) + math.log(0.55)) / 5
    assert m["nll"] == pytest.approx(expected, rel=1e-5)
    assert m["loss"] == pytest.approx(expected, rel=1e-5)  # no adjustment: the raw loss is the same


def test_ece_per_shot_group_by_true_class():
    m = run(*THREE_CLASS, train_counts=[500, 50, 5])  # class 0 many, 1 medium, 2 few
    assert m["ece_many"] == pytest.approx(50.0, abs=1e-4)                  # a: conf 0.5, right
    assert m["ece_medium"] == pytest.approx((0.65 + 0.1) / 2 * 100, abs=1e-4)  # b: 0.65 wrong; c: 0.9 right
    assert m["ece_few"] == pytest.approx(55.0, abs=1e-4)                   # d: 0.55 wrong
    merged = run(*THREE_CLASS, train_counts=[500, 500, 50])
    assert merged["ece_many"] == pytest.approx((0.5 + 0.65 + 0.1) / 3 * 100, abs=1e-4) and merged["ece_few"] is None
    assert "ece_many" not in run(*THREE_CLASS)  # no training counts, no groups


def direct(logits, labels, counts, bins=15):
    """Every calibration metric at once over all logits, in float64 with explicit loops."""
    z = logits.double().numpy()
    y = labels.numpy()
    n, num_classes = z.shape
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    conf, right = p.max(axis=1), p.argmax(axis=1) == y
    to_bin = lambda q: np.clip(np.ceil(q * bins) - 1, 0, bins - 1).astype(int)  # noqa: E731

    def ece(keep):
        b = to_bin(conf[keep])
        return sum(abs(right[keep][b == m].sum() - conf[keep][b == m].sum()) for m in range(bins)) / keep.sum() * 100

    classwise = np.mean([sum(abs(((y == c) - p[:, c])[to_bin(p[:, c]) == m].sum()) for m in range(bins)) / n
                         for c in range(num_classes)]) * 100
    groups = metrics.shot_groups(counts)
    out = {"ece": ece(np.ones(n, bool)), "classwise_ece": classwise, "nll": -np.log(p[np.arange(n), y]).mean(),
           **{f"ece_{g}": ece(mask[y]) for g, mask in groups.items()},
           "count": [int((to_bin(conf) == m).sum()) for m in range(bins)]}
    confusion = np.zeros((num_classes, num_classes), int)
    np.add.at(confusion, (y, p.argmax(axis=1)), 1)
    return out, confusion


@pytest.mark.parametrize("adjust", [False, True])
def test_streamed_values_equal_a_direct_computation(adjust):
    gen = torch.Generator().manual_seed(3)
    num_classes, n = 7, 261
    logits = torch.randn(n, num_classes, generator=gen) * 3
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    counts = [400, 150, 90, 40, 20, 12, 3]
    adjustment = torch.linspace(-2.0, 2.0, num_classes) if adjust else None
    batches = [(logits[i:i + 64], labels[i:i + 64]) for i in range(0, n, 64)]  # 5 batches, the last of 5
    m = metrics.evaluate(Identity(), batches, num_classes, counts, logit_adjustment=adjustment, confusion=True)
    expected, confusion = direct(logits if adjustment is None else logits + adjustment, labels, counts)
    for key in ("ece", "classwise_ece", "ece_many", "ece_medium", "ece_few"):
        assert m[key] == pytest.approx(expected[key], abs=1e-4), key
    assert m["nll"] == pytest.approx(expected["nll"], rel=1e-5)
    assert m["reliability"]["count"] == expected["count"] and sum(expected["count"]) == n
    assert m["confusion"] == confusion.tolist()
    raw_loss = torch.nn.functional.cross_entropy(logits.double(), labels).item()
    assert m["loss"] == pytest.approx(raw_loss, rel=1e-5)  # the raw logits' loss, adjusted or not
    if adjust:
        plain, _ = direct(logits, labels, counts)
        assert abs(plain["ece"] - m["ece"]) > 1.0 and abs(plain["nll"] - m["nll"]) > 0.1


def test_confusion_only_when_asked_and_sums_in_one_buffer():
    assert "confusion" not in run(*TWO_CLASS)
    sums = CalibrationSums(1000, torch.device("cpu"))
    assert sums.sums.numel() == 4 * 1000 * 15 + 1  # what one all-reduce sums under torchrun
