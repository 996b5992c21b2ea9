"""torchrun faults: a frozen rank ends the job within --dist_timeout with one line naming it; the flag's checks;
``PeerWatch`` (the heartbeats behind it) on its own: a silent rank, a rank that leaves cleanly, a frozen store."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

import train
from engine import config
from engine.train import distributed

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("value", ["0", "-5", "0.5", "inf", "nan"])
def test_dist_timeout_must_be_finite_and_at_least_a_second(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        config.parse(train.build_parser(), ["--dist_timeout", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --dist_timeout: the process-group timeout must be a finite number of seconds >= 1, got " in err
    assert "Traceback" not in err


def test_dist_timeout_default_and_value():
    assert config.parse(train.build_parser(), []).dist_timeout == 300.0
    assert config.parse(train.build_parser(), ["--dist_timeout", "2.5"]).dist_timeout == 2.5


@pytest.fixture
def ended(monkeypatch):
    """The messages of ``distributed.end_job``, which records them instead of exiting (the guard then goes on
    judging, so a verdict repeats until the watch stops)."""
    messages = []
    monkeypatch.setattr(distributed, "end_job", messages.append)
    return messages


@pytest.fixture
def store():
    server = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=timedelta(seconds=10), wait_for_workers=False)
    return dist.PrefixStore(f"test_{time.monotonic_ns()}", server)


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_peer_watch_names_the_rank_whose_beats_stop(store, ended):
    start = time.monotonic()
    rank0 = distributed.PeerWatch(store, 0, 3, timeout=1.0)
    rank2 = distributed.PeerWatch(store, 2, 3, timeout=1.0)  # rank 1 never beats: frozen from the start
    try:
        assert wait_for(lambda: ended, 5)
        assert time.monotonic() - start >= 1.0
        assert set(ended) == {"rank 1 of 3 stopped answering for 1 s (frozen or killed); the job is stopped"}
    finally:
        rank0.stop()
        rank2.stop()


def test_peer_watch_lets_a_rank_leave_cleanly(store, ended):
    rank0 = distributed.PeerWatch(store, 0, 2, timeout=1.0)
    rank1 = distributed.PeerWatch(store, 1, 2, timeout=1.0)
    try:
        time.sleep(0.5)
        rank1.stop()  # a rank that finished: rank 0 may run on alone for longer than the timeout
        time.sleep(2.0)
        assert ended == []
    finally:
        rank0.stop()


def test_peer_watch_names_a_frozen_store(ended, monkeypatch):
    """The store's host frozen (rank 0 without torchrun's agent): its clients wait without bound, so the guard
    names the host after the timeout, not the ranks that can no longer beat."""
    port = free_port()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)  # a launch without torchrun: rank 0 hosts it
    host = subprocess.Popen([sys.executable, "-c", "import time, torch.distributed as d; "
                             f"s = d.TCPStore('127.0.0.1', {port}, 1, True, wait_for_workers=False); "
                             "print('up', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    watches = []
    try:
        assert host.stdout.readline() == "up\n"
        store = dist.TCPStore("127.0.0.1", port, 1, False, timeout=timedelta(seconds=10))
        watches = [distributed.PeerWatch(store, rank, 2, timeout=1.0) for rank in (0, 1)]
        time.sleep(0.5)
        assert ended == []
        host.send_signal(signal.SIGSTOP)
        assert wait_for(lambda: ended, 5)
        assert set(ended) == {f"rank 0 of 2, which hosts the process group's store at 127.0.0.1:{port}, stopped "
                              "answering for 1 s (frozen or killed); the job is stopped"}
    finally:
        host.send_signal(signal.SIGCONT)
        host.kill()
        host.wait()
        for watch in watches:
            watch.stop()


def run_args(root, tmp_path, *extra):
    return ["--dataset", "cifar10", "--data_path", str(root), "--imb_factor", "0.1", "-b", "64",
            "--root_log", str(tmp_path / "log"), "--root_model", str(tmp_path / "ckpt"), "--device", "cpu",
            "--seed", "0", "--arch", "resnet20", *extra]


def local_rank(pid: int) -> int | None:
    """LOCAL_RANK of a worker torchrun started (None before it has exec'd, or once it has gone)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return next((int(v.split(b"=")[1]) for v in env if v.startswith(b"LOCAL_RANK=")), None)


def workers_of(pid: int) -> dict[int, int]:
    """{local rank: pid} of the worker processes of torchrun ``pid``."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {rank: int(child) for child in children if (rank := local_rank(int(child))) is not None}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_torchrun_frozen_rank_ends_the_job_naming_it(cifar10_root, tmp_path):
    """Rank 1 is stopped (SIGSTOP) once training runs; rank 0, blocked in DDP's all-reduce, ends within the
    timeout with exit code 1 and one line naming rank 1, no traceback; then nothing is left running."""
    timeout = 8
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("LTR_TRACEBACK", None)
    logs = tmp_path / "torchrun"
    job = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "--log-dir", str(logs), "--redirects", "3", "train.py",
         *run_args(cifar10_root, tmp_path, "--epochs", "100", "--dist_timeout", str(timeout))],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers = {}
    try:
        assert wait_for(lambda: set(workers_of(job.pid)) == {0, 1}, 60), "torchrun did not start two workers"
        workers = workers_of(job.pid)
        out0 = lambda name: "".join(p.read_text() for p in logs.glob(f"*/attempt_0/0/{name}.log"))  # noqa: E731
        # Rank 0's progress bar past a step: rank 1 took part in that step's gradient all-reduce.
        assert wait_for(lambda: re.search(r"\| [1-9]\d*/\d+ \[", out0("stderr")), 120), out0("stderr")
        os.kill(workers[1], signal.SIGSTOP)
        stopped = time.monotonic()
        assert wait_for(lambda: not alive(workers[0]), timeout + 30), "rank 0 is still waiting"
        took = time.monotonic() - stopped
        os.kill(workers[1], signal.SIGCONT)  # lets torchrun's SIGTERM end it
        output, _ = job.communicate(timeout=60)
        err0 = out0("stderr")
        errors = [line for line in err0.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, err0
        said = re.fullmatch(r"error: rank 1 of 2 stopped answering for (\d+) s \(frozen or killed\); "
                            r"the job is stopped", errors[0])
        assert said and timeout <= int(said[1]) <= timeout + 3, errors
        assert "Traceback" not in err0
        assert re.search(r"rank\s*:\s*0 \(local_rank: 0\)\s*exitcode\s*:\s*1 ", output), output
        assert job.returncode == 1
        assert timeout - 1 < took < timeout + 10, took
    finally:
        for pid in workers.values():
            if alive(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        if job.poll() is None:
            job.kill()
            job.wait()
    assert not [pid for pid in workers.values() if alive(pid)]
