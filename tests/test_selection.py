"""Model selection on a validation part (--val_split) and subset provenance (subsets.json, --subset_file)."""
import json
import os

import numpy as np
import pytest
import yaml

import train
from engine.data import subsets
from engine.data.datasets import DATASETS
from engine.train.checkpoint import load_checkpoint
from engine.train.runlog import read_records

NAME = "cifar10_resnet20_CE_None_exp_0.1_ss_pretrained"


def run_args(root, out, *extra, epochs=3):
    return ["--dataset", "cifar10", "--data_path", str(root), "--imb_factor", "0.1", "--epochs", str(epochs),
            "-b", "64", "-a", "resnet20", "--device", "cpu", "--seed", "0", "--root_log", str(out / "log"),
            "--root_model", str(out / "ckpt"), *extra]


def test_holdout_is_disjoint_class_balanced_seeded_and_stable():
    labels = np.repeat(np.arange(5), 20)[np.random.default_rng(0).permutation(100)]
    kept, held = subsets.holdout(labels, 3, seed=7, num_classes=5)
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == 100
    assert np.bincount(labels[held]).tolist() == [3] * 5
    again_kept, again_held = subsets.holdout(labels, 3, seed=7, num_classes=5)
    assert np.array_equal(held, again_held) and np.array_equal(kept, again_kept)
    assert not np.array_equal(held, subsets.holdout(labels, 3, seed=8, num_classes=5)[1])
    with pytest.raises(ValueError, match="--val_split 20: class 0 has only 20 images"):
        subsets.holdout(labels, 20, seed=0, num_classes=5)


def test_val_split_reports_three_numbers_from_the_epochs_they_claim(cifar10_root, tmp_path):
    summary = train.main(run_args(cifar10_root, tmp_path, "--val_split", "5"))
    log = tmp_path / "log" / NAME
    records = read_records(str(log / "metrics.jsonl"))
    assert all(r["val"]["samples"] == 50 and r["test"]["samples"] == 150 for r in records)
    val_epoch = max(range(len(records)), key=lambda e: (records[e]["val"]["top1"], -e))
    test_epoch = max(range(len(records)), key=lambda e: (records[e]["test"]["top1"], -e))
    final = json.load(open(log / "final.json"))
    assert final["val_selected"]["epoch"] == val_epoch
    assert final["val_selected"]["top1"] == records[val_epoch]["test"]["top1"]
    assert final["val_selected"]["val_top1"] == records[val_epoch]["val"]["top1"]
    assert final["best"]["epoch"] == final["best_epoch"] == test_epoch
    assert final["last"]["top1"] == records[-1]["test"]["top1"] and summary["val_selected"] == final["val_selected"]
    ckpt = tmp_path / "ckpt" / NAME
    assert load_checkpoint(str(ckpt / "ckpt.val_best.pth.tar"))["epoch"] == val_epoch + 1
    assert load_checkpoint(str(ckpt / "ckpt.best.pth.tar"))["epoch"] == test_epoch + 1
    parts = json.load(open(log / "subsets.json"))["parts"]
    assert len(np.intersect1d(parts["val"]["indices"], parts["test"]["indices"])) == 0
    assert sorted(parts["val"]["indices"] + parts["test"]["indices"]) == list(range(200))
    assert parts["val"]["cls_num_list"] == [5] * 10


def test_the_validation_part_is_the_same_for_every_script_of_a_seed(cifar10_root):
    spec = DATASETS["cifar10"]
    _, val = spec.build_eval(val_split=4, data_path=str(cifar10_root), rand_number=3)
    _, again = spec.build_eval(val_split=4, data_path=str(cifar10_root), rand_number=3)
    _, other = spec.build_eval(val_split=4, data_path=str(cifar10_root), rand_number=4)
    assert np.array_equal(val.indices, again.indices) and not np.array_equal(val.indices, other.indices)


def test_subset_provenance_is_written_hashed_and_seeded(cifar10_root, tmp_path):
    hashes = []
    for out, seed in ((tmp_path / "a", "0"), (tmp_path / "b", "0"), (tmp_path / "c", "1")):
        train.main(run_args(cifar10_root, out, "--rand_number", seed, epochs=1))
        part = json.load(open(out / "log" / NAME / "subsets.json"))["parts"]["train"]
        assert part["sha256"] == subsets.indices_sha256(part["indices"])
        assert part["cls_num_list"] == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
        args = yaml.safe_load(open(out / "log" / NAME / "args.yaml"))
        final = json.load(open(out / "log" / NAME / "final.json"))
        assert args["subset_sha256"]["train"] == final["subset_sha256"]["train"] == part["sha256"]
        hashes.append(part["sha256"])
    assert hashes[0] == hashes[1] != hashes[2]


def test_subset_file_trains_on_the_exported_subset(cifar10_root, tmp_path):
    train.main(run_args(cifar10_root, tmp_path / "a", "--rand_number", "5", epochs=1))
    exported = tmp_path / "a" / "log" / NAME / "subsets.json"
    train.main(run_args(cifar10_root, tmp_path / "b", "--subset_file", str(exported), epochs=1))
    a = json.load(open(exported))["parts"]["train"]
    b = json.load(open(tmp_path / "b" / "log" / NAME / "subsets.json"))["parts"]["train"]
    assert a["indices"] == b["indices"] and a["sha256"] == b["sha256"]
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join(map(str, a["indices"])))
    data = DATASETS["cifar10"].build("train", data_path=str(cifar10_root), subset_file=str(listed))
    assert data.indices.tolist() == a["indices"]


@pytest.mark.parametrize("content,message", [
    ("[1, 2, 2, 3]", "holds 1 duplicate images \\(e.g. index 2 2 times\\)"),
    ("[0, 1, 1000]", "index 1000 is out of range: the training split has 1000 images"),
    ("[-1, 3]", "index -1 is out of range"),
    ("[0.5, 1]", "must list integer image indices"),
    ("1 2 x", "must list integer image indices"),
    ("[]", "lists no image"),
    ('{"parts": {}}', "needs parts.train.indices"),
    ('{"parts": {"train": {"indices": [0, 1], "cls_num_list": [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]}}}',
     "class counts .* here but the file records"),
])
def test_bad_subset_files_are_refused_naming_the_file(cifar10_root, tmp_path, capsys, content, message):
    bad = tmp_path / "subset.json"
    bad.write_text(content)
    with pytest.raises(ValueError, match=f"--subset_file '{bad}'.*{message}"):
        DATASETS["cifar10"].build("train", data_path=str(cifar10_root), subset_file=str(bad))
    with pytest.raises(SystemExit) as stop:
        train.config.run_cli(lambda: train.main(run_args(cifar10_root, tmp_path / "out", "--subset_file", str(bad))))
    assert f"--subset_file '{bad}'" in f"{stop.value.code} {capsys.readouterr().err}"
    assert not (tmp_path / "out").exists()


def test_the_pretraining_scripts_record_their_training_subset(cifar10_root, tmp_path):
    import glob

    import pretrain_moco
    import pretrain_rot

    pretrain_rot.main(run_args(cifar10_root, tmp_path / "rot", epochs=1))
    pretrain_moco.main(["--dataset", "cifar10", "--data", str(cifar10_root), "--imb_factor", "0.1", "-a", "resnet20",
                        "--device", "cpu", "--seed", "0", "-j", "0", "--root_path", str(tmp_path / "moco" / "ckpt"),
                        "--root_log", str(tmp_path / "moco" / "log"), "-b", "32", "--moco-k", "64",
                        "--moco-dim", "8", "--epochs", "1"])
    reference = json.load(open(glob.glob(str(tmp_path / "rot" / "log" / "*" / "subsets.json"))[0]))["parts"]["train"]
    (moco,) = glob.glob(str(tmp_path / "moco" / "log" / "*"))
    part = json.load(open(os.path.join(moco, "subsets.json")))["parts"]["train"]
    assert part["indices"] == reference["indices"] and len(part["indices"]) == 403
    assert yaml.safe_load(open(os.path.join(moco, "args.yaml")))["subset_sha256"]["train"] == part["sha256"]
