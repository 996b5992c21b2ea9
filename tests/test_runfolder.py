"""The run folder as a transaction: a kill at any write point, then a resume, gives the unbroken run's state.

Kills are injected in this process at every write an epoch makes (the rename of a checkpoint or of its best copy,
the ``metrics.jsonl`` line (before it, torn in the middle, after it), the TensorBoard scalars, ``final.json``): the
injected point raises ``Killed`` (a BaseException nothing in the project catches), after leaving on disk what a
real kill leaves there (a complete temporary file before a rename, half a line). The run then continues as
reproduce.py's automatic resume does: ``--resume`` from its last checkpoint when there is one, else from scratch,
and every part of the folder must equal the unbroken run's: last and best checkpoints (weights, optimizer state,
progress), ``metrics.jsonl``, ``final.json``, the TensorBoard scalars; and no temporary file is left. A few real
kills (SIGKILL of a subprocess) check what the simulation cannot.
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import gen_pseudolabels
import pretrain_moco
import pretrain_rot
import train
import train_semi
from engine.train import checkpoint, runlock, runlog
from engine.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TIMES = ("time_train", "time_epoch")


class Killed(BaseException):
    """The process died here."""


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical reductions between the runs compared
    yield
    torch.set_num_threads(threads)


class WritePoints:
    """Counts the run folder's writes and kills the run at one of them: ``kill_at = (index, mode)``."""

    def __init__(self, monkeypatch, kill_at=None):
        self.events, self.kill_at = [], kill_at
        real_replace, real_append, real_scalars = os.replace, runlog.append_line, runlog.RunLog._scalars

        def replace(src, dst):
            if self._reached("replace", dst, "before"):
                shutil.copy(src, os.path.join(os.path.dirname(src), ".tmp-left-by-kill"))  # a kill keeps it
                raise Killed
            real_replace(src, dst)
            if self._reached("replace", dst, "after", count=False):
                raise Killed

        def append(path, text):
            if self._reached("append", path, "before"):
                raise Killed
            if self.kill_at == (len(self.events) - 1, "torn"):
                real_append(path, text[: len(text) // 2])
                raise Killed
            real_append(path, text)
            if self._reached("append", path, "after", count=False):
                raise Killed

        def scalars(run, record):
            if self._reached("tensorboard", run.dir, "before"):
                raise Killed
            real_scalars(run, record)

        monkeypatch.setattr(checkpoint.os, "replace", replace)
        monkeypatch.setattr(runlog, "append_line", append)
        monkeypatch.setattr(runlog.RunLog, "_scalars", scalars)

    def _reached(self, kind, path, mode, count=True) -> bool:
        if count:
            self.events.append((kind, os.path.basename(path)))
        return self.kill_at == (len(self.events) - 1, mode)


MODES = {"replace": ("before", "after"), "append": ("before", "torn", "after"), "tensorboard": ("before",)}


@dataclass
class Script:
    main: Callable
    argv: Callable[[Path], list]
    ckpt_dir: Callable[[Path], Path]
    checkpoints: str = "ckpt.pth.tar"  # glob of the checkpoints; the resume takes the newest
    best: bool = True

    def latest(self, out: Path) -> str | None:
        try:
            found = sorted(glob.glob(str(self.ckpt_dir(out) / self.checkpoints)))
        except (FileNotFoundError, ValueError):  # killed before its checkpoint folder was made
            return None
        return found[-1] if found else None

    def log_dir(self, out: Path) -> Path:
        (folder,) = [p for p in (out / "log").iterdir() if p.is_dir()]
        return folder


def tiny_cifar(root, out, *extra):
    return ["--dataset", "cifar10", "--data_path", str(root), "--imb_factor", "0.1", "--epochs", "2", "-b", "64",
            "-a", "resnet20", "--device", "cpu", "--seed", "0", "--root_log", str(out / "log"),
            "--root_model", str(out / "ckpt"), *extra]


def only_folder(parent: Path) -> Path:
    (folder,) = [p for p in parent.iterdir() if p.is_dir()]
    return folder


def scripts(cifar10_root, pseudo_file=None):
    return {
        "train_device": Script(train.main, lambda out: tiny_cifar(cifar10_root, out, "--loss_type", "LDAM",
                                                                  "--train_rule", "DRW", "--drw_epoch", "1"),
                               lambda out: only_folder(out / "ckpt")),
        "train_val": Script(train.main, lambda out: tiny_cifar(cifar10_root, out, "--val_split", "5"),
                            lambda out: only_folder(out / "ckpt")),
        "train_torch": Script(train.main, lambda out: tiny_cifar(cifar10_root, out, "--loader", "torch", "-j", "0"),
                              lambda out: only_folder(out / "ckpt")),
        "pretrain_rot": Script(pretrain_rot.main, lambda out: tiny_cifar(cifar10_root, out),
                               lambda out: only_folder(out / "ckpt")),
        "pretrain_moco": Script(pretrain_moco.main,
                                lambda out: ["--dataset", "cifar10", "--data", str(cifar10_root), "--imb_factor", "0.1",
                                             "-a", "resnet20", "--device", "cpu", "--seed", "0", "-j", "0", "-p", "1",
                                             "--root_path", str(out / "ckpt"), "--root_log", str(out / "log"),
                                             "-b", "32", "--moco-k", "64", "--moco-dim", "8", "--epochs", "2"],
                                lambda out: out / "ckpt" / "cifar10" / "checkpoint", "moco_ckpt_*.pth.tar",
                                best=False),
        "train_semi": Script(train_semi.main,
                             lambda out: ["--data_path", str(cifar10_root), "--dataset", "cifar10", "--imb_factor",
                                          "0.1", "--imb_factor_unlabel", "0.1", "--unlabeled_source", "cifar10_train",
                                          "--labeled_max", "20", "--unlabeled_max", "30", "--pseudo_label_file",
                                          str(pseudo_file), "--epochs", "2", "-b", "16", "-a", "resnet20",
                                          "--device", "cpu", "--seed", "0", "--root_log", str(out / "log"),
                                          "--root_model", str(out / "ckpt")],
                             lambda out: only_folder(out / "ckpt")),
    }


def tensorboard_scalars(log_dir: Path) -> dict:
    files = sorted(glob.glob(str(log_dir / "**" / "events.out.tfevents.*"), recursive=True))
    assert len(files) <= 1, f"one TensorBoard writer per run, found {files}"
    scalars = {}
    for path in files:
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = (value.tensor.float_val[0] if value.HasField("tensor")
                                                    else value.simple_value)
    return scalars


def without_times(records):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in records]


def tensors(state):
    if torch.is_tensor(state):
        return [state]
    if isinstance(state, dict):
        return [t for k in sorted(state, key=str) for t in tensors(state[k])]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in tensors(v)]
    return []


def folder_state(script: Script, out: Path) -> dict:
    """Everything of a finished run that must not depend on where it was killed."""
    ckpt_dir, log_dir = script.ckpt_dir(out), script.log_dir(out)
    leftovers = [p for d in (ckpt_dir, log_dir) for p in os.listdir(d) if p.startswith(".tmp")]
    assert not leftovers, f"temporary files left: {leftovers}"
    assert script.best == os.path.exists(ckpt_dir / "ckpt.best.pth.tar")
    state = {"metrics": without_times(runlog.read_records(str(log_dir / "metrics.jsonl"))),
             "final": json.load(open(log_dir / "final.json")), "scalars": tensorboard_scalars(log_dir),
             "checkpoints": sorted(os.listdir(ckpt_dir))}
    names = [script.latest(out)] + sorted(glob.glob(str(ckpt_dir / "ckpt.*best.pth.tar")))
    for name in names:
        ckpt = load_checkpoint(name)
        state[os.path.basename(name)] = {
            "progress": {k: ckpt.get(k) for k in ("epoch", "best_epoch", "best_acc1", "best", "last")},
            "records": without_times(ckpt["records"]),
            "tensors": tensors([ckpt["state_dict"], ckpt["optimizer"]["state"]])}
    return state


def assert_same(got: dict, want: dict, where: str):
    assert got.keys() == want.keys(), where
    for key in want:
        if isinstance(want[key], dict) and "tensors" in want[key]:
            a, b = got[key].pop("tensors"), dict(want[key]).pop("tensors")
            assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b)), f"{where}: {key} tensors"
            assert got[key] == {k: v for k, v in want[key].items() if k != "tensors"}, f"{where}: {key}"
        else:
            assert got[key] == want[key], f"{where}: {key}"


def continue_run(script: Script, out: Path):
    """What reproduce.py does with an unfinished run: resume from its checkpoint, or start again."""
    latest = script.latest(out)
    script.main(script.argv(out) + (["--resume", latest] if latest else []))


def kill_matrix(script: Script, tmp_path: Path, monkeypatch, select=lambda events, i, mode: True):
    with monkeypatch.context() as m:
        points = WritePoints(m)
        script.main(script.argv(tmp_path / "unbroken"))
    want = folder_state(script, tmp_path / "unbroken")
    tried = 0
    for i, (kind, name) in enumerate(points.events):
        for mode in (m for m in MODES[kind] if select(points.events, i, m)):
            out = tmp_path / f"kill{i}{mode}"
            with monkeypatch.context() as m:
                WritePoints(m, kill_at=(i, mode))
                with pytest.raises(Killed):
                    script.main(script.argv(out))
            continue_run(script, out)
            assert_same(folder_state(script, out), want, f"killed {mode} write {i} ({kind} {name})")
            tried += 1
            shutil.rmtree(out)
    assert tried
    return points.events


def last_epoch_writes(events, i, mode):
    """The last epoch's writes and final.json, in the modes that leave different states (train.py's test tries
    every write and mode)."""
    last_ckpt = max(j for j, (kind, name) in enumerate(events) if kind == "replace" and "ckpt" in name)
    first = max(j for j in range(last_ckpt) if events[j][0] in ("append", "tensorboard")) + 1
    kind, name = events[i]
    return i >= first and (kind, mode) in {("replace", "before"), ("replace", "after"), ("append", "torn")} and \
        not (name == "final.json" and mode == "after")


def test_every_write_point_of_train_py(cifar10_root, tmp_path, monkeypatch):
    events = kill_matrix(scripts(cifar10_root)["train_device"], tmp_path, monkeypatch)
    kinds = [kind for kind, _ in events]
    assert kinds.count("append") == 2 and kinds.count("tensorboard") == 2
    assert {name for kind, name in events if kind == "replace"} >= {"args.yaml", "metrics.jsonl", "ckpt.pth.tar",
                                                                       "ckpt.best.pth.tar", "final.json"}


@pytest.mark.parametrize("name", ["train_val", "train_torch", "pretrain_rot", "pretrain_moco"])
def test_last_epoch_write_points_of_the_other_scripts(name, cifar10_root, tmp_path, monkeypatch):
    kill_matrix(scripts(cifar10_root)[name], tmp_path, monkeypatch, select=last_epoch_writes)


@pytest.fixture(scope="module")
def pseudo_file(cifar10_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    base = ["--dataset", "cifar10", "--data_path", str(cifar10_root), "--imb_factor", "0.1", "--epochs", "1",
            "-b", "64", "-a", "resnet20", "--device", "cpu", "--seed", "0", "--root_log", str(out / "log"),
            "--root_model", str(out / "ckpt")]
    train.main(base)
    (ckpt,) = glob.glob(str(out / "ckpt" / "*" / "ckpt.pth.tar"))
    return gen_pseudolabels.main(["--dataset", "cifar10", "--resume", ckpt, "--data_dir", str(cifar10_root),
                                  "--output_dir", str(out), "--unlabeled_source", "cifar10_train", "--device", "cpu"])


def test_last_epoch_write_points_of_train_semi(cifar10_root, pseudo_file, tmp_path, monkeypatch):
    kill_matrix(scripts(cifar10_root, pseudo_file)["train_semi"], tmp_path, monkeypatch, select=last_epoch_writes)


# -- what the in-process simulation cannot show -------------------------------------------------------------
def test_sigkill_during_checkpoint_writes_then_resume(cifar10_root, tmp_path):
    """SIGKILL a real run while it writes the checkpoint of its second epoch (torch.save slowed down so that the
    kill lands inside it), then resume: the stale temporary file goes and the state is the unbroken run's."""
    script = scripts(cifar10_root)["train_device"]
    script.main(script.argv(tmp_path / "unbroken"))
    out = tmp_path / "killed"
    slow_save = ("import sys, time, torch, train\n"
                 "from engine.train import checkpoint\n"
                 "real = torch.save\n"
                 "def save(obj, f):\n"
                 "    if obj.get('epoch') == 2:\n"
                 "        f.write(b'partial'); f.flush(); print('SAVING', flush=True); time.sleep(60)\n"
                 "    real(obj, f)\n"
                 "checkpoint.torch.save = save\n"
                 "torch.set_num_threads(1)\n"
                 "train.main(sys.argv[1:])\n")
    proc = subprocess.Popen([sys.executable, "-c", slow_save, *script.argv(out)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("SAVING"):
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    ckpt_dir = script.ckpt_dir(out)
    assert [p for p in os.listdir(ckpt_dir) if p.startswith(".tmp-")], "the kill should leave the temporary file"
    continue_run(script, out)
    assert_same(folder_state(script, out), folder_state(script, tmp_path / "unbroken"), "SIGKILL in torch.save")


# -- one writer per run folder ------------------------------------------------------------------------------
def test_a_second_run_into_a_busy_folder_stops_naming_the_first(cifar10_root, tmp_path):
    argv = tiny_cifar(cifar10_root, tmp_path, "--epochs", "1")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from engine.train import runlock; runlock.acquire(sys.argv[1]); "
                               "print('LOCKED', flush=True); time.sleep(60)",
         str(tmp_path / "log" / "cifar10_resnet20_CE_None_exp_0.1_ss_pretrained")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        with pytest.raises(runlock.RunFolderBusy, match=f"another run writes to this folder \\(pid {holder.pid} on .*, "
                                                        "started .*: -c "):
            train.main(argv)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "ckpt").exists() and os.listdir(only_folder(tmp_path / "log")) == [".lock"]
    train.main(argv)  # the holder is dead: its lock is free again


def test_a_stale_lock_of_a_dead_run_is_taken_over_with_a_note(tmp_path, capfd):
    folder = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import sys; from engine.train import runlock; "
                                                 "runlock.acquire(sys.argv[1]); import os; os._exit(9)", str(folder)],
                          cwd=REPO)
    assert dead.returncode == 9 and json.loads((folder / ".lock").read_text())["pid"]
    runlock.acquire(str(folder))
    assert "took over the lock" in capfd.readouterr().err
    assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
    runlock.release(str(folder))
    assert (folder / ".lock").read_text() == ""


# -- disk space ----------------------------------------------------------------------------------------------
def test_too_little_disk_space_fails_before_training(cifar10_root, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "free_bytes", lambda folder: 10_000)
    start = time.perf_counter()
    with pytest.raises(checkpoint.DiskFullError, match=r"not enough disk space for the next checkpoint: 0\.0 MB free, "
                                                       r"about [1-9][0-9.]* MB needed: '.*ckpt.*'"):
        train.main(tiny_cifar(cifar10_root, tmp_path))
    assert time.perf_counter() - start < 60
    assert not glob.glob(str(tmp_path / "ckpt" / "*" / "*.pth.tar"))
    assert not glob.glob(str(tmp_path / "log" / "*" / "metrics.jsonl")) or \
        not runlog.read_records(glob.glob(str(tmp_path / "log" / "*" / "metrics.jsonl"))[0])


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(cifar10_root, tmp_path, monkeypatch):
    script = scripts(cifar10_root)["train_device"]
    real_save = torch.save

    def full_disk_on_second_save(obj, f):
        if obj.get("epoch") == 2:
            f.write(b"x" * 1000)
            raise OSError(28, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk_on_second_save)
    with pytest.raises(checkpoint.DiskFullError, match=r"no space left on the device .*the previous file is intact"
                                                       r"\): '.*ckpt\.pth\.tar'"):
        script.main(script.argv(tmp_path))
    ckpt_dir = script.ckpt_dir(tmp_path)
    assert load_checkpoint(str(ckpt_dir / "ckpt.pth.tar"))["epoch"] == 1
    assert not [p for p in os.listdir(ckpt_dir) if p.startswith(".tmp")]
    monkeypatch.undo()
    continue_run(script, tmp_path)
    assert load_checkpoint(str(ckpt_dir / "ckpt.pth.tar"))["epoch"] == 2


def test_torch_save_zip_writer_failure_is_reported_as_disk_full(tmp_path, monkeypatch):
    def zip_writer_failure(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoint.torch, "save", zip_writer_failure)
    with pytest.raises(checkpoint.DiskFullError, match="no space left"):
        checkpoint.save_checkpoint({"state_dict": {}}, str(tmp_path / "c.pth.tar"))
    assert os.listdir(tmp_path) == []


# -- TensorBoard ---------------------------------------------------------------------------------------------
def test_tensorboard_writes_one_event_file_with_per_class_scalars(cifar10_root, tmp_path):
    train.main(tiny_cifar(cifar10_root, tmp_path, "--epochs", "1"))
    log_dir = only_folder(tmp_path / "log")
    assert not [p for p in log_dir.iterdir() if p.is_dir()]
    scalars = tensorboard_scalars(log_dir)
    record = runlog.read_records(str(log_dir / "metrics.jsonl"))[0]
    per_class = [scalars[(f"acc/test_val_cls_acc/{i}", 0)] for i in range(10)]
    assert per_class == pytest.approx([a for a in record["test"]["per_class"]], abs=1e-4)
    assert scalars[("acc/test_val_top1", 0)] == pytest.approx(record["test"]["top1"], abs=1e-4)


def test_an_evaluation_creates_no_run_folder(cifar10_root, tmp_path):
    train.main(tiny_cifar(cifar10_root, tmp_path / "trained", "--epochs", "1"))
    (ckpt,) = glob.glob(str(tmp_path / "trained" / "ckpt" / "*" / "ckpt.pth.tar"))
    train.main(tiny_cifar(cifar10_root, tmp_path / "eval", "-e", "--resume", ckpt))
    assert not (tmp_path / "eval").exists()


def test_the_cli_reports_a_full_disk_in_one_line_naming_the_folder_and_flag(cifar10_root, tmp_path, monkeypatch):
    from engine import config

    monkeypatch.setattr(checkpoint, "free_bytes", lambda folder: 10_000)
    with pytest.raises(SystemExit) as stop:
        config.run_cli(lambda: train.main(tiny_cifar(cifar10_root, tmp_path)))
    message = str(stop.value.code)
    assert message.startswith("error: not enough disk space for the next checkpoint: 0.0 MB free, about ")
    assert str(tmp_path / "ckpt") in message and "(--root_model)" in message and "\n" not in message
