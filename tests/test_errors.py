"""Every user error is one line naming the input, with exit status 2 when the run is refused before it starts
and 1 when it fails after starting, no traceback, and no output folder left by a refused run.

Each case runs a script's ``main`` through ``engine.config.run_cli`` in-process (the subprocess tests at the end
check the real exit status and stderr). Hostile files must never run their payload: each would create
``PWNED`` in the test's folder.
"""
import errno
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gen_pseudolabels
import models
import pretrain_moco
import pretrain_rot
import train
import train_semi
from engine import config
from engine.data.datafiles import read_svhn, read_tiny_images
from engine.data.pseudolabel_files import read_pseudo_labels, write_pseudo_labels
from imagenet_inat import main as imagenet_main
from imagenet_inat.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
RUN_NAME = "cifar10_resnet20_CE_None_exp_0.1_ss_pretrained"

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this runs ``touch PATH``: a file that does it must be refused without running it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def outcome(main, argv, capsys, monkeypatch):
    """(exit status, what the user sees on stderr) of ``run_cli(main(argv))``."""
    monkeypatch.delenv("LTR_TRACEBACK", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        config.run_cli(lambda: main(argv))
    code = exit_.value.code
    if isinstance(code, str):  # sys.exit(message): Python prints the message and exits with status 1
        return 1, code + "\n"
    return code, capsys.readouterr().err


def assert_one_line(err, *fragments):
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and "weights_only=False" not in err and "allow_pickle=True" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# -- inputs ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tiny_cifar10, tmp_path_factory):
    """A train.py run (resnet20, one epoch, CIFAR-10-LT rho 10 of the tiny set) and its checkpoint."""
    out = tmp_path_factory.mktemp("base")
    train.main(["--dataset", "cifar10", "--data_path", tiny_cifar10, "--imb_factor", "0.1", "--epochs", "1",
                "-b", "16", "-a", "resnet20", "--device", "cpu", "--seed", "0", "--root_log", str(out / "log"),
                "--root_model", str(out / "ckpt")])
    return str(out / "ckpt" / RUN_NAME / "ckpt.pth.tar")


@pytest.fixture(scope="module")
def files(base, tmp_path_factory):
    """Unusable checkpoints, by kind; ``PWNED`` in their folder marks a payload that ran."""
    folder = tmp_path_factory.mktemp("bad_files")
    raw = Path(base).read_bytes()
    good = torch.load(base, weights_only=True)
    paths = {kind: folder / f"{kind}.pth" for kind in KINDS}
    paths["zero"].write_bytes(b"")
    paths["truncated"].write_bytes(raw[:len(raw) // 2])
    paths["text"].write_text("not a checkpoint\n")
    paths["npz"].write_bytes(Path(_npz(folder)).read_bytes())
    torch.save([1, 2], paths["list"])
    torch.save(torch.ones(3), paths["tensor"])
    with open(paths["malicious"], "wb") as f:
        pickle.dump({"state_dict": Payload(folder / "PWNED")}, f, protocol=2)
    torch.save({"state_dict": [1, 2]}, paths["state_list"])
    torch.save({"state_dict": {"conv1.weight": 3}}, paths["state_ints"])
    torch.save({k: v for k, v in good.items() if k != "optimizer"}, paths["no_optimizer"])
    torch.save({"state_dict": models.build_model("resnet32", 10).state_dict(), "arch": "resnet32",
                "num_classes": 10, "use_norm": False}, paths["resnet32"])
    torch.save({"state_dict": models.build_model("resnet20", 100).state_dict(), "arch": "resnet20",
                "num_classes": 100, "use_norm": False}, paths["classes100"])
    return paths


def _npz(folder):
    path = folder / "arrays.npz"
    np.savez(path, a=np.ones(3))
    return path


KINDS = ("zero", "truncated", "text", "npz", "list", "tensor", "malicious", "state_list", "state_ints",
         "no_optimizer", "resnet32", "classes100")
WHY = {"zero": "zero bytes", "truncated": "not a readable PyTorch checkpoint", "text": "cannot read",
       "npz": "not a readable PyTorch checkpoint", "list": "holds no 'state_dict' (a list)",
       "tensor": "holds no 'state_dict' (a Tensor)", "malicious": "the global posix.system",
       "state_list": "'state_dict' is not a mapping of tensor names to tensors (a list)",
       "state_ints": "'conv1.weight' is of type int", "no_optimizer": "holds no optimizer state",
       "resnet32": "is a checkpoint of resnet32", "classes100": "it has 100 classes"}


def cifar_flags(data, out, *extra):
    return ["--dataset", "cifar10", "--data_path", data, "--imb_factor", "0.1", "--epochs", "1", "-b", "16",
            "-a", "resnet20", "--device", "cpu", "--seed", "0", "--root_log", str(out / "log"),
            "--root_model", str(out / "ckpt"), *extra]


@pytest.fixture(scope="module")
def pseudo_file(tmp_path_factory):
    """A well-formed pseudo-label file for the 10-per-class pool train_semi.py draws from (no training needed)."""
    path = str(tmp_path_factory.mktemp("pseudo") / "pseudo.npz")
    write_pseudo_labels(path, np.arange(40) % 10, np.ones(40), "model.pth")
    return path


SEMI = ("--imb_factor_unlabel", "0.1", "--unlabeled_source", "cifar10_train", "--labeled_max", "2",
        "--unlabeled_max", "1")


def script_case(name, data, out, path, pseudo):
    """(main, argv) giving ``path`` as the checkpoint of the script/flag ``name``."""
    if name == "train --resume":
        return train.main, cifar_flags(data, out, "--resume", path)
    if name == "train -e --resume":
        return train.main, cifar_flags(data, out, "-e", "--resume", path)
    if name == "train --pretrained_model":
        return train.main, cifar_flags(data, out, "--pretrained_model", path)
    if name == "train_semi --resume":
        return train_semi.main, cifar_flags(data, out, *SEMI, "--pseudo_label_file", pseudo, "--resume", path)
    if name == "pretrain_rot --resume":
        return pretrain_rot.main, cifar_flags(data, out, "--resume", path)
    if name == "gen_pseudolabels --resume":
        return gen_pseudolabels.main, ["--dataset", "cifar10", "--data_path", data, "--resume", path, "--device",
                                       "cpu", "--unlabeled_source", "cifar10_train", "--output_dir", str(out / "pl")]
    return pretrain_moco.main, ["--dataset", "cifar10", "--data", data, "-a", "resnet20", "--device", "cpu",
                                "-b", "16", "--moco-k", "32", "-j", "0", "--root_path", str(out / "moco"),
                                "--root_log", str(out / "log"), "--resume", path]


SCRIPTS = ("train --resume", "train -e --resume", "train --pretrained_model", "train_semi --resume",
           "pretrain_rot --resume", "gen_pseudolabels --resume", "pretrain_moco --resume")
# What each script's flag may be given and still be refused for another reason than the kind's (a backbone
# ignores the head; -e needs no optimizer; the others' models are not resnet20 classifiers of 10 classes).
NOT_REFUSED = {("train --pretrained_model", "classes100"), ("train --pretrained_model", "no_optimizer"),
               ("train -e --resume", "no_optimizer"), ("gen_pseudolabels --resume", "no_optimizer"),
               ("gen_pseudolabels --resume", "resnet32")}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("kind", KINDS)
def test_unusable_checkpoints_are_refused_in_one_line_before_any_output(
        script, kind, files, tiny_cifar10, pseudo_file, tmp_path, capsys, monkeypatch):
    if (script, kind) in NOT_REFUSED:
        pytest.skip("a usable file for this flag")
    main, argv = script_case(script, tiny_cifar10, tmp_path / "out", str(files[kind]), pseudo_file)
    code, err = outcome(main, argv, capsys, monkeypatch)
    assert code == 2
    assert_one_line(err, f"{script.split()[-1]}: ", repr(str(files[kind])))
    if script.startswith("pretrain_moco") and kind in ("resnet32", "classes100", "no_optimizer"):
        assert "does not fit the model of MoCo of -a resnet20" in err
    elif script.startswith("pretrain_rot") and kind in ("resnet32", "classes100", "no_optimizer"):
        assert "with 4 classes (the four rotations)" in err
    elif script == "train --pretrained_model" and kind == "resnet32":
        assert "has backbone weights the model lacks" in err and "a checkpoint of resnet32" in err
    else:
        assert WHY[kind] in err
    assert not (tmp_path / "out").exists()
    assert not (files[kind].parent / "PWNED").exists()


def test_architecture_mismatch_names_the_file_its_architecture_and_the_flag(files, tiny_cifar10, tmp_path,
                                                                            capsys, monkeypatch):
    code, err = outcome(train.main, cifar_flags(tiny_cifar10, tmp_path, "--resume", str(files["resnet32"])),
                        capsys, monkeypatch)
    assert code == 2
    assert_one_line(err, f"--resume: {str(files['resnet32'])!r} is a checkpoint of resnet32 (10 classes, linear "
                         "head), which does not fit the model of -a/--arch resnet20",
                    "it was trained with -a resnet32", "tensors the model lacks, e.g. ['layer1.3.conv1.weight'")


def test_a_good_checkpoint_of_another_script_names_what_it_is(base, tiny_cifar10, tmp_path, capsys, monkeypatch):
    argv = ["--dataset", "cifar10", "--data", tiny_cifar10, "-a", "resnet20", "--device", "cpu", "-b", "16",
            "--moco-k", "32", "--root_path", str(tmp_path / "moco"), "--root_log", str(tmp_path / "log"),
            "--resume", base]
    code, err = outcome(pretrain_moco.main, argv, capsys, monkeypatch)
    assert code == 2
    assert_one_line(err, f"{base!r} is a checkpoint of resnet20 (10 classes, linear head), which does not fit the "
                         "model of MoCo of -a resnet20 --moco-dim 128 --moco-k 32")
    assert not (tmp_path / "log").exists() and not (tmp_path / "moco").exists()


# -- YAML configs -------------------------------------------------------------------------------------------
CONFIGS = {
    "syntax": ("lr: [0.1\n", "not valid YAML at line 2, column 1"),
    "python tag": ("lr: !!python/object/apply:os.system ['touch {marker}']\n",
                   "tags that build Python objects are refused"),
    "top-level tag": ("!!python/object/apply:os.system ['touch {marker}']\n", "not valid YAML at line 1"),
    "list": ("- lr\n- 0.1\n", "expected a mapping of flag names to values, got list"),
    "scalar": ("0.1\n", "expected a mapping of flag names to values, got float"),
    "unknown key": ("learnin_rate: 0.1\n", "unknown key 'learnin_rate'; did you mean 'learning_rate'?"),
    "two values": ("momentum: [0.9, 0.8]\n", "momentum: expected a float, got [0.9, 0.8]"),
    "text for an integer": ('epochs: "abc"\n', "epochs: 'abc' is not a valid value"),
    "null": ("lr: null\n", "lr: null, but the flag takes a float"),
    "bool for a number": ("epochs: true\n", "epochs: expected an integer, got True"),
    "text for a switch": ("evaluate: 'yes'\n", "evaluate: expected true or false, got 'yes'"),
    "bool for a string": ("exp_str: no\n", "exp_str: expected a string, got False (quote it)"),
    "choice": ("loss_type: Hinge\n", "loss_type: 'Hinge' is not one of"),
    "duplicate key": ("lr: 0.1\nlr: 0.2\n", "at line 2, column 1: key 'lr' appears twice"),
    "missing base": ("_base_: nowhere.yaml\n", "_base_: no file"),
    "base cycle": ("_base_: cfg.yaml\n", "_base_ cycle"),
    "not UTF-8": (b"\xff\xfe\x00lr: 0.1\n", "not a YAML text file"),
    "non-finite value": ("lr: .nan\n", "--lr must be a finite positive number, got nan"),
    "negative seed": ("rand_number: -1\n", "--rand_number must be a non-negative integer"),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_bad_config_files_are_one_line_naming_the_file_and_the_key(case, tiny_cifar10, tmp_path, capsys,
                                                                   monkeypatch):
    text, message = CONFIGS[case]
    cfg = tmp_path / "cfg.yaml"
    if isinstance(text, bytes):
        cfg.write_bytes(text)
    else:
        cfg.write_text(text.format(marker=tmp_path / "PWNED"))
    code, err = outcome(train.main, cifar_flags(tiny_cifar10, tmp_path / "out", "--config", str(cfg)), capsys,
                        monkeypatch)
    assert code == 2
    assert_one_line(err, message, *([] if message.startswith("--") else [str(cfg)]))
    assert not (tmp_path / "out").exists() and not (tmp_path / "PWNED").exists()


def test_a_config_file_that_is_missing_or_holds_a_list_for_imagenet_inat(tmp_path, capsys, monkeypatch):
    code, err = outcome(imagenet_main.main, ["--cfg", str(tmp_path / "none.yaml")], capsys, monkeypatch)
    assert code == 2
    assert_one_line(err, f"--cfg: no file {str(tmp_path / 'none.yaml')!r}")
    (tmp_path / "list.yaml").write_text("- a\n")
    code, err = outcome(imagenet_main.main, ["--cfg", str(tmp_path / "list.yaml")], capsys, monkeypatch)
    assert code == 2
    assert_one_line(err, "list.yaml: expected a mapping")


# -- flags --------------------------------------------------------------------------------------------------
FLAGS = [("-p", "0", "-p/--print-freq must be at least 1, got 0"),
         ("--eval_batch_size", "0", "--eval_batch_size must be at least 1, got 0"),
         ("--seed", "-1", "--seed must be a non-negative integer"),
         ("--rand_number", "-1", "--rand_number must be a non-negative integer"),
         ("--lr", "nan", "--lr must be a finite positive number, got nan"),
         ("--momentum", "nan", "--momentum must be a finite non-negative number, got nan"),
         ("--wd", "-1", "--wd/--weight-decay must be a finite non-negative number, got -1.0"),
         ("-j", "-1", "-j/--workers must be a non-negative integer, got -1"),
         ("--imb_type", "expo", "argument --imb_type: invalid choice: 'expo'"),
         ("--epochs", "x", "argument --epochs: invalid int value: 'x'")]


@pytest.fixture(scope="module")
def lt_root(tmp_path_factory):
    """A tiny synthetic ImageNet-LT (4 classes) for imagenet_inat's checks."""
    root = tmp_path_factory.mktemp("synthetic_lt")
    generate(str(root), classes=4, max_per_class=8, min_per_class=2, val=2, test=2, size=16)
    return str(root)


def flag_case(script, data, lt_root, out, pseudo):
    if script == "imagenet_inat":
        return imagenet_main.main, ["--cfg", str(REPO / "imagenet_inat/config/synthetic/feat_uniform.yaml"),
                                    "--data_root", lt_root, "--num_classes", "4", "--batch_size", "4",
                                    "--log_dir", str(out / "log"), "--device", "cpu"]
    if script == "pretrain_moco":
        return pretrain_moco.main, ["--dataset", "cifar10", "--data", data, "-a", "resnet20", "--device", "cpu",
                                    "-b", "16", "--moco-k", "32", "--root_path", str(out / "moco"),
                                    "--root_log", str(out / "log")]
    extra = ("--pseudo_label_file", pseudo, *SEMI) if script == "train_semi" else ()
    return {"train": train, "train_semi": train_semi, "pretrain_rot": pretrain_rot}[script].main, \
        cifar_flags(data, out, *extra)


@pytest.mark.parametrize("script", ["train", "train_semi", "pretrain_rot", "pretrain_moco", "imagenet_inat"])
@pytest.mark.parametrize("flag, value, message", FLAGS)
def test_bad_flag_values_name_the_flag_in_one_line_before_any_output(
        script, flag, value, message, tiny_cifar10, lt_root, pseudo_file, tmp_path, capsys, monkeypatch):
    if script == "imagenet_inat" and flag in ("--rand_number", "--imb_type"):
        pytest.skip("no long-tailed subsampling flags there: the split files are the data set")
    if script == "pretrain_moco" and flag == "--eval_batch_size":
        pytest.skip("MoCo pre-training does not evaluate")
    main, argv = flag_case(script, tiny_cifar10, lt_root, tmp_path / "out", pseudo_file)
    code, err = outcome(main, [*argv, flag, value], capsys, monkeypatch)
    assert code == 2
    assert_one_line(err, message)
    assert not (tmp_path / "out").exists()


def test_gen_pseudolabels_checks_its_batch_size(base, tiny_cifar10, tmp_path, capsys, monkeypatch):
    code, err = outcome(gen_pseudolabels.main, ["--dataset", "cifar10", "--data_path", tiny_cifar10, "--resume",
                                                base, "-b", "0", "--output_dir", str(tmp_path / "pl")],
                        capsys, monkeypatch)
    assert code == 2
    assert_one_line(err, "--batch_size must be positive, got 0")


# -- data files ---------------------------------------------------------------------------------------------
def damaged_copy(root, tmp_path, name, content):
    """A copy of the CIFAR-10 folder ``root`` with the batch ``name`` replaced by ``content``."""
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    (copy / "cifar-10-batches-py" / name).write_bytes(content)
    return str(copy)


def batch(data, labels):
    return pickle.dumps({"data": data, "labels": labels, "batch_label": "x"}, protocol=4)


def payload_pickle(marker, key="data"):
    return pickle.dumps({key: Payload(marker)}, protocol=2)


DATA = {
    "refused global": (lambda marker: payload_pickle(marker), "refused global 'posix.system' in {path}"),
    "truncated": (lambda marker: batch(np.zeros((4, 3072), np.uint8), [0] * 4)[:200],
                  "{path}: not a readable pickle (truncated"),
    "empty": (lambda marker: b"", "{path}: not a readable pickle (truncated or another format: zero bytes)"),
    "not a dict": (lambda marker: pickle.dumps([1, 2]), "{path}: expected a pickled dict, got list"),
    "missing key": (lambda marker: pickle.dumps({"data": np.zeros((4, 3072), np.uint8)}),
                    "{path}: missing key(s) ['labels']"),
    "image shape": (lambda marker: batch(np.zeros((4, 7), np.uint8), [0] * 4),
                    "{path}: 'data' has shape (4, 7), expected (N, 3072)"),
    "label count": (lambda marker: batch(np.zeros((4, 3072), np.uint8), [0] * 3),
                    "{path}: 'labels' has shape (3,) for 4 images"),
    "label range": (lambda marker: batch(np.zeros((4, 3072), np.uint8), [0, 1, 2, 10]),
                    "{path}: 'labels' holds labels outside 0..9"),
    "text labels": (lambda marker: batch(np.zeros((4, 3072), np.uint8), ["a"] * 4),
                    "{path}: 'labels' holds <U1 values, expected integers"),
}


@pytest.mark.parametrize("case", DATA)
def test_bad_cifar_batches_fail_in_one_line_naming_the_file_before_any_output(case, tiny_cifar10, tmp_path, capsys,
                                                                             monkeypatch):
    content, message = DATA[case]
    data = damaged_copy(tiny_cifar10, tmp_path, "data_batch_2", content(tmp_path / "PWNED"))
    code, err = outcome(train.main, cifar_flags(data, tmp_path / "out", "--no-download"), capsys, monkeypatch)
    assert code == 1
    assert_one_line(err, message.format(path=os.path.join(data, "cifar-10-batches-py", "data_batch_2")))
    assert not (tmp_path / "out").exists() and not (tmp_path / "PWNED").exists()


def test_refused_global_in_the_tiny_images_pool_names_file_and_global(base, tiny_cifar10, tmp_path, capsys,
                                                                      monkeypatch):
    pool = tmp_path / "pool.pickle"
    pool.write_bytes(payload_pickle(tmp_path / "PWNED"))
    argv = ["--dataset", "cifar10", "--data_path", str(tmp_path), "--data_filename", pool.name, "--resume", base,
            "--device", "cpu", "--unlabeled_source", "tinyimages", "--output_dir", str(tmp_path / "out")]
    code, err = outcome(gen_pseudolabels.main, argv, capsys, monkeypatch)
    assert code == 1
    assert_one_line(err, f"refused global 'posix.system' in {pool}", "nothing in it was run")
    assert not (tmp_path / "out").exists() and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("content, message", [
    ({"data": np.zeros((3, 32, 32), np.uint8)}, "'data' has shape (3, 32, 32), expected (N, 32, 32, 3)"),
    ({"data": np.zeros((3, 32, 32, 3), np.uint8), "extrapolated_targets": [1, 2]},
     "'extrapolated_targets' has shape (2,) for 3 images"),
])
def test_tiny_images_of_the_wrong_layout_name_the_file_and_key(tmp_path, content, message):
    path = tmp_path / "ti.pickle"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError) as error:
        read_tiny_images(str(path))
    assert str(error.value).startswith(f"{path}: {message}")


def test_damaged_svhn_files_name_the_file(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 40)
    with pytest.raises(ValueError, match="train_32x32.mat: not a readable MATLAB .mat file"):
        read_svhn(str(tmp_path), "train")


def pseudo_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


PSEUDO = {
    "truncated": (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 40), "not a readable .npz file"),
    "text": (lambda p: p.write_text("hello\n"), "holds pickled Python objects"),
    "object array": (lambda p: pseudo_npz(p, predictions=np.array([1, None], dtype=object), indices=np.arange(2)),
                     "holds pickled Python objects"),
    "missing key": (lambda p: pseudo_npz(p, predictions=np.zeros(40, np.int64)), "no array 'indices'"),
    "2-D": (lambda p: pseudo_npz(p, predictions=np.zeros((40, 2), np.int64), indices=np.arange(40)),
            "'predictions' is a int64 array of shape (40, 2)"),
    "floats": (lambda p: pseudo_npz(p, predictions=np.zeros(40), indices=np.arange(40)),
               "'predictions' is a float64 array"),
    "lengths": (lambda p: pseudo_npz(p, predictions=np.zeros(30, np.int64), indices=np.arange(40)),
                "arrays ['predictions', 'indices'] differ in length ([30, 40])"),
}


@pytest.mark.parametrize("case", PSEUDO)
def test_bad_pseudo_label_npz_files_fail_in_one_line_naming_the_file(case, tiny_cifar10, tmp_path, capsys,
                                                                     monkeypatch):
    write, message = PSEUDO[case]
    path = tmp_path / "pseudo.npz"
    write(path)
    argv = cifar_flags(tiny_cifar10, tmp_path / "out", *SEMI, "--pseudo_label_file", str(path))
    code, err = outcome(train_semi.main, argv, capsys, monkeypatch)
    assert code == 1
    assert_one_line(err, f"{path}: {message}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ("payload", "refused global 'posix.system' in {path}"),
    (pickle.dumps({"extrapolated_targets": np.zeros(10, np.int64)})[:30], "{path}: not a readable pickle"),
    (pickle.dumps({"extrapolated_targets": ["a"] * 10}), "{path}: 'extrapolated_targets' is a <U1 array"),
])
def test_bad_upstream_pseudo_label_pickles_name_the_file(tmp_path, content, message):
    path = tmp_path / "pseudo.pickle"
    path.write_bytes(payload_pickle(tmp_path / "PWNED", "extrapolated_targets") if content == "payload" else content)
    with pytest.raises((ValueError, pickle.UnpicklingError)) as error:
        read_pseudo_labels(path, np.arange(3), 10, 10)
    assert message.format(path=path) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "PWNED").exists()


# -- imagenet_inat checkpoints ----------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [["--init"], ["--test", "--model_dir"], ["--resume"]])
@pytest.mark.parametrize("kind", ["truncated", "malicious", "state_list", "resnet32"])
def test_imagenet_inat_refuses_unusable_checkpoints_before_any_output(flags, kind, files, lt_root, tmp_path, capsys,
                                                                      monkeypatch):
    argv = ["--cfg", str(REPO / "imagenet_inat/config/synthetic/feat_uniform.yaml"), "--data_root", lt_root,
            "--num_classes", "4", "--batch_size", "4", "--log_dir", str(tmp_path / "log"), "--device", "cpu",
            "-a", "resnet10", *flags, str(files[kind])]
    code, err = outcome(imagenet_main.main, argv, capsys, monkeypatch)
    assert code == 2
    assert_one_line(err, str(files[kind]), {"truncated": "not a readable PyTorch checkpoint",
                                             "malicious": "the global posix.system",
                                             "state_list": "'state_dict' is not a mapping",
                                             "resnet32": "a checkpoint of resnet32"}[kind])
    assert not (tmp_path / "log").exists()


# -- run failures: disk, permissions, NaN -------------------------------------------------------------------
def failing(error):
    """A ``main(argv)`` that raises ``error``."""
    def main(argv=None):
        raise error
    return main


@pytest.mark.parametrize("error, fragments", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/run/ckpt.pth.tar"),
     ["no space left on device: /x/run/ckpt.pth.tar (folder /x/run", "free space there or choose another path"]),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/x/run/ckpt.pth.tar"), ["disk quota exceeded: /x/run"]),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/x/log"),
     ["permission denied: /x/log (folder /x)", "check its permissions"]),
    (PermissionError(errno.EPERM, os.strerror(errno.EPERM), "/x/log"), ["operation not permitted: /x/log"]),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/x/log/args.yaml"),
     ["read-only file system: /x/log/args.yaml", "choose a path on a writable file system"]),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), ["no space left on device while writing the run's files"]),
    (OSError(errno.ENOSPC, "the checkpoint needs 7.0 MB, 0.1 MB free", "/x/ckpt.pth.tar"),
     ["the checkpoint needs 7.0 MB, 0.1 MB free: /x/ckpt.pth.tar"]),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
     ["writing a checkpoint failed part-way, most likely because the disk is full"]),
    (FloatingPointError("training loss became nan at epoch 1, step 2"), ["training loss became nan"]),
    (ValueError("two\nlines"), ["error: two lines"]),
    (OSError("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
             '  File "x.py", line 1\nOSError: image file is truncated'),
     ["Caught OSError in DataLoader worker process 0. OSError: image file is truncated"]),
])
def test_run_failures_are_one_line_with_exit_status_1(error, fragments, capsys, monkeypatch):
    code, err = outcome(failing(error), None, capsys, monkeypatch)
    assert code == 1
    assert_one_line(err, *fragments)


def test_disk_full_names_the_flag_that_chose_the_folder(tiny_cifar10, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"

    def main(argv):
        config.parse(train.build_parser(), argv)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "ckpt" / RUN_NAME / "ckpt.pth.tar"))
    code, err = outcome(main, cifar_flags(tiny_cifar10, out), capsys, monkeypatch)
    assert code == 1
    assert_one_line(err, f"(folder {out / 'ckpt' / RUN_NAME}, ", "MB free); free space there or choose another "
                                                                 "path (--root_model)")


def test_bugs_keep_their_traceback_and_ltr_traceback_keeps_it_for_user_errors(monkeypatch):
    with pytest.raises(KeyError):
        config.run_cli(failing(KeyError("a bug")))
    monkeypatch.setenv("LTR_TRACEBACK", "1")
    with pytest.raises(OSError):
        config.run_cli(failing(OSError(errno.ENOSPC, "full", "/x")))


# -- the real processes -------------------------------------------------------------------------------------
def run_script(*argv, env=None):
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def error_lines(stderr):
    """stderr without the warnings (one line each, e.g. the synthetic data's ChecksumWarning) and the progress bar
    (tqdm's lines of a run that started)."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.split(":")[0].endswith("Warning") and "it/s]" not in line]


def test_a_refused_run_exits_2_with_one_line_and_no_traceback(files, tiny_cifar10, tmp_path):
    done = run_script("train.py", *cifar_flags(tiny_cifar10, tmp_path / "out", "--resume", str(files["malicious"])))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("train.py: error: --resume:") and "the global posix.system" in done.stderr
    assert not (tmp_path / "out").exists() and not (files["malicious"].parent / "PWNED").exists()


def test_a_failed_run_exits_1_with_one_line_and_ltr_traceback_keeps_the_traceback(tiny_cifar10, tmp_path):
    data = damaged_copy(tiny_cifar10, tmp_path, "test_batch", b"")
    argv = ("train.py", *cifar_flags(data, tmp_path / "out", "--no-download"))
    done = run_script(*argv)
    assert done.returncode == 1 and len(error_lines(done.stderr)) == 1 and "Traceback" not in done.stderr
    assert error_lines(done.stderr)[0].startswith("error: ") and "test_batch: not a readable pickle" in done.stderr
    done = run_script(*argv, env={"LTR_TRACEBACK": "1"})
    assert done.returncode == 1 and "Traceback" in done.stderr


def test_a_checkpoint_write_failing_on_a_full_disk_is_one_line(tiny_cifar10, tmp_path):
    """torch.save's own error on a full disk (its zip writer's position check), raised by the first save."""
    code = ("import sys, torch; from engine import config; import train\n"
            "def full(*a, **k): raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 576 "
            "vs 534')\n"
            "torch.save = full\n"
            "config.run_cli(lambda: train.main(sys.argv[1:]))\n")
    done = run_script("-c", code, *cifar_flags(tiny_cifar10, tmp_path / "out"))
    assert done.returncode == 1 and len(error_lines(done.stderr)) == 1 and "Traceback" not in done.stderr
    assert ("disk" in done.stderr or "no space" in done.stderr) and str(tmp_path / "out" / "ckpt") in done.stderr


def test_a_resumed_checkpoint_needs_an_epoch_to_continue_from(base, tiny_cifar10, tmp_path, capsys, monkeypatch):
    ckpt = dict(torch.load(base, weights_only=True), epoch="x")
    path = tmp_path / "epoch.pth"
    torch.save(ckpt, path)
    code, err = outcome(train.main, cifar_flags(tiny_cifar10, tmp_path / "out", "--resume", str(path)), capsys,
                        monkeypatch)
    assert code == 2
    assert_one_line(err, f"--resume: {str(path)!r}: 'epoch' (the next epoch to run) is 'x'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    ("training_opt: {dataset: ImageNet_LT, num_classes: 4, batch_size: 4, num_epochs: 1}\nnetworks: 3\n",
     "not a valid config of its layout (AttributeError"),
    ("training_opt: {dataset: ImageNet_LT}\nnetworks: {}\n", "training_opt.num_classes is missing"),
])
def test_malformed_reference_imagenet_configs_are_one_line(text, message, tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "reference.yaml"
    cfg.write_text(text)
    code, err = outcome(imagenet_main.main, ["--cfg", str(cfg)], capsys, monkeypatch)
    assert code == 2
    assert_one_line(err, str(cfg), message)


@pytest.mark.parametrize("content, message", [
    ("tables: [1\n", "not valid YAML at line 2"), (b"\xff\xfe", "not a YAML text file"),
    ("!!python/object/apply:os.system ['touch {marker}']\n", "tags that build Python objects are refused")])
def test_reproduce_refuses_a_table_spec_that_is_not_yaml(content, message, tmp_path, capsys, monkeypatch):
    import reproduce
    spec = tmp_path / "table.yaml"
    if isinstance(content, bytes):
        spec.write_bytes(content)
    else:
        spec.write_text(content.format(marker=tmp_path / "PWNED"))
    code, err = outcome(reproduce.main, [str(spec), "--dry-run", "--out", str(tmp_path / "out")], capsys,
                        monkeypatch)
    assert code == 2
    assert_one_line(err, f"error: {spec}: ", message)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists()
