"""Evaluation metrics against a hand-built confusion matrix."""
import numpy as np
import pytest
import torch

from engine.eval import metrics


def test_topk_correct():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    y = torch.tensor([2, 0, 0])
    top1, top2 = metrics.topk_correct(logits, y, (1, 2))
    assert top1.item() == 1 and top2.item() == 2
    # k larger than the number of classes counts every sample.
    assert metrics.topk_correct(logits, y, (5,))[0].item() == 3


def test_shot_groups_boundaries():
    # >100 many, 20..100 medium, <20 few (Liu et al. 2019).
    g = metrics.shot_groups([101, 100, 20, 19])
    assert g["many"].tolist() == [True, False, False, False]
    assert g["medium"].tolist() == [False, True, True, False]
    assert g["few"].tolist() == [False, False, False, True]


def test_summarize_confusion_hand_computed():
    conf = np.array([[8, 2, 0], [1, 3, 0], [0, 5, 5]])
    m = metrics.summarize_confusion(conf, train_counts=[500, 50, 5])
    assert m["top1"] == pytest.approx(16 / 24 * 100)
    assert m["per_class"] == [80.0, 75.0, 50.0]
    assert (m["many"], m["medium"], m["few"]) == (80.0, 75.0, 50.0)
    assert m["mean_class_acc"] == pytest.approx(205 / 3)
    # F1_c = 2TP / (2TP + FP + FN): (16/19, 6/14, 10/15)
    assert m["macro_f1"] == pytest.approx((16 / 19 + 6 / 14 + 10 / 15) / 3 * 100)


def test_macro_f1_leaves_out_classes_never_seen_nor_predicted():
    conf = np.array([[2, 0, 0], [2, 0, 0], [0, 0, 0]])  # class 1 is a label but never predicted: F1 0
    assert metrics.macro_f1(conf) == pytest.approx((4 / 6 + 0.0) / 2 * 100)
    assert metrics.macro_f1(np.eye(4, dtype=int)) == 100.0


def test_empty_shot_group_is_none():
    m = metrics.summarize_confusion(np.eye(2, dtype=int) * 3, train_counts=[500, 200])
    assert m["few"] is None and m["medium"] is None and m["many"] == 100.0


def test_evaluate_on_a_fixed_model_and_logit_adjustment():
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x + self.w

    x = torch.tensor([[2.0, 1.0], [2.0, 1.0], [0.0, 3.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 1, 1])
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]
    m = metrics.evaluate(Fixed(), batches, 2, [100, 10])
    assert m["top1"] == 75.0 and m["per_class"] == [100.0, pytest.approx(200 / 3, abs=1e-3)]
    assert m["top5"] == 100.0
    expected_loss = (torch.nn.functional.cross_entropy(x, y, reduction="sum") / 4).item()
    assert m["loss"] == pytest.approx(expected_loss, rel=1e-6)
    adj = metrics.evaluate(Fixed(), batches, 2, [100, 10], logit_adjustment=torch.tensor([0.0, 1.5]))
    # [2, 1] + [0, 1.5] now predicts class 1: class 0 loses its sample, class 1 gains one.
    assert adj["per_class"] == [0.0, 100.0] and adj["top1"] == 75.0
