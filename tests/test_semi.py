"""Semi-supervised pipeline on tiny synthetic data: train.py base -> gen_pseudolabels.py -> train_semi.py."""
import json
import os
import pickle

import numpy as np
import pytest
import scipy.io
import torch
import yaml

import gen_pseudolabels
import models
import train
import train_semi
from engine.data import safe_pickle
from engine.eval import pseudolabel
from engine.data.datasets import DATASETS
from engine.data.pseudolabel_files import write_pseudo_labels
from engine.train.checkpoint import load_checkpoint
from imbalance_cifar import SemiSupervisedImbalanceCIFAR10, get_img_num_per_cls
from imbalance_svhn import SVHN_CLASS_ORDER, SemiSupervisedImbalanceSVHN

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
BASE_NAME = "cifar10_resnet20_CE_None_exp_0.01_ss_pretrained"
SEMI_NAME = "cifar10_resnet20_CE_None_exp_0.1_0.1_semi"
# stand-in protocol at toy size: labeled head 20, unlabeled head 30, rho = rho_U = 10
STAND_IN = ["--imb_factor", "0.1", "--imb_factor_unlabel", "0.1", "--unlabeled_source", "cifar10_train",
            "--labeled_max", "20", "--unlabeled_max", "30"]
LABELED_COUNTS = [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]  # int(20 * 0.1**(i/9))
SVHN_EXTRA_PER_DIGIT = 50


def run_flags(root, out):
    return ["--data_path", str(root), "--epochs", "1", "-b", "128", "--root_log", str(out / "log"),
            "--root_model", str(out / "ckpt"), "--device", "cpu", "--seed", "0", "-a", "resnet20"]


def gen_flags(dataset, data_dir, ckpt, out, *extra):
    return ["--dataset", dataset, "--resume", str(ckpt), "--data_dir", str(data_dir), "--output_dir", str(out),
            "--device", "cpu", *extra]


def raw_cifar10_train(root):
    """Train images (N, 3, 32, 32) and labels straight from the synthetic batches (the test's own reader)."""
    batches = []
    for k in range(1, 6):
        with open(os.path.join(root, "cifar-10-batches-py", f"data_batch_{k}"), "rb") as f:
            batches.append(pickle.load(f))
    return (np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32),
            np.concatenate([b["labels"] for b in batches]))


def reference_logits(ckpt_path, images_chw, mean, std):
    """Logits of the checkpoint's model on uint8 CHW images with ToTensor + Normalize, computed here."""
    model = models.build_model("resnet20", 10)
    model.load_state_dict(load_checkpoint(ckpt_path)["state_dict"])
    x = torch.from_numpy(images_chw).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def base_ckpt(cifar10_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    train.main(["--dataset", "cifar10", "--imb_factor", "0.01", *run_flags(cifar10_root, out)])
    return str(out / "ckpt" / BASE_NAME / "ckpt.pth.tar")


@pytest.fixture(scope="module")
def pseudo_npz(cifar10_root, base_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("pseudo")
    return gen_pseudolabels.main(gen_flags("cifar10", cifar10_root, base_ckpt, out,
                                           "--unlabeled_source", "cifar10_train"))


@pytest.fixture(scope="module")
def semi_run(cifar10_root, pseudo_npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("semi")
    argv = ["--dataset", "cifar10", *STAND_IN, "--pseudo_label_file", pseudo_npz, *run_flags(cifar10_root, out)]
    return argv, out, train_semi.main(argv)


def test_pseudo_labels_are_the_models_argmax(cifar10_root, base_ckpt, pseudo_npz):
    assert os.path.basename(pseudo_npz) == "pseudo_labeled_cifar.npz"
    with np.load(pseudo_npz, allow_pickle=False) as f:
        content = {k: f[k] for k in f.files}
    assert set(content) == {"predictions", "confidence", "indices", "prediction_model", "ground_truth"}
    images, labels = raw_cifar10_train(cifar10_root)
    assert content["predictions"].dtype == np.int64 and content["confidence"].dtype == np.float32
    np.testing.assert_array_equal(content["indices"], np.arange(1000))  # the whole train split, file order
    np.testing.assert_array_equal(content["ground_truth"], labels)
    assert str(content["prediction_model"]) == base_ckpt
    logits = reference_logits(base_ckpt, images[:250], CIFAR_MEAN, CIFAR_STD)
    np.testing.assert_array_equal(content["predictions"][:250], logits.argmax(1).numpy())
    np.testing.assert_allclose(content["confidence"][:250], logits.softmax(1).max(1).values.numpy(), atol=1e-5)
    assert os.listdir(os.path.dirname(pseudo_npz)) == ["pseudo_labeled_cifar.npz"]  # no temporary file left


def test_train_semi_counts_labeled_plus_pseudo_labels(cifar10_root, pseudo_npz, semi_run):
    _, out, summary = semi_run
    semi = SemiSupervisedImbalanceCIFAR10(cifar10_root, imb_factor=0.1, imb_factor_unlabel=0.1,
                                          unlabeled_source="cifar10_train", pseudo_label_file=pseudo_npz,
                                          labeled_max=20, unlabeled_max=30)
    assert len(semi.unlabeled_indices) == sum(get_img_num_per_cls(30, 10, "exp", 0.1)) == 118
    with np.load(pseudo_npz, allow_pickle=False) as f:
        pseudo_counts = np.bincount(f["predictions"][semi.unlabeled_indices], minlength=10)
    ckpt = load_checkpoint(str(out / "ckpt" / SEMI_NAME / "ckpt.pth.tar"))
    assert ckpt["cls_num_list"] == (np.array(LABELED_COUNTS) + pseudo_counts).tolist()
    assert ckpt["arch"] == "resnet20" and ckpt["epoch"] == 1
    logged = yaml.safe_load(open(out / "log" / SEMI_NAME / "args.yaml"))
    assert logged["pseudo_label_file"] == pseudo_npz and logged["batch_size"] == 128
    final = json.load(open(out / "log" / SEMI_NAME / "final.json"))
    assert final["last"]["top1"] == summary["last"]["top1"]


def test_evaluate_train_semi_checkpoint(semi_run):
    argv, out, summary = semi_run
    metrics = train_semi.main(argv + ["-e", "--resume", str(out / "ckpt" / SEMI_NAME / "ckpt.pth.tar")])
    assert metrics["top1"] == summary["last"]["top1"]
    assert metrics["per_class"] == summary["last"]["per_class"]


def test_upstream_pickle_and_confidence_threshold(cifar10_root, base_ckpt, pseudo_npz, tmp_path):
    with np.load(pseudo_npz, allow_pickle=False) as f:
        predictions, confidence = f["predictions"], f["confidence"]
    threshold = float(np.median(confidence))
    path = gen_pseudolabels.main(gen_flags("cifar10", cifar10_root, base_ckpt, tmp_path, "--unlabeled_source",
                                           "cifar10_train", "--output_filename", "p.pickle",
                                           "--confidence_threshold", str(threshold), "--batch_size", "300"))
    content = safe_pickle.load(path)
    assert set(content) == {"extrapolated_targets", "prediction_model", "confidence", "ground_truth"}
    targets = content["extrapolated_targets"]
    assert targets.dtype == np.int64 and content["prediction_model"] == base_ckpt
    np.testing.assert_allclose(content["confidence"], confidence, atol=1e-6)  # batch size does not matter
    np.testing.assert_array_equal(targets, np.where(content["confidence"] < threshold, -1, predictions))
    assert 0 < (targets == -1).sum() < 1000
    assert os.listdir(tmp_path) == ["p.pickle"]
    # The semi-supervised set draws as without a threshold, then drops the images below it.
    kwargs = dict(imb_factor=0.1, imb_factor_unlabel=0.1, unlabeled_source="cifar10_train", labeled_max=20,
                  unlabeled_max=30)
    full = SemiSupervisedImbalanceCIFAR10(cifar10_root, pseudo_label_file=pseudo_npz, **kwargs)
    kept = SemiSupervisedImbalanceCIFAR10(cifar10_root, pseudo_label_file=path, **kwargs)
    confident = targets[full.unlabeled_indices] != -1
    assert 0 < confident.sum() < len(confident)
    np.testing.assert_array_equal(kept.unlabeled_indices, full.unlabeled_indices[confident])
    np.testing.assert_array_equal(kept.targets[kept.num_labeled:], targets[kept.unlabeled_indices])


def test_apply_threshold():
    predictions = np.array([3, 1, 4, 1, 5])
    confidence = np.array([0.9, 0.2, 0.5, 0.49, 1.0], np.float32)
    np.testing.assert_array_equal(pseudolabel.apply_threshold(predictions, confidence, 0.5), [3, -1, 4, -1, 5])
    np.testing.assert_array_equal(pseudolabel.apply_threshold(predictions, confidence, None), predictions)


def test_refuses_to_overwrite(cifar10_root, base_ckpt, pseudo_npz, capsys):
    before = open(pseudo_npz, "rb").read()
    with pytest.raises(SystemExit):
        gen_pseudolabels.main(gen_flags("cifar10", cifar10_root, base_ckpt, os.path.dirname(pseudo_npz),
                                        "--unlabeled_source", "cifar10_train"))
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert open(pseudo_npz, "rb").read() == before


@pytest.mark.parametrize("name,writer", [("p.npz", (np, "savez")), ("p.pickle", (pickle, "dump"))])
def test_writes_are_atomic_and_overwrite_is_explicit(tmp_path, monkeypatch, name, writer):
    path = str(tmp_path / name)
    write_pseudo_labels(path, np.array([1, 2]), np.array([0.5, 0.75]), "a.pth")
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        write_pseudo_labels(path, np.array([0, 0]), np.array([1.0, 1.0]), "b.pth")
    write_pseudo_labels(path, np.array([7, 8]), np.array([1.0, 1.0]), "b.pth", overwrite=True)

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(*writer, crash)
    with pytest.raises(OSError, match="disk full"):
        write_pseudo_labels(path, np.array([0, 0]), np.array([1.0, 1.0]), "c.pth", overwrite=True)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [name]
    if name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            assert f["predictions"].tolist() == [7, 8] and str(f["prediction_model"]) == "b.pth"
    else:
        content = safe_pickle.load(path)
        assert content["extrapolated_targets"].tolist() == [7, 8] and content["prediction_model"] == "b.pth"


@pytest.fixture(scope="module")
def small_svhn_root(svhn_root, tmp_path_factory):
    """svhn_root with the first SVHN_EXTRA_PER_DIGIT extra images of each digit (fewer images to predict)."""
    root = tmp_path_factory.mktemp("svhn_small")
    for split in ("train", "test"):
        os.symlink(os.path.join(svhn_root, f"{split}_32x32.mat"), root / f"{split}_32x32.mat")
    extra = scipy.io.loadmat(os.path.join(svhn_root, "extra_32x32.mat"))
    y = extra["y"].ravel()
    keep = np.sort(np.concatenate([np.flatnonzero(y == d)[:SVHN_EXTRA_PER_DIGIT] for d in range(1, 11)]))
    scipy.io.savemat(root / "extra_32x32.mat", {"X": extra["X"][..., keep], "y": extra["y"][keep]})
    return str(root)


def test_svhn_extra_split(small_svhn_root, base_ckpt, tmp_path):
    root = small_svhn_root
    path = gen_pseudolabels.main(gen_flags("svhn", root, base_ckpt, tmp_path,
                                           "--output_filename", "pseudo_labeled_svhn.pickle"))
    content = safe_pickle.load(path)
    extra = scipy.io.loadmat(os.path.join(root, "extra_32x32.mat"))
    assert len(content["extrapolated_targets"]) == 10 * SVHN_EXTRA_PER_DIGIT
    np.testing.assert_array_equal(content["ground_truth"], extra["y"].ravel() % 10)
    images = np.ascontiguousarray(extra["X"].transpose(3, 2, 0, 1)[:100])
    logits = reference_logits(base_ckpt, images, (0.5,) * 3, (0.5,) * 3)  # SVHN statistics, not CIFAR's
    np.testing.assert_array_equal(content["extrapolated_targets"][:100], logits.argmax(1).numpy())

    argv = ["--dataset", "svhn", "--imb_factor", "0.01", "--imb_factor_unlabel", "1", "--unlabel_size_factor", "1",
            "--pseudo_label_file", path, *run_flags(root, tmp_path), "-e", "--resume", base_ckpt]
    metrics = train_semi.main(argv)
    semi = SemiSupervisedImbalanceSVHN(root, imb_factor=0.01, imb_factor_unlabel=1, unlabel_size_factor=1,
                                       pseudo_label_file=path)
    labeled = dict(zip(SVHN_CLASS_ORDER, [60, 60, 60, 60, 60, 60, 46, 27, 16, 10]))  # min(60, 1000 * 0.01**(r/9))
    counts = np.array([labeled[d] for d in range(10)])
    counts += np.bincount(content["extrapolated_targets"][semi.unlabeled_indices], minlength=10)
    assert len(semi.unlabeled_indices) == 450  # T = 459: 45 per class
    per_class = np.array(metrics["per_class"])
    assert counts.sum() == 459 + 450 and (counts > 100).any()
    assert metrics["many"] == pytest.approx(per_class[counts > 100].mean())


def test_upstream_ldam_checkpoint_without_metadata(small_svhn_root, tmp_path, capsys):
    """An upstream-style checkpoint (DataParallel ``module.`` keys, head named ``linear``, no ``arch`` or
    ``use_norm``): -a and --loss_type LDAM (cosine head) describe it; CE is refused with a clear message."""
    torch.manual_seed(0)
    model = models.build_model("resnet20", 10, use_norm=True)
    state = {"module." + k.replace("fc.", "linear.", 1): v for k, v in model.state_dict().items()}
    ckpt = tmp_path / "upstream.pth.tar"
    torch.save({"state_dict": state, "epoch": 200}, ckpt)
    path = gen_pseudolabels.main(gen_flags("svhn", small_svhn_root, ckpt, tmp_path, "-a", "resnet20",
                                           "--loss_type", "LDAM"))
    extra = scipy.io.loadmat(os.path.join(small_svhn_root, "extra_32x32.mat"))
    x = torch.from_numpy(np.ascontiguousarray(extra["X"].transpose(3, 2, 0, 1)[:50])).float() / 255.0
    with torch.no_grad():
        expected = model.eval()((x - 0.5) / 0.5).argmax(1).numpy()
    with np.load(path, allow_pickle=False) as f:
        np.testing.assert_array_equal(f["predictions"][:50], expected)
    with pytest.raises(SystemExit):
        gen_pseudolabels.main(gen_flags("svhn", small_svhn_root, ckpt, tmp_path, "-a", "resnet20",
                                        "--output_filename", "ce.npz"))
    err = capsys.readouterr().err
    assert f"--resume: {str(ckpt)!r} is a checkpoint of an unrecorded architecture, which does not fit" in err
    assert "(its head looks cosine: --loss_type LDAM)" in err and "fc.weight (64, 10) in the file vs (10, 64)" in err


def test_labeled_only_is_the_semi_sets_labeled_part(cifar10_root, pseudo_npz):
    args = train_semi.config.parse(train_semi.build_parser(), ["--data_path", cifar10_root, *STAND_IN,
                                                                "--labeled_only"], train_semi.validate)
    assert args.exp_str == "semi_base" and args.pseudo_label_file is None
    base = train_semi.train_set(args)
    semi = SemiSupervisedImbalanceCIFAR10(cifar10_root, imb_factor=0.1, unlabeled_source="cifar10_train",
                                          pseudo_label_file=pseudo_npz, labeled_max=20, unlabeled_max=30)
    np.testing.assert_array_equal(base.data, semi.data[:semi.num_labeled])
    assert base.targets == semi.targets[:semi.num_labeled] and base.get_cls_num_list() == LABELED_COUNTS


def test_default_pseudo_label_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pseudo_labeled_svhn\.npz or .*pseudo_labeled_svhn\.pickle"):
        DATASETS["svhn"].pseudo_label_file(str(tmp_path))
    (tmp_path / "pseudo_labeled_svhn.pickle").write_bytes(b"")
    assert DATASETS["svhn"].pseudo_label_file(str(tmp_path)) == str(tmp_path / "pseudo_labeled_svhn.pickle")
    (tmp_path / "pseudo_labeled_svhn.npz").write_bytes(b"")
    assert DATASETS["svhn"].pseudo_label_file(str(tmp_path)) == str(tmp_path / "pseudo_labeled_svhn.npz")


@pytest.mark.parametrize("argv,message", [
    ([], "--resume CHECKPOINT is required"),
    (["--resume", "/nonexistent.pth"], "--resume: no file"),
    (["--dataset", "svhn", "--unlabeled_source", "cifar10_train", "--resume", "CKPT"],
     "--unlabeled_source cifar10_train is not available for --dataset svhn"),
    (["--resume", "CKPT", "--output_filename", "p.txt"], "end it in .npz"),
    (["--resume", "CKPT", "--confidence_threshold", "1.5"], "--confidence_threshold is a softmax probability"),
    (["--resume", "CKPT", "--batch_size", "0"], "--batch_size must be positive"),
])
def test_gen_pseudolabels_bad_inputs(base_ckpt, tmp_path, capsys, argv, message):
    argv = [base_ckpt if a == "CKPT" else a for a in argv]
    with pytest.raises(SystemExit):
        gen_pseudolabels.main(argv + ["--output_dir", str(tmp_path), "--data_dir", str(tmp_path)])
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv,message", [
    ([], "gen_pseudolabels.py --dataset cifar10 --resume CHECKPOINT"),
    (["--pseudo_label_file", "/nowhere/p.npz"], "--output_filename p.npz"),
    (["--dataset", "svhn", "--labeled_max", "40"], "--labeled_max is for --dataset cifar10 only"),
    (["--dataset", "svhn"], "gen_pseudolabels.py --dataset svhn --resume CHECKPOINT --data_dir"),
    (["--imb_factor_unlabel", "50"], "did you mean 0.02"),
    (["--unlabel_size_factor", "0"], "--unlabel_size_factor must be positive"),
    (["--unlabeled_source", "cifar10_train"], "--unlabeled_source cifar10_train --output_dir"),
])
def test_train_semi_bad_inputs(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        train_semi.main(run_flags(tmp_path, tmp_path) + argv)
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()


CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "semi")


def parse_config(name):
    """A configs/semi file with the parser of the script it is for: base_* train.py, pseudo_* gen_pseudolabels.py,
    the rest train_semi.py."""
    script = train if name.startswith("base_") else gen_pseudolabels if name.startswith("pseudo_") else train_semi
    return script, script.config.parse(script.build_parser(), ["--config", os.path.join(CONFIGS, name)],
                                       validate=lambda args: None)


def checkpoint_of(script, args):
    name = script.RUN.run_name(vars(args))
    return os.path.join(args.root_model, name, "ckpt.pth.tar")


def test_semi_configs_parse_and_chain():
    files = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".yaml"))
    parsed = {f: parse_config(f) for f in files}
    bases = {os.path.normpath(checkpoint_of(s, a)): a for s, a in parsed.values()
             if s is train or (s is train_semi and a.labeled_only)}
    outputs = {}
    for script, args in parsed.values():
        if script is gen_pseudolabels:
            base = bases[os.path.normpath(args.resume)]  # the last-epoch checkpoint of a base config
            assert (base.dataset, base.arch, base.loss_type) == (args.dataset, args.arch, args.loss_type)
            outputs[os.path.normpath(os.path.join(args.output_dir, args.output_filename))] = (args, base)
    semi = [(f, a) for f, (s, a) in parsed.items() if s is train_semi and not a.labeled_only]
    assert len(semi) == 2 * 2 * 3 * 2 + 4 and len(bases) == 5 and len(outputs) == 5
    for f, args in semi:
        pseudo, base = outputs[os.path.normpath(args.pseudo_label_file)]
        assert (args.dataset, args.imb_factor, args.unlabeled_source) == (base.dataset, base.imb_factor,
                                                                           pseudo.unlabeled_source)
        assert getattr(base, "labeled_max", None) == args.labeled_max
        assert (args.epochs, args.batch_size, args.arch) == (200, 256, "resnet32")
        assert args.unlabeled_source == ("cifar10_train" if "standin" in f else
                                         "tinyimages" if args.dataset == "cifar10" else None)


def test_cosine_head_confidence_uses_the_ldam_scale():
    model = models.build_model("resnet20", 10, use_norm=True).eval()
    images = np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    raw_pred, raw_conf = pseudolabel.predict(model, images, CIFAR_MEAN, CIFAR_STD, 4, progress=False)
    pred, conf = pseudolabel.predict(model, images, CIFAR_MEAN, CIFAR_STD, 4, progress=False, logit_scale=30.0)
    np.testing.assert_array_equal(pred, raw_pred)  # the prediction does not depend on the scale
    with torch.no_grad():
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) \
            / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        expected = (30.0 * model(x)).softmax(1).max(1).values.numpy()
    np.testing.assert_allclose(conf, expected, rtol=1e-4)
    assert (conf > raw_conf).all()
