"""Rotation self-supervised pre-training (pretrain_rot.py) and the SSP initialisation of train.py: exact
rotations and balanced labels, the deterministic rotation evaluation, a pre-train -> fine-tune run end to end,
wrong-architecture errors, and the configs/ssp files."""
import os
from glob import glob
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

import models
import pretrain_rot
import train
from conftest import REPO_ROOT
from engine import config
from engine.data.augment import rotate_batch
from engine.train.checkpoint import load_checkpoint, load_pretrained_backbone
from engine.data.datasets import DATASETS, make_loader
from engine.eval.metrics import evaluate
from engine.methods import RotationPrediction, rotation_labels


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("batch", [1, 3, 4, 7, 128, 130])
def test_rotation_labels_are_upstreams_nearly_balanced_draw(batch):
    torch.manual_seed(0)
    reps = -(-batch // 4) + 1  # copies of [0, 1, 2, 3] before cutting to the batch
    draws = [rotation_labels(batch, "cpu") for _ in range(20)]
    for k in draws:
        counts = torch.bincount(k, minlength=4)
        assert k.shape == (batch,) and counts.sum() == batch and k.min() >= 0 and k.max() <= 3
        assert counts.max() <= reps and counts.min() >= reps - (4 * reps - batch)
    if batch >= 4:
        assert len({tuple(k.tolist()) for k in draws}) > 1  # drawn afresh for every batch
    torch.manual_seed(0)
    assert torch.equal(rotation_labels(batch, "cpu"), draws[0])  # the run seed fixes the stream


def test_rotate_batch_transform_is_an_exact_rot90_with_matching_labels():
    torch.manual_seed(3)
    x, y = torch.randn(16, 3, 8, 8), torch.arange(16)
    rotate = RotationPrediction(nn.Identity(), nn.CrossEntropyLoss())
    rotate.start_epoch(4)
    rotated, k = rotate.targets(x, y)
    again = RotationPrediction(nn.Identity(), nn.CrossEntropyLoss())
    again.start_epoch(4)
    assert torch.equal(again.targets(x, y)[1], k)  # the same epoch draws the same rotations (exact resume)
    assert set(k.tolist()) == {0, 1, 2, 3}
    for i in range(16):
        assert torch.equal(rotated[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))
        assert torch.equal(torch.rot90(rotated[i], -int(k[i]), dims=(1, 2)), x[i])


def test_rotation_sets_hold_all_four_rotations_and_balanced_counts():
    images = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    test = pretrain_rot.rotated_test_set(SimpleNamespace(data=images))
    assert test.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3] and test.get_cls_num_list() == [3, 3, 3, 3]
    as_torch = torch.from_numpy(images).permute(0, 3, 1, 2)
    for k in range(4):
        expected = rotate_batch(as_torch, torch.full((3,), k)).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(test.data[3 * k:3 * k + 3], expected)
        assert np.array_equal(test.data[3 * k], np.rot90(images[0], k))
    train_images = np.zeros((10, 8, 8, 3), np.uint8)
    train_set = pretrain_rot.rotation_train_set(SimpleNamespace(data=train_images))
    assert train_set.get_cls_num_list() == [3, 3, 2, 2] and np.shares_memory(train_set.data, train_images)


class CornerModel(nn.Module):
    """Reads the rotation of an image whose only bright pixel starts top-left: a k * 90 degree CCW turn moves
    it to top-left, bottom-left, bottom-right, top-right for k = 0, 1, 2, 3."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(4))

    def forward(self, x):
        s = x.sum(dim=1)
        return torch.stack([s[:, 0, 0], s[:, -1, 0], s[:, -1, -1], s[:, 0, -1]], dim=1) + self.bias


class ConstantModel(CornerModel):
    def forward(self, x):
        return self.bias.expand(x.shape[0], 4)


def test_rotation_evaluation_scores_every_test_image_under_all_four_rotations():
    images = np.zeros((5, 32, 32, 3), np.uint8)
    images[:, 0, 0] = 255
    spec = DATASETS["cifar10"]
    loader = make_loader(pretrain_rot.rotated_test_set(SimpleNamespace(data=images)), spec, torch.device("cpu"),
                         train=False, eval_batch_size=6, loader="device")
    perfect = evaluate(CornerModel(), loader, 4)
    assert perfect["top1"] == 100.0 and perfect["per_class"] == [100.0] * 4
    always_zero = ConstantModel()
    with torch.no_grad():
        always_zero.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    constant = evaluate(always_zero, loader, 4)
    assert constant["top1"] == 25.0 and constant["per_class"] == [100.0, 0.0, 0.0, 0.0]
    assert evaluate(always_zero, loader, 4) == constant  # no random rotation: the same number every time


def test_parser_defaults_and_store_name():
    parser = pretrain_rot.build_parser()
    a = pretrain_rot.resolve_defaults(parser.parse_args([]))
    assert (a.arch, a.gpu, a.exp_str, a.epochs, a.batch_size, a.lr, a.weight_decay, a.momentum) == \
        ("resnet32", None, "pretrain_rot", 200, 128, 0.1, 2e-4, 0.9)
    assert (a.loss_type, a.train_rule, a.lr_schedule, a.milestones, a.warmup_epochs) == \
        ("CE", "None", "step", [160, 180], 5)
    assert pretrain_rot.RUN.run_name(vars(a)) == "cifar10_resnet32_CE_None_exp_0.01_pretrain_rot"
    assert "resnet50" in parser.format_help() and "issue #22" in parser.format_help()


def run_flags(root, tmp_path, *extra):
    return ["--dataset", "cifar10", "--data_path", root, "--imb_type", "none", "--epochs", "1", "-b", "8",
            "--device", "cpu", "--seed", "0", "--root_log", str(tmp_path / "log"),
            "--root_model", str(tmp_path / "ckpt"), "-a", "resnet20", "--eval_batch_size", "80", *extra]


def test_pretrain_rot_then_train_from_its_checkpoint(tiny_cifar10, tmp_path, capsys):
    summary = pretrain_rot.main(run_flags(tiny_cifar10, tmp_path))
    name = "cifar10_resnet20_CE_None_none_0.01_pretrain_rot"
    path = str(tmp_path / "ckpt" / name / "ckpt.pth.tar")
    ckpt = load_checkpoint(path)
    assert ckpt["num_classes"] == 4 and ckpt["state_dict"]["fc.weight"].shape == (4, 64)
    assert ckpt["cls_num_list"] == [10, 10, 10, 10]  # the loss saw balanced rotation classes, not the 10 labels
    last = summary["last"]
    assert len(last["per_class"]) == 4 and (last["top1"] * 160 / 100) == pytest.approx(round(last["top1"] * 1.6))
    assert (tmp_path / "log" / name / "final.json").exists()
    evaluated = pretrain_rot.main(run_flags(tiny_cifar10, tmp_path, "-e", "--resume", path))
    assert evaluated["top1"] == last["top1"] and evaluated["per_class"] == last["per_class"]

    model = models.build_model("resnet20", 10)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained_backbone(model, path)
    assert report["missing"] == ["fc.weight", "fc.bias"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh[k] if k.startswith("fc.") else ckpt["state_dict"][k]), k
    assert not torch.equal(model.layer3[2].conv2.weight, fresh["layer3.2.conv2.weight"])

    capsys.readouterr()
    train.main(run_flags(tiny_cifar10, tmp_path, "--loss_type", "LDAM", "--train_rule", "DRW",
                         "--pretrained_model", path))
    out = capsys.readouterr().out
    assert f"=> self-supervised init from {path}: loaded {len(report['loaded'])} tensors, fresh: ['fc.weight']" in out
    assert (tmp_path / "ckpt" / "cifar10_resnet20_LDAM_DRW_none_0.01_ss_pretrained" / "ckpt.pth.tar").exists()

    for arch, message in (("resnet32", "lacks backbone weights"), ("resnet10", "another architecture")):
        with pytest.raises(SystemExit):  # refused before the run starts (exit status 2)
            train.main(run_flags(tiny_cifar10, tmp_path, "-a", arch, "--pretrained_model", path))
        err = capsys.readouterr().err
        assert f"--pretrained_model: {path!r} (a checkpoint of resnet20" in err and message in err


def test_ssp_configs_load_and_point_at_their_pretraining_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the relative checkpoint paths of the configs resolve here
    paths = sorted(glob(str(REPO_ROOT / "configs" / "ssp" / "*.yaml")))
    pretrain = [p for p in paths if os.path.basename(p).startswith("pretrain_rot_")]
    finetune = [p for p in paths if p not in pretrain]
    checkpoints = {}
    for path in pretrain:
        a = config.parse(pretrain_rot.build_parser(), ["--config", path])
        assert (a.arch, a.loss_type, a.train_rule, a.epochs, a.batch_size, a.lr) == \
            ("resnet32", "CE", "None", 200, 128, 0.1)
        checkpoints[(a.dataset, a.imb_factor)] = os.path.join(a.root_model, pretrain_rot.RUN.run_name(vars(a)), "ckpt.pth.tar")
    assert set(checkpoints) == {(d, f) for d in ("cifar10", "cifar100") for f in (0.01, 0.02, 0.1)}
    for ckpt in checkpoints.values():
        os.makedirs(os.path.dirname(ckpt))
        open(ckpt, "wb").close()
    rows = set()
    for path in finetune:
        a = config.parse(train.build_parser(), ["--config", path])  # validates --pretrained_model exists
        assert a.pretrained_model == checkpoints[(a.dataset, a.imb_factor)], path
        assert (a.arch, a.epochs, a.batch_size, a.lr, a.weight_decay) == ("resnet32", 200, 128, 0.1, 2e-4)
        rows.add((a.loss_type, a.train_rule))
    assert len(finetune) == 18 and rows == {("CE", "None"), ("CE", "Reweight"), ("LDAM", "DRW")}


def test_imagenet_rotation_pretraining_on_image_files(tmp_path):
    from imagenet_inat.synthetic import generate
    root = tmp_path / "syn"
    generate(str(root), classes=4, max_per_class=10, min_per_class=2, val=2, test=1, size=32)
    args = pretrain_rot.resolve_defaults(pretrain_rot.build_parser().parse_args(
        ["--dataset", "imagenet", "--list_file", __file__, "--val_list_file", __file__]))
    assert (args.arch, args.loader, args.eval_batch_size) == ("resnet50", "torch", 256)  # the reference's resnet50
    argv = ["--dataset", "imagenet", "--data_path", str(root), "--list_file", str(root / "ImageNet_LT_train.txt"),
            "--val_list_file", str(root / "ImageNet_LT_val.txt"), "--crop_size", "32", "--resize_size", "32",
            "-a", "resnet20", "--epochs", "1", "-b", "8", "-j", "0", "--device", "cpu", "--seed", "0",
            "--root_log", str(tmp_path / "log"), "--root_model", str(tmp_path / "ckpt")]
    summary = pretrain_rot.main(argv)
    assert summary["last"]["samples"] == 4 * 2 * 4  # every val image under the four rotations
    assert summary["last"]["per_class"] is not None and len(summary["last"]["per_class"]) == 4
    # the reference's run name for image-list data: no long-tail fields
    ckpt = load_checkpoint(str(tmp_path / "ckpt" / "imagenet_resnet20_CE_None_pretrain_rot" / "ckpt.pth.tar"))
    assert ckpt["state_dict"]["fc.weight"].shape[0] == 4


def test_rotated_image_file_set_rotates_each_item_and_reads_each_image_once():
    images = [torch.arange(9.0).view(1, 3, 3), torch.ones(1, 3, 3)]
    reads = []

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            reads.append(i)
            return images[i], 7

    rotated = pretrain_rot.RotatedDataset(Files())
    assert len(rotated) == 8 and rotated.targets == [0, 1, 2, 3, 0, 1, 2, 3]
    items = [rotated[j] for j in range(8)]
    for j, (image, k) in enumerate(items):  # item 4 i + k: image i rotated by k * 90 degrees
        assert k == j % 4 and torch.equal(image, torch.rot90(images[j // 4], k, dims=(1, 2)))
    assert reads == [0, 1]


@pytest.mark.parametrize("extra, message", [
    (["--loader", "device"], "--loader device: --dataset imagenet is read from image files"),
    (["--list_file", "/nonexistent.txt"], "--list_file: no split file '/nonexistent.txt'"),
])
def test_imagenet_rotation_refuses_bad_flags(extra, message, capsys):
    with pytest.raises(SystemExit):
        pretrain_rot.main(["--dataset", "imagenet", "--val_list_file", __file__, *extra])
    assert message in capsys.readouterr().err
