"""train.py end to end on tiny synthetic CIFAR-10: outputs, resume, evaluation, errors."""
import json
import os

import pytest
import torch

import train
from engine.train.checkpoint import load_checkpoint


def run_args(root, tmp_path, *extra, epochs=2):
    return ["--dataset", "cifar10", "--data_path", str(root), "--imb_factor", "0.1", "--epochs", str(epochs),
            "-b", "64", "--root_log", str(tmp_path / "log"), "--root_model", str(tmp_path / "ckpt"),
            "--device", "cpu", "--seed", "0", "--arch", "resnet20", *extra]


NAME = "cifar10_resnet20_{}_{}_exp_0.1_ss_pretrained"


def test_two_epochs_write_logs_and_checkpoints(cifar10_root, tmp_path):
    summary = train.main(run_args(cifar10_root, tmp_path, "--loss_type", "LDAM", "--train_rule", "DRW",
                                  "--drw_epoch", "1"))
    log_dir = tmp_path / "log" / NAME.format("LDAM", "DRW")
    ckpt_dir = tmp_path / "ckpt" / NAME.format("LDAM", "DRW")
    records = [json.loads(line) for line in open(log_dir / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[0]["lr"] == pytest.approx(0.02) and records[1]["lr"] == pytest.approx(0.04)
    assert set(records[1]["test"]) >= {"top1", "top5", "loss", "per_class", "many", "medium", "few"}
    final = json.load(open(log_dir / "final.json"))
    assert final["last"]["epoch"] == 1 and final["best"]["top1"] == max(r["test"]["top1"] for r in records)
    assert summary["best"]["top1"] == final["best"]["top1"]
    assert (log_dir / "args.yaml").exists() and any(f.startswith("events.out") for f in os.listdir(log_dir))
    ckpt = load_checkpoint(str(ckpt_dir / "ckpt.pth.tar"))
    assert ckpt["epoch"] == 2 and ckpt["arch"] == "resnet20" and ckpt["use_norm"] is True
    assert ckpt["state_dict"]["fc.weight"].shape == (64, 10)  # NormedLinear head for LDAM
    assert (ckpt_dir / "ckpt.best.pth.tar").exists()
    assert not [f for f in os.listdir(ckpt_dir) if f.startswith(".tmp")]


def test_resume_equals_unbroken_run(cifar10_root, tmp_path):
    unbroken = train.main(run_args(cifar10_root, tmp_path / "a"))
    train.main(run_args(cifar10_root, tmp_path / "b", epochs=1))
    ckpt = tmp_path / "b" / "ckpt" / NAME.format("CE", "None") / "ckpt.pth.tar"
    resumed = train.main(run_args(cifar10_root, tmp_path / "b", "--resume", str(ckpt)))
    assert resumed["last"]["top1"] == unbroken["last"]["top1"]
    assert resumed["last"]["loss"] == pytest.approx(unbroken["last"]["loss"], rel=1e-6)
    a = load_checkpoint(str(tmp_path / "a" / "ckpt" / NAME.format("CE", "None") / "ckpt.pth.tar"))["state_dict"]
    b = load_checkpoint(str(ckpt))["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_evaluate_checkpoint_reproduces_last_epoch(cifar10_root, tmp_path):
    summary = train.main(run_args(cifar10_root, tmp_path, epochs=1))
    ckpt = tmp_path / "ckpt" / NAME.format("CE", "None") / "ckpt.pth.tar"
    metrics = train.main(run_args(cifar10_root, tmp_path, "-e", "--resume", str(ckpt)))
    assert metrics["top1"] == summary["last"]["top1"]
    assert metrics["per_class"] == summary["last"]["per_class"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(cifar10_root, tmp_path):
    train.main(run_args(cifar10_root, tmp_path, epochs=1))
    ckpt = tmp_path / "ckpt" / NAME.format("CE", "None") / "ckpt.pth.tar"
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        train.main(run_args(cifar10_root, tmp_path, "--resume", str(ckpt), "--lr", "1e30", "-p", "1", epochs=3))
    assert load_checkpoint(str(ckpt))["epoch"] == 1


@pytest.mark.parametrize("extra,message", [
    (["--imb_factor", "100"], "did you mean 0.01"),
    (["--imb_factor", "0"], "must be in (0, 1]"),
    (["--dataset", "mnist"], "--dataset"),
    (["--arch", "vgg"], "--arch"),
    (["--loss_type", "Hinge"], "--loss_type"),
    (["--train_rule", "Oversample"], "--train_rule"),
    (["-e"], "needs --resume"),
    (["--resume", "/nonexistent/ckpt.pth.tar"], "--resume: no file"),
    (["--milestones", "10"], "same length"),
    (["--imb_type", "expo"], "invalid choice: 'expo'"),
    (["--lr", "nan"], "--lr must be a finite positive number"),
    (["--lr", "inf"], "--lr must be a finite positive number"),
    (["-p", "0"], "-p/--print-freq must be at least 1"),
    (["--eval_batch_size", "0"], "--eval_batch_size must be at least 1"),
    (["--seed", "-1"], "--seed must be a non-negative integer"),
    (["--rand_number", "-1"], "--rand_number must be a non-negative integer"),
])
def test_bad_arguments_fail_before_training(cifar10_root, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        train.main(run_args(cifar10_root, tmp_path) + extra)
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()


def test_checkpoint_of_another_dataset_is_refused(cifar10_root, cifar100_root, tmp_path, capsys):
    train.main(["--dataset", "cifar100", "--data_path", str(cifar100_root), "--epochs", "1", "-b", "64",
                "--root_log", str(tmp_path / "log"), "--root_model", str(tmp_path / "ckpt"), "--device", "cpu",
                "--arch", "resnet20", "--imb_factor", "0.1"])
    ckpt = tmp_path / "ckpt" / "cifar100_resnet20_CE_None_exp_0.1_ss_pretrained" / "ckpt.pth.tar"
    with pytest.raises(SystemExit) as exit_:
        train.main(run_args(cifar10_root, tmp_path, "-e", "--resume", str(ckpt)))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert f"--resume: {str(ckpt)!r} is a checkpoint of resnet20 (100 classes" in err
    assert "-a/--arch resnet20 with 10 classes (--dataset cifar10)" in err and "fc.weight (100, 64)" in err


def test_yaml_config_and_command_line_precedence(cifar10_root, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loss_type: Focal\nimb_factor: 0.5\nbatch-size: 32\nlr: 1e-2\n")
    args = train.config.parse(train.build_parser(), ["--config", str(cfg), "--imb_factor", "0.1"])
    assert (args.loss_type, args.imb_factor, args.batch_size, args.lr) == ("Focal", 0.1, 32, 0.01)
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: CE\n")
    with pytest.raises(train.config.UsageError, match="unknown key 'loss'; did you mean 'loss_type'"):
        train.config.load_yaml_defaults(train.build_parser(), str(bad))
    bad.write_text("loss_type: Hinge\n")
    with pytest.raises(train.config.UsageError, match="not one of"):
        train.config.load_yaml_defaults(train.build_parser(), str(bad))


def test_every_shipped_train_config_parses():
    root = os.path.join(os.path.dirname(__file__), "..", "configs", "ldam_drw")
    files = sorted(os.listdir(root))
    assert len(files) == 48
    for f in files:
        args = train.config.parse(train.build_parser(), ["--config", os.path.join(root, f)])
        assert args.epochs == 200 and args.arch == "resnet32"


@pytest.mark.realdata
def test_one_epoch_on_real_cifar10_lt(shared_cifar10_root, tmp_path):
    """ResNet-32, CE, CIFAR-10-LT rho=100 (12,406 images) for one epoch on the real (JPEG) CIFAR-10."""
    summary = train.main(["--dataset", "cifar10", "--data_path", str(shared_cifar10_root), "--epochs", "1",
                          "--root_log", str(tmp_path / "log"), "--root_model", str(tmp_path / "ckpt"),
                          "--device", "cpu", "--seed", "0"])
    assert summary["last"]["top1"] > 15.0  # chance is 10 %; one warm-up epoch already beats it


def test_torchrun_two_processes_train_and_evaluate_the_whole_test_set(cifar10_root, tmp_path):
    """DDP on CPU (Gloo): both processes train one model; the sharded evaluation counts every test image once,
    so the logged accuracy equals a single-process evaluation of the saved checkpoint."""
    import subprocess
    import sys

    argv = run_args(cifar10_root, tmp_path, epochs=1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                    "train.py", *argv], check=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
                   capture_output=True, timeout=300)
    final = json.load(open(tmp_path / "log" / NAME.format("CE", "None") / "final.json"))
    ckpt = tmp_path / "ckpt" / NAME.format("CE", "None") / "ckpt.pth.tar"
    metrics = train.main(run_args(cifar10_root, tmp_path, "-e", "--resume", str(ckpt)))
    assert final["last"]["samples"] == metrics["samples"] == 200  # 20 test images per class, each counted once
    assert metrics["per_class"] == final["last"]["per_class"]
    assert metrics["top1"] == pytest.approx(final["last"]["top1"])


def test_missing_data_error_says_where_and_how(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="expand_cifar10.py"):
        train.main(["--data_path", str(tmp_path / "nowhere"), "--no-download", "--device", "cpu"])


@pytest.mark.parametrize("text,message", [
    ("lr: [0.1\n", "not valid YAML at line 2"),
    ("momentum: [0.9, 0.8]\n", "momentum: expected a float, got [0.9, 0.8]"),
    ("epochs: 2.5\n", "epochs: expected an integer, got 2.5"),
    ("lr: {a: 1}\n", "lr: expected a float"),
])
def test_bad_config_files_are_one_line_naming_the_file_and_key(cifar10_root, tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        train.main(run_args(cifar10_root, tmp_path) + ["--config", str(cfg)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and str(cfg) in err and err.count("\n") == 1
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "log").exists()
