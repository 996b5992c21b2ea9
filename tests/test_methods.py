"""The method seam: a new two-view method is one small class, trained by the real runner through the
multi-view device loader, with its own training metric in metrics.jsonl."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import train
from engine import config
from engine.data.datasets import DATASETS
from engine.train.experiment import run_classification
from engine.methods import Classification

pytestmark = pytest.mark.usefixtures("one_thread")


class TwoViewAgreement(Classification):
    """Test-only method: cross-entropy averaged over two augmented views of each image, and the share of images
    whose two views get the same prediction (``agree``) as its own training metric."""

    views = 2
    metric_names = ("loss", "top1", "agree")
    percent_metrics = frozenset({"top1", "agree"})
    seen_shapes: list = []

    def forward(self, x, y):
        type(self).seen_shapes.append(tuple(x.shape))
        logits = [self.net(view) for view in x.unbind(dim=1)]
        loss = sum(F.cross_entropy(z, y) for z in logits) / len(logits)
        pred = [z.detach().argmax(1) for z in logits]
        return loss, [(pred[0] == y).sum(), (pred[0] == pred[1]).sum()]


def run_method(root, tmp_path, method_class, *flags):
    """``method_class`` trained by the runner as train.py would (tiny CIFAR-10-LT, resnet20, one CPU epoch); returns
    the summary, the run name and the training set."""
    argv = ["--dataset", "cifar10", "--data_path", root, "--imb_factor", "0.1", "-a", "resnet20", "--epochs", "1",
            "-b", "64", "--seed", "0", "--device", "cpu", "--root_log", str(tmp_path / "log"),
            "--root_model", str(tmp_path / "ckpt"), *flags]
    args = config.parse(train.build_parser(), argv)
    spec, data, name = DATASETS[args.dataset], config.dataset_kwargs(args), train.RUN.run_name(vars(args))
    train_set = spec.build("train", **data)
    summary = run_classification(config.classifier_run(args, name), spec, train_set, spec.build("test", **data),
                                 method_class)
    return summary, name, train_set


def test_a_two_view_method_trains_one_epoch_through_the_runner(cifar10_root, tmp_path):
    TwoViewAgreement.seen_shapes.clear()
    summary, name, train_set = run_method(cifar10_root, tmp_path, TwoViewAgreement, "--exp_str", "twoview")
    assert TwoViewAgreement.seen_shapes[0] == (64, 2, 3, 32, 32)  # (B, views, C, H, W) from the device loader
    assert sum(s[0] for s in TwoViewAgreement.seen_shapes) == len(train_set)
    record = json.loads(open(os.path.join(tmp_path, "log", name, "metrics.jsonl")).readline())
    assert 0.0 <= record["train_agree"] <= 100.0 and "train_top1" in record and record["train_loss"] > 0
    assert summary["epochs"] == 1 and os.path.isfile(os.path.join(tmp_path, "ckpt", name, "ckpt.pth.tar"))


def test_the_torch_loader_refuses_a_method_that_needs_two_views(cifar10_root, tmp_path):
    with pytest.raises(ValueError, match="needs 2 views"):
        run_method(cifar10_root, tmp_path, TwoViewAgreement, "--loader", "torch", "-j", "0")


class PoisonsBatchNorm(Classification):
    """Test-only: a finite loss, but the BatchNorm running variance turns NaN after the first step."""

    def train_step(self, x, y, optimizer):
        out = super().train_step(x, y, optimizer)
        for m in self.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(float("nan"))
                break
        return out


def test_a_non_finite_model_is_never_checkpointed(cifar10_root, tmp_path):
    with pytest.raises(FloatingPointError, match=r"non-finite values in 1 tensors \(bn1.running_var\); not saved"):
        run_method(cifar10_root, tmp_path, PoisonsBatchNorm)
    assert not list((tmp_path / "ckpt").rglob("*.pth.tar"))
