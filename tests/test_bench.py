"""Smoke tests of the benchmarks at tiny size: they run, print both paths and a positive ratio."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import bench_imagenet  # noqa: E402
import bench_train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_train_side_by_side(cifar10_root, capsys):
    out = bench_train.main(["--data_path", cifar10_root, "--imb_factor", "0.1", "-a", "resnet20", "--epochs", "2",
                            "-b", "64", "-j", "0", "--device", "cpu"])
    assert out["ratio"] > 0 and out["baseline"]["images_per_s"] > 0 and out["fast"]["images_per_s"] > 0
    text = capsys.readouterr().out
    assert "(a) DataLoader + PIL" in text and "(b) device-resident" in text and "ratio (b)/(a)" in text


def test_bench_imagenet_smoke(capsys):
    bench_imagenet.main(["--arch", "resnet10", "--batch", "4", "--steps", "2", "--size", "32", "--device", "cpu",
                         "--workers", "0", "--images", "16"])
    assert "ratio" in capsys.readouterr().out
