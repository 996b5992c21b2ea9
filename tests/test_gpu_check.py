"""bench/gpu_check.py at smoke size on the CPU: every stage reported with sane numbers, a stage that fails or runs
out of time leaves the others' results and says so, bad input is refused in one line before anything runs, and the
JPEG archive expands as shared/data/expand_cifar10.py expands it."""
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import gpu_check  # noqa: E402
from imbalance_cifar import CIFAR10, read_cifar  # noqa: E402

SHARED_SCRIPT = Path(gpu_check.REPO).parent / "shared" / "data" / "expand_cifar10.py"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    rc = gpu_check.main(["--smoke", "--out", str(out), "--work", str(out / "work")])  # a given --work is kept
    return rc, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), out / "work"


def test_smoke_check_reports_every_stage_ok(smoke):
    rc, report, md, _ = smoke
    stages = report["stages"]
    assert list(stages) == list(gpu_check.STAGES) and report["finished"] and rc == 0
    for name in ("data", "env", "speed", "accuracy"):
        assert stages[name]["status"] == "ok", (name, stages[name])
    assert stages["tests"]["status"] == ("ok" if torch.cuda.is_available() else "skipped: no CUDA")
    for name, st in stages.items():
        assert 0 < st["seconds"] <= st["budget_s"] + 5, name
        assert f"| {name} | {st['status']} |" in md
    assert "Smoke run" in md and "## speed" in md and "## accuracy" in md


def test_smoke_numbers_are_present_and_sane(smoke):
    _, report, _, _ = smoke
    stages = {name: st["result"] for name, st in report["stages"].items()}
    data = stages["data"]
    assert data["source"] == "synthetic" and data["test_images"] == 50
    assert data["lt_train_images"] == sum(data["cls_num_list"]) and data["cls_num_list"][0] > data["cls_num_list"][-1]
    env = stages["env"]
    assert env["cpu_count"] == os.cpu_count() and env["torch"] == torch.__version__
    assert env["git_commit"] == "unknown" or len(env["git_commit"]) == 40
    tests = stages["tests"]
    if not torch.cuda.is_available():
        assert tests["counts"]["skipped"] >= 10 and tests["counts"]["passed"] == 0 and tests["failures"] == []
        assert any("CUDA" in why for why in tests["skip_reasons"])
    speed = stages["speed"]["variants"]
    base, eager = speed["baseline"], speed["eager"]
    for v in (base, eager):
        assert v["status"] == "ok" and v["images_per_s"] > 0 and v["epoch_s"] > 0
        assert v["projected_s"] == pytest.approx(v["first_epoch_s"] + 199 * v["epoch_s"])
    assert eager["ratio"] == pytest.approx(eager["images_per_s"] / base["images_per_s"])
    assert eager["wall_ratio"] == pytest.approx(base["projected_s"] / eager["projected_s"])
    if not torch.cuda.is_available():
        assert speed["compiled"]["status"] == speed["graphs"]["status"] == "skipped: no CUDA"
    accuracy = stages["accuracy"]
    for loss in ("CE", "LDAM-DRW"):
        run = accuracy["runs"][f"{loss} fp32 seed 0"]
        assert run["status"] == "ok" and run["epochs_done"] == 2 == len(run["top1_curve"])
        assert 0 <= run["last"]["top1"] <= run["best"]["top1"] <= 100
        assert run["best"]["top1"] == pytest.approx(max(run["top1_curve"]), abs=0.01)
        assert run["wall_s"] > 0 and run["images_per_s"] > 0 and {"many", "medium", "few"} <= set(run["last"])
        if not torch.cuda.is_available():
            assert accuracy["runs"][f"{loss} fast seed 0"]["status"] == "skipped: no CUDA"
    assert accuracy["aggregate_images_per_s"] > 0
    assert report["headline"]["eager_ratio"] == pytest.approx(eager["ratio"])


def test_a_failed_or_timed_out_stage_leaves_the_others_recorded(tmp_path):
    broken = tmp_path / "broken" / "cifar-10-batches-py"  # every file present, none readable
    broken.mkdir(parents=True)
    for name in gpu_check.CIFAR_FILES:
        (broken / name).write_bytes(b"not a pickle")
    out = tmp_path / "out"
    rc = gpu_check.main(["--smoke", "--data_path", str(broken.parent), "--stages", "env,tests,speed",
                         "--budget_tests", "1", "--out", str(out)])
    report = json.loads((out / "gpu_check.json").read_text())
    stages = report["stages"]
    assert rc == 1 and report["finished"]
    assert stages["env"]["status"] == "ok" and stages["env"]["result"]["cpu_count"] == os.cpu_count()
    assert stages["data"]["status"].startswith("failed: exit code") and "Error" in stages["data"]["log_tail"]
    assert stages["tests"]["status"].startswith("timeout") and stages["tests"]["seconds"] < 5
    assert stages["speed"]["status"].startswith("skipped: no data (the data stage: failed")
    assert stages["accuracy"]["status"] == "not selected"
    md = (out / "gpu_check.md").read_text()
    assert "| env | ok |" in md and "| tests | timeout" in md and "## Output of data (tail)" in md


def test_accuracy_runs_still_going_at_the_budget_are_stopped_and_marked_incomplete(smoke, tmp_path):
    with open(smoke[3] / "stages" / "accuracy.context.json") as f:  # the smoke run's accuracy stage, now endless
        ctx = dict(json.load(f), epochs=100000, work=str(tmp_path), budget=6.0, deadline=time.time() + 6.0)
    result = gpu_check.stage_accuracy(ctx, lambda partial: None)
    assert time.time() < ctx["deadline"] + 3  # stopped at the budget, less the reserve for stopping and reporting
    assert result["status"] == "incomplete: 2 of 2 runs stopped at the budget"
    for loss in ("CE", "LDAM-DRW"):
        run = result["runs"][f"{loss} fp32 seed 0"]
        assert run["status"] == f"incomplete: stopped at the budget after {run['epochs_done']} of 100000 epochs"
        assert run["wall_s"] <= 6.0


@pytest.mark.parametrize("argv, message", [
    (["--data_path", "/no/such/folder"], "--data_path /no/such/folder"),
    (["--data_path", "a", "--data_npz", "b"], "not both"),
    ([], "need --data_path DIR or --data_npz FILE"),
    (["--data_npz", "/no/such.npz"], "no such .npz file"),
    (["--smoke", "--stages", "env,bogus"], "--stages: unknown ['bogus']"),
    (["--smoke", "--budget_speed", "0"], "--budget_speed must be positive"),
    (["--smoke", "--speed_epochs", "1"], "--speed_epochs must be at least 2"),
    (["--smoke", "--speed_variants", "nosuch"], "--speed_variants"),
    (["--smoke", "--fast_flags=--amp --no-such-flag"], "train.py does not know --no-such-flag"),
])
def test_bad_input_is_refused_in_one_line_before_anything_runs(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in last and message in last
    assert not (tmp_path / "out").exists()


def write_tiny_npz(path: Path, n_train: int = 15, n_test: int = 5) -> None:
    """The layout of shared/data/cifar10_jpeg75.npz with a few random JPEGs."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        blobs = []
        for _ in range(n):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=75)
            blobs.append(buffer.getvalue())
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), np.uint8)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        arrays[f"{split}_labels"] = rng.integers(0, 10, n).astype(np.int64)
    path.parent.mkdir(parents=True)
    np.savez(path, classes=np.array([f"c{i}" for i in range(10)]), **arrays)


def test_npz_expansion_decodes_every_jpeg_in_the_shuffled_order(tmp_path):
    npz = tmp_path / "archive" / "cifar10_jpeg75.npz"
    write_tiny_npz(npz)
    assert gpu_check.expand_npz(str(npz), str(tmp_path / "data")).startswith("decoded here")
    z = np.load(npz)
    for train, split in ((True, "train"), (False, "test")):
        images, labels, classes = read_cifar(str(tmp_path / "data"), CIFAR10, train)
        perm = np.random.RandomState(0).permutation(len(z[f"{split}_labels"]))
        offsets, blob = z[f"{split}_offsets"], z[f"{split}_jpeg"]
        for row, i in enumerate(perm):
            jpeg = Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB")
            assert np.array_equal(images[row], np.asarray(jpeg)), (split, row)
        assert np.array_equal(labels, z[f"{split}_labels"][perm]) and classes == [f"c{i}" for i in range(10)]


@pytest.mark.skipif(not SHARED_SCRIPT.is_file(), reason=f"no {SHARED_SCRIPT} to compare with")
def test_npz_expansion_equals_the_shared_script_and_uses_it_when_beside_the_archive(tmp_path):
    alone, beside = tmp_path / "alone" / "cifar10_jpeg75.npz", tmp_path / "beside" / "cifar10_jpeg75.npz"
    write_tiny_npz(alone)
    beside.parent.mkdir()
    shutil.copy(alone, beside)
    shutil.copy(SHARED_SCRIPT, beside.parent / "expand_cifar10.py")
    gpu_check.expand_npz(str(alone), str(tmp_path / "ours"))
    assert gpu_check.expand_npz(str(beside), str(tmp_path / "script")).endswith("expand_cifar10.py")
    for train in (True, False):
        ours, theirs = (read_cifar(str(tmp_path / d), CIFAR10, train) for d in ("ours", "script"))
        assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1]) and ours[2] == theirs[2]


def test_a_run_stopped_mid_epoch_reports_the_epochs_it_reached(tmp_path):
    folder = tmp_path / "log" / "cifar10_resnet32_CE_None_exp_0.01_gpu_check"
    folder.mkdir(parents=True)
    lines = [json.dumps({"epoch": e, "time_train": 2.0, "test": {"top1": top1, "many": 50.0, "medium": None,
                                                                 "few": None}})
             for e, top1 in enumerate([30.0, 45.5, 41.0])]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 3, "time_tr')  # killed while writing
    summary = gpu_check.run_summary(str(tmp_path / "log"), train_images=1000)
    assert summary["epochs_done"] == 3 and summary["top1_curve"] == [30.0, 45.5, 41.0]
    assert summary["best"]["top1"] == 45.5 and summary["best"]["epoch"] == 1 and summary["last"]["top1"] == 41.0
    assert summary["images_per_s"] == pytest.approx(500.0)


def test_pytest_output_is_counted_even_when_cut_off():
    text = ("tests/test_cuda.py::test_a PASSED                       [ 10%]\n"
            "tests/test_cuda.py::test_b[nchw] FAILED                 [ 20%]\n"
            "tests/test_cuda.py::test_c SKIPPED (...)                [ 30%]\n"
            "SKIPPED [1] tests/test_cuda.py:12: needs a CUDA device\n"
            "tests/test_cuda.py::test_d ")
    parsed = gpu_check.parse_pytest(text)
    assert parsed["counts"]["passed"] == 1 and parsed["counts"]["failed"] == 1 and parsed["counts"]["skipped"] == 1
    assert parsed["failures"] == ["tests/test_cuda.py::test_b[nchw]"]
    assert parsed["skip_reasons"] == ["needs a CUDA device"]
