"""imagenet_inat/: split files, decoding, samplers, tau-norm, cRT freezing, the two-stage runs, DDP (tiny data)."""
import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import models
from engine.train import distributed
from engine.train.checkpoint import load_checkpoint
from engine.config import load_yaml_defaults
from engine.train.runlog import RunLog
from imagenet_inat import main as iin
from imagenet_inat import reference_config
from imagenet_inat.datasets import LT_DATASETS, ListDataset, list_transform, read_split_file
from engine.methods import Classification
from imagenet_inat.heads import freeze_backbone, tau_normalized
from engine.data.samplers import ShardSampler
from imagenet_inat.samplers import SAMPLERS, build_sampler, shard_union
from imagenet_inat.synthetic import class_counts, generate

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "imagenet_inat" / "config"
SYN = CONFIGS / "synthetic"
CLASSES = 6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_lt")
    generate(str(root), classes=CLASSES, max_per_class=24, min_per_class=2, val=3, test=3, size=32)
    return str(root)


def tiny(root, log_dir, *extra):
    """Flags shrinking a synthetic config to seconds on a CPU."""
    return ["--data_root", root, "--num_classes", str(CLASSES), "--crop_size", "32", "--resize_size", "32",
            "--batch_size", "16", "--epochs", "1", "--workers", "0", "--device", "cpu", "--seed", "0",
            "--eval_batch_size", "64", "--log_dir", str(log_dir), *extra]


@pytest.fixture(scope="module")
def stage1(syn_root, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("feat_uniform")
    summary = iin.main(["--cfg", str(SYN / "feat_uniform.yaml"), *tiny(syn_root, log_dir)])
    return str(log_dir), summary


def state(path):
    return load_checkpoint(str(path))["state_dict"]


# -- split files and decoding --------------------------------------------------------------------------------
def test_read_split_file_parses_lines(tmp_path):
    f = tmp_path / "split.txt"
    f.write_text("train/a/1.jpg 3\n\ntrain/b/2.JPEG 0\n")
    paths, labels = read_split_file(str(f))
    assert paths == ["train/a/1.jpg", "train/b/2.JPEG"] and labels.tolist() == [3, 0] and labels.dtype == np.int64


@pytest.mark.parametrize("text, message", [
    ("a.jpg\n", r"split\.txt:1: expected"), ("a.jpg 1\nb.jpg x\n", r":2: expected"), ("a.jpg 1 2\n", ":1: expected"),
    ("\n", "lists no image"), ("a.jpg -1\n", "negative label")])
def test_read_split_file_errors_name_file_and_line(tmp_path, text, message):
    f = tmp_path / "split.txt"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_split_file(str(f))
    with pytest.raises(FileNotFoundError, match="README"):
        read_split_file(str(tmp_path / "absent.txt"))


def test_list_dataset_decoders_agree_and_errors_are_clear(syn_root, tmp_path):
    split = os.path.join(syn_root, "ImageNet_LT_val.txt")
    as_tensor = ListDataset(syn_root, split, decode="tensor")
    img, label = as_tensor[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32) and label == 0
    pil, _ = ListDataset(syn_root, split)[0]
    # Both are libjpeg decodes of the same file.
    assert np.abs(np.asarray(pil).astype(int) - img.permute(1, 2, 0).numpy().astype(int)).max() <= 2
    assert as_tensor.get_cls_num_list() == [3] * CLASSES
    bad = tmp_path / "bad.txt"
    bad.write_text("val/none.jpg 0\nbroken.jpg 1\n")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    data = ListDataset(str(tmp_path), str(bad), decode="tensor")
    with pytest.raises(FileNotFoundError, match="missing under the data root.*--data_root"):
        data[0]
    with pytest.raises(ValueError, match="broken.jpg.*cannot be decoded"):
        data[1]


def test_list_transforms_output_and_colour_jitter_only_on_imagenet():
    img = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    spec = LT_DATASETS["ImageNet_LT"]
    x = list_transform(spec, train=True, crop=24, resize=28)(img)
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    # Evaluation: shorter side to 28, centre 24x24 crop, (x/255 - mean) / std.
    y = list_transform(spec, train=False, crop=24, resize=28)(torch.full((3, 40, 50), 255, dtype=torch.uint8))
    assert y.shape == (3, 24, 24)
    np.testing.assert_allclose(y[:, 0, 0].numpy(), (1 - np.array(spec.mean)) / np.array(spec.std), rtol=1e-5)
    names = lambda s: [type(t).__name__ for t in list_transform(LT_DATASETS[s], True).transforms]
    assert "ColorJitter" in names("ImageNet_LT") and "ColorJitter" not in names("iNaturalist18")
    assert LT_DATASETS["iNaturalist18"].mean == (0.466, 0.471, 0.380)


# -- synthetic data -------------------------------------------------------------------------------------------
def test_synthetic_long_tail_profile(syn_root):
    # n_c = floor(max * (min/max)^(c/(C-1))): 64 * (1/16)^(1/2) = 16.
    assert class_counts(3, 64, 4) == [64, 16, 4]
    assert class_counts(CLASSES, 24, 2) == [24, 14, 8, 5, 3, 2]
    _, train = read_split_file(os.path.join(syn_root, "ImageNet_LT_train.txt"))
    assert np.bincount(train).tolist() == [24, 14, 8, 5, 3, 2]
    for split in ("val", "test"):
        paths, labels = read_split_file(os.path.join(syn_root, f"ImageNet_LT_{split}.txt"))
        assert np.bincount(labels).tolist() == [3] * CLASSES
        assert all(os.path.isfile(os.path.join(syn_root, p)) for p in paths)
    with pytest.raises(ValueError, match="--min <= --max"):
        class_counts(5, 2, 4)


def test_synthetic_classes_have_distinct_colours(syn_root):
    data = ListDataset(syn_root, os.path.join(syn_root, "ImageNet_LT_train.txt"), decode="tensor")
    means = {}
    for i in range(len(data)):
        img, y = data[i]
        means.setdefault(y, []).append(img.float().mean(dim=(1, 2)))
    centres = torch.stack([torch.stack(v).mean(0) for _, v in sorted(means.items())])
    distances = torch.cdist(centres, centres) + torch.eye(CLASSES) * 1e3
    assert distances.min() > 20  # mean RGB of two classes differ by more than 20 grey levels


# -- samplers -------------------------------------------------------------------------------------------------
COUNTS = [900, 100, 36, 4]
LABELS = np.repeat(np.arange(4), COUNTS)


def draws(name, epochs=10):
    sampler = build_sampler(name, LABELS, seed=3)
    out = []
    for e in range(epochs):
        sampler.set_epoch(e)
        out.append(LABELS[list(sampler)])
    return np.bincount(np.concatenate(out), minlength=4)


def test_sampler_class_frequencies():
    n = len(LABELS) * 10
    assert draws("instance").tolist() == [c * 10 for c in COUNTS]  # a permutation per epoch
    # Class-aware: every pass over the classes gives each class 4 draws.
    assert np.abs(draws("class_aware") - n / 4).max() <= 4 * 10
    # Square root: p_c = sqrt(n_c) / sum sqrt = [30, 10, 6, 2] / 48; 4-sigma binomial tolerance.
    p = np.array([30, 10, 6, 2]) / 48
    assert np.all(np.abs(draws("sqrt") - n * p) <= 4 * np.sqrt(n * p * (1 - p)))


def test_class_aware_order_structure():
    labels = np.repeat(np.arange(3), [10, 5, 2])
    order = build_sampler("class_aware", labels, seed=0).epoch_order()
    assert len(order) == len(labels)
    blocks = labels[order][:16].reshape(4, 4)
    assert all(len(set(b)) == 1 for b in blocks)  # 4 consecutive draws from one class
    assert sorted(blocks[:3, 0].tolist()) == [0, 1, 2]  # a pass visits every class once
    # With 5 draws per visit, class 1's first visit is its whole shuffled cycle (images 10..14).
    seq = build_sampler("class_aware", labels, seed=0, samples_per_class=5).epoch_order()
    assert sorted(seq[labels[seq] == 1][:5].tolist()) == list(range(10, 15))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_seeded_and_sharded_like_one_process(name, monkeypatch):
    labels = np.repeat(np.arange(4), [20, 10, 5, 3])
    sampler = build_sampler(name, labels, seed=7)
    sampler.set_epoch(2)
    whole = sampler.epoch_order()
    again = build_sampler(name, labels, seed=7)
    again.set_epoch(2)
    assert np.array_equal(whole, again.epoch_order())
    sampler.set_epoch(3)
    assert not np.array_equal(whole, sampler.epoch_order())
    sampler.set_epoch(2)
    world, per_rank = 2, 4
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    shards = []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shards.append(np.array(list(sampler)))
        assert len(sampler) == len(labels) // world
    # Union of the ranks' k-th batches (per_rank each) = the k-th global batch of one process.
    for k in range(len(labels) // (world * per_rank)):
        got = np.concatenate([s[k * per_rank:(k + 1) * per_rank] for s in shards])
        assert sorted(got.tolist()) == sorted(whole[k * world * per_rank:(k + 1) * world * per_rank].tolist())


def test_shard_sampler_covers_each_sample_once(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    shards = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shards.append(np.array(list(ShardSampler(10))))
        assert len(ShardSampler(10)) == len(shards[-1])
    assert shard_union(shards).tolist() == list(range(10))


# -- heads ----------------------------------------------------------------------------------------------------
def test_tau_normalized_hand_computed():
    fc = torch.nn.Linear(2, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
        fc.bias.fill_(1.0)
    one = tau_normalized(fc, 1.0)
    np.testing.assert_allclose(one.weight.detach().numpy(), [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)
    assert one.bias.abs().sum() == 0 and fc.bias[0] == 1.0  # bias dropped; the original untouched
    # tau = 0.5: w / sqrt(||w||) = [3, 4] / sqrt(5), [0, 2] / sqrt(2).
    half = tau_normalized(fc, 0.5).weight.detach().numpy()
    np.testing.assert_allclose(half, [[3 / 5 ** 0.5, 4 / 5 ** 0.5], [0.0, 2 ** 0.5]], rtol=1e-6)
    assert torch.equal(tau_normalized(fc, 0.0).weight, fc.weight)
    assert one(torch.tensor([[1.0, 1.0]]))[0].tolist() == pytest.approx([1.4, 1.0])
    with pytest.raises(TypeError, match=r"\(dot-product\) head, got NormedLinear"):
        tau_normalized(models.NormedLinear(2, 2), 1.0)


def test_freeze_backbone_and_frozen_bn_step():
    model = models.build_model("resnet10", 3)
    trainable = freeze_backbone(model)
    assert {id(p) for p in trainable} == {id(model.fc.weight), id(model.fc.bias)}
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    method = Classification(model, torch.nn.CrossEntropyLoss(), freeze_bn=True)
    method.train()
    method.start_epoch(0)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.fc.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, _ = method.forward(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no BN statistic moved
    assert model.layer1[0].conv1.weight.grad is None and model.fc.weight.grad is not None


def test_moco_checkpoint_initialises_backbone_only(tmp_path):
    source = models.build_model("resnet10", 128)
    sd = {f"module.encoder_q.{k}": v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    sd.update({"module.encoder_q.fc.0.weight": torch.randn(512, 512),  # MoCo v2 MLP head: dropped
               "module.encoder_q.fc.2.weight": torch.randn(128, 512),
               "module.encoder_k.conv1.weight": torch.zeros(64, 3, 7, 7), "module.queue": torch.randn(128, 64)})
    path = tmp_path / "moco_ckpt_0200.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet10", "state_dict": sd}, path)
    model = models.build_model("resnet10", CLASSES)
    fc_before = model.fc.weight.clone()
    args = SimpleNamespace(model_dir=str(path), init=None, stage="feature")
    iin.initialise(model, args, RunLog(str(tmp_path / "log"), None, tensorboard=False))
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in source.state_dict().items() if not k.startswith("fc."))
    assert torch.equal(model.fc.weight, fc_before)  # fresh head


# -- configs --------------------------------------------------------------------------------------------------
def test_shipped_configs_use_known_keys_and_the_spec_values():
    parser = iin.build_parser()
    cfg = {str(Path(p).relative_to(CONFIGS)): load_yaml_defaults(parser, p)
           for p in glob.glob(str(CONFIGS / "*/*.yaml"))}
    assert {"ImageNet_LT/feat_uniform.yaml", "ImageNet_LT/feat_balance.yaml", "ImageNet_LT/cls_crt.yaml",
            "iNaturalist18/feat_uniform.yaml", "iNaturalist18/cls_crt.yaml", "synthetic/feat_uniform.yaml",
            "synthetic/cls_crt.yaml"} <= set(cfg)
    table = {  # the reference configs (docs/protocols.md#training-settings): sampler, batch, lr, wd, epochs
        "ImageNet_LT/feat_uniform.yaml": ("feature", "instance", 128, 0.2, 5e-4, 90),
        "ImageNet_LT/feat_balance.yaml": ("feature", "class_aware", 128, 0.2, 5e-4, 90),
        "ImageNet_LT/cls_crt.yaml": ("crt", "class_aware", 512, 0.2, 5e-4, 10),
        "iNaturalist18/feat_uniform.yaml": ("feature", "instance", 100, 0.2, 1e-4, 90),
        "iNaturalist18/cls_crt.yaml": ("crt", "class_aware", 512, 0.2, 1e-4, 30),
    }
    for name, row in table.items():
        c = cfg[name]
        assert (c["stage"], c["sampler"], c["batch_size"], c["lr"], c["weight_decay"], c["epochs"]) == row, name
        assert c["lr_schedule"] == "cosine" and c["arch"] == "resnet50" and c["momentum"] == 0.9
    # Every stage writes its own folder; cRT starts from stage 1's.
    assert len({c["log_dir"] for c in cfg.values()}) == len(cfg)
    assert cfg["ImageNet_LT/cls_crt.yaml"]["init"] == cfg["ImageNet_LT/feat_uniform.yaml"]["log_dir"]
    assert cfg["iNaturalist18/feat_uniform.yaml"]["test_split"] is None


@pytest.mark.parametrize("extra, message", [
    (["--stage", "feature", "--freeze_bn"], "freeze_bn applies to stage crt"),
    (["--stage", "crt"], "set init"),
    (["--num_classes", "4"], "has label 5 but num_classes is 4"),
    (["--num_classes", "8"], r"no image of classes \[6, 7\]"),
    (["--crop_size", "40"], "--resize_size"),
    (["--loader", "device"], "--loader must be torch"),
    (["--init", "/nonexistent/run"], "init: no checkpoint"),
    (["--batch_size", "100"], "exceeds the 56 training images"),
    (["--test", "--model_dir", "/nonexistent.pth.tar"], "--model_dir: no checkpoint"),
    (["--save_feat", "val"], "--save_feat saves the features of a trained model: add --test"),
])
def test_bad_configs_fail_before_training(syn_root, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        iin.main(["--cfg", str(SYN / "feat_uniform.yaml"), *tiny(syn_root, tmp_path), *extra])
    assert re.search(message, capsys.readouterr().err)


def test_output_logits_is_a_switch_or_takes_the_references_value():
    parser = iin.build_parser()
    base = ["--cfg", "x.yaml"]
    assert parser.parse_args(base).output_logits is False
    assert parser.parse_args([*base, "--output_logits"]).output_logits is True
    assert parser.parse_args([*base, "--output_logits", "True"]).output_logits is True
    assert parser.parse_args([*base, "--output_logits", "false"]).output_logits is False


def test_unknown_config_key_and_missing_data_root(syn_root, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("dataset: ImageNet_LT\nbatchsize: 3\n")
    with pytest.raises(SystemExit):
        iin.main(["--cfg", str(cfg)])
    assert "unknown key 'batchsize'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        iin.main(["--cfg", str(SYN / "feat_uniform.yaml"), "--data_root", str(tmp_path / "none")])
    assert "--data_root: no folder" in capsys.readouterr().err


# -- end to end -----------------------------------------------------------------------------------------------
def test_stage1_writes_selection_and_final_test_metrics(stage1):
    log_dir, summary = stage1
    assert summary["epochs"] == 1 and summary["final"]["split"] == "test"
    final = json.load(open(os.path.join(log_dir, "final.json")))
    assert final["final"]["top1"] == pytest.approx(summary["final"]["top1"])
    assert {"many", "medium", "few", "per_class"} <= set(final["final"])
    assert final["final"]["many"] is None  # no synthetic class has more than 100 images
    assert os.path.isfile(os.path.join(log_dir, "ckpt.best.pth.tar"))
    assert len(open(os.path.join(log_dir, "metrics.jsonl")).readlines()) == 1


def test_test_mode_reproduces_the_final_evaluation_and_saves_logits(stage1, syn_root, tmp_path):
    log_dir, summary = stage1
    out = tmp_path / "eval"
    metrics = iin.main(["--cfg", str(SYN / "feat_uniform.yaml"), *tiny(syn_root, out), "--test",
                        "--model_dir", log_dir, "--output_logits"])
    assert metrics["top1"] == pytest.approx(summary["final"]["top1"])
    assert metrics["per_class"] == summary["final"]["per_class"]
    saved = np.load(out / "logits_test.npz")
    assert saved["logits"].shape == (3 * CLASSES, CLASSES)
    assert saved["labels"].tolist() == np.repeat(range(CLASSES), 3).tolist()
    assert 100 * np.mean(saved["logits"].argmax(1) == saved["labels"]) == pytest.approx(metrics["top1"])
    assert saved["paths"][0] == "test/c0000/c0000_00000.jpg"
    assert json.load(open(out / "eval_test.json"))["top1"] == pytest.approx(metrics["top1"])


def test_save_feat_writes_the_heads_input_features(stage1, syn_root, tmp_path):
    log_dir, summary = stage1
    args = ["--cfg", str(SYN / "feat_uniform.yaml"), "--test", "--model_dir", log_dir]
    iin.main([*args, *tiny(syn_root, tmp_path / "logits"), "--output_logits"])
    out = iin.main([*args, *tiny(syn_root, tmp_path / "feat"), "--save_feat", "test"])
    saved, logits = np.load(tmp_path / "feat" / "testfeat_all.npz"), np.load(tmp_path / "logits" / "logits_test.npz")
    state = load_checkpoint(os.path.join(log_dir, "ckpt.best.pth.tar"))["state_dict"]
    head = saved["feats"] @ state["fc.weight"].numpy().T + state["fc.bias"].numpy()
    np.testing.assert_allclose(head, logits["logits"], rtol=1e-4, atol=1e-4)  # fc(features) = the logits
    assert saved["labels"].tolist() == logits["labels"].tolist() and out["shape"] == list(saved["feats"].shape)
    iin.main([*args, *tiny(syn_root, tmp_path / "feat"), "--save_feat", "train_plain"])
    train = np.load(tmp_path / "feat" / "trainfeat_all.npz")
    assert train["feats"].shape[0] == len(train["labels"]) == 56  # every training image, once


@pytest.mark.parametrize("name, key", [("final_model_checkpoint.pth", "state_dict_best"),
                                       ("latest_model_checkpoint.pth", "state_dict")])
def test_reference_code_checkpoints_evaluate_like_ours(stage1, syn_root, tmp_path, name, key):
    # The reference code saves {'feat_model': ..., 'classifier': ...} state dicts of DataParallel modules.
    log_dir, summary = stage1
    own = load_checkpoint(os.path.join(log_dir, "ckpt.best.pth.tar"))["state_dict"]
    nets = {"feat_model": {f"module.{k}": v for k, v in own.items() if not k.startswith("fc.")},
            "classifier": {f"module.{k}": v for k, v in own.items() if k.startswith("fc.")}}
    path = tmp_path / name
    torch.save({"epoch": 1, "best_epoch": 0, "best_acc": 0.5, "centroids": None, key: nets}, path)
    model_dir = str(path if name == "latest_model_checkpoint.pth" else tmp_path)  # a folder finds the final one
    metrics = iin.main(["--cfg", str(SYN / "feat_uniform.yaml"), *tiny(syn_root, tmp_path / "eval"), "--test",
                        "--model_dir", model_dir])
    assert metrics["top1"] == pytest.approx(summary["final"]["top1"])
    assert metrics["per_class"] == summary["final"]["per_class"]


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_crt_trains_only_a_new_head(stage1, syn_root, tmp_path, freeze_bn):
    log_dir, _ = stage1
    flag = "--freeze_bn" if freeze_bn else "--no-freeze_bn"
    iin.main(["--cfg", str(SYN / "cls_crt.yaml"), *tiny(syn_root, tmp_path), "--init", log_dir, flag,
              "--batch_size", "24"])
    before, after = state(os.path.join(log_dir, "ckpt.best.pth.tar")), state(tmp_path / "ckpt.best.pth.tar")
    weights = [k for k in before if not k.startswith("fc.") and "running" not in k and "num_batches" not in k]
    assert all(torch.equal(before[k], after[k]) for k in weights)
    stats = [k for k in before if "running" in k]
    # freeze_bn keeps the BatchNorm statistics; the reference behaviour re-estimates them.
    assert all(torch.equal(before[k], after[k]) for k in stats) == freeze_bn
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert os.path.isfile(os.path.join(log_dir, "final.json"))  # stage 1's outputs are left alone


def test_tau_norm_stage_picks_tau_on_val(stage1, syn_root, tmp_path):
    log_dir, _ = stage1
    summary = iin.main(["--cfg", str(SYN / "tau_norm.yaml"), *tiny(syn_root, tmp_path), "--init", log_dir,
                        "--tau_grid", "0", "1"])
    tau = summary["tau"]
    by_tau = summary["val_top1_by_tau"]
    assert tau in (0.0, 1.0) and by_tau[str(tau)] == max(by_tau.values())
    fc_before, fc_after = state(os.path.join(log_dir, "ckpt.best.pth.tar")), state(tmp_path / "ckpt.best.pth.tar")
    # ||w'_c|| = ||w_c||^(1 - tau); bias zero.
    np.testing.assert_allclose(fc_after["fc.weight"].norm(dim=1), fc_before["fc.weight"].norm(dim=1) ** (1 - tau),
                               rtol=1e-5)
    assert fc_after["fc.bias"].abs().sum() == 0


def test_ddp_two_processes_on_cpu_agree(syn_root, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "imagenet_inat.main", "--cfg", str(SYN / "feat_balance.yaml"), *tiny(syn_root, tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = dict(re.findall(r"rank (\d)/2: replica checksum (\S+)", proc.stdout + proc.stderr))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"]
    final = json.load(open(tmp_path / "final.json"))
    assert final["final"]["split"] == "test" and final["epochs"] == 1
    # Sharded evaluation (BatchNorm statistics synchronised) = one process evaluating the saved best model.
    single = iin.main(["--cfg", str(SYN / "feat_balance.yaml"), *tiny(syn_root, tmp_path / "eval"), "--test",
                       "--model_dir", str(tmp_path)])
    assert single["per_class"] == final["final"]["per_class"]
    assert single["loss"] == pytest.approx(final["final"]["loss"], rel=1e-4)


def test_a_stage_may_not_write_into_the_folder_it_starts_from(stage1, syn_root, capsys):
    log_dir, _ = stage1
    with pytest.raises(SystemExit):
        iin.main(["--cfg", str(SYN / "cls_crt.yaml"), *tiny(syn_root, log_dir), "--init", log_dir])
    assert "overwrites stage 1's checkpoints" in capsys.readouterr().err


# -- the reference code's nested configs ------------------------------------------------------------------------
def reference_cfg(fix: bool, sampler, coslr=True, **extra) -> dict:
    """A config in the reference code's layout (training_opt / networks / criterions)."""
    optim = {"lr": 0.2, "momentum": 0.9, "weight_decay": 0.0005}
    return {"coslr": coslr, "endlr": 0.0, "last": False, "model_dir": "./stage1", "shuffle": False,
            "memory": {"centroids": False, "init_centroids": False},
            "criterions": {"PerformanceLoss": {"def_file": "./imagenet_inat/loss/SoftmaxLoss.py", "weight": 1.0}},
            "networks": {"classifier": {"def_file": "./imagenet_inat/models/DotProductClassifier.py",
                                        "optim_params": dict(optim, lr=0.1)},
                         "feat_model": {"def_file": "./imagenet_inat/models/ResNet50Feature.py", "fix": fix,
                                        "optim_params": optim}},
            "training_opt": {"backbone": "resnet50", "batch_size": 512, "dataset": "ImageNet_LT", "display_step": 10,
                             "log_dir": "./run", "num_classes": 1000, "num_epochs": 10, "num_workers": 12,
                             "sampler": sampler, "scheduler_params": {"gamma": 0.1, "step_size": 3}, **extra}}


def test_reference_configs_translate_to_flags():
    crt = reference_config.translate(reference_cfg(True, {"type": "ClassAwareSampler", "num_samples_cls": 4}), "c")
    assert (crt["stage"], crt["init"], crt["sampler"], crt["samples_per_class"]) == ("crt", "./stage1", "class_aware", 4)
    assert (crt["lr"], crt["batch_size"], crt["epochs"], crt["lr_schedule"]) == (0.1, 512, 10, "cosine")  # the head's lr
    assert crt["train_split"] == os.path.join(".", "imagenet_inat", "data", "ImageNet_LT", "ImageNet_LT_train.txt")
    feat = reference_config.translate(reference_cfg(False, None, coslr=False), "f")
    assert (feat["stage"], feat["sampler"], feat["lr"], feat["weight_decay"]) == ("feature", "instance", 0.2, 0.0005)
    assert feat["init"] == "./stage1" and feat["milestones"] == [3, 6, 9]  # model_dir is loaded at every stage
    assert feat["lr_factors"] == pytest.approx([0.1, 0.01, 0.001])
    flat = {"dataset": "ImageNet_LT", "lr": 0.3}
    assert reference_config.translate(flat, "x") is flat


@pytest.mark.parametrize("change, message", [
    (lambda c: c["memory"].update(centroids=True), "memory.centroids: OLTR's meta-embedding memory"),
    (lambda c: c["networks"]["classifier"].update(def_file="x/MetaEmbeddingClassifier.py"), "networks.classifier"),
    (lambda c: c["training_opt"].update(sampler={"type": "ClassPrioritySampler"}), "training_opt.sampler.type"),
    (lambda c: c["training_opt"].pop("num_epochs"), "training_opt.num_epochs is missing"),
    (lambda c: c.update(endlr=0.001), "endlr: a cosine schedule ending at 0.001"),
])
def test_reference_configs_refuse_what_is_not_implemented(change, message):
    cfg = reference_cfg(False, None)
    change(cfg)
    with pytest.raises(SystemExit, match=message):
        reference_config.translate(cfg, "cfg.yaml")


def test_reference_config_runs_both_stages(syn_root, tmp_path, monkeypatch):
    # The reference's layout on disk: split files under ./imagenet_inat/data/ImageNet_LT/, images under --data_root.
    lists = tmp_path / "imagenet_inat" / "data" / "ImageNet_LT"
    lists.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (lists / f"ImageNet_LT_{split}.txt").write_text(open(os.path.join(syn_root, f"ImageNet_LT_{split}.txt")).read())
    monkeypatch.chdir(tmp_path)
    feature = reference_cfg(False, None, log_dir="./stage1")
    feature["model_dir"] = None  # from scratch (the reference would load ./data otherwise)
    for name, cfg in (("feat.yaml", feature),
                      ("crt.yaml", reference_cfg(True, {"type": "ClassAwareSampler", "num_samples_cls": 2},
                                                 log_dir="./stage2"))):
        cfg["training_opt"]["backbone"] = "resnet10"
        (tmp_path / name).write_text(yaml.safe_dump(cfg))
    small = ["--data_root", syn_root, "--num_classes", str(CLASSES), "--crop_size", "32", "--resize_size", "32",
             "--batch_size", "16", "--epochs", "1", "--workers", "0", "--device", "cpu", "--seed", "0"]
    stage1 = iin.main(["--cfg", "feat.yaml", *small])
    assert stage1["final"]["split"] == "test" and os.path.isfile("stage1/ckpt.best.pth.tar")
    stage2 = iin.main(["--cfg", "crt.yaml", *small])
    args = yaml.safe_load(open("stage2/args.yaml"))
    assert (args["stage"], args["sampler"], args["init"], args["arch"]) == ("crt", "class_aware", "./stage1", "resnet10")
    assert stage2["epochs"] == 1
