"""One writer per run folder: an advisory lock file holding the writer's PID, host, start time and command.

The lock is ``fcntl.flock`` on ``<folder>/.lock``: the kernel releases it when its process ends, however it ends,
so a lock left by a killed run is free and is taken over (with a warning naming the dead run); a live holder
stops a second run at once with a message naming it. Folders on file systems without ``flock`` support (some
network mounts) are written without the lock, with a warning.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings

LOCK_NAME = ".lock"
_held: dict[str, int] = {}  # real folder path -> open descriptor of this process's lock


class RunFolderBusy(OSError):
    """Another live process writes to the run folder (errno EBUSY, ``filename`` the folder; a run failure: the
    scripts print it as one line)."""

    def __init__(self, message: str, folder: str):
        super().__init__(errno.EBUSY, message, folder)


def _describe(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"])) if "started" in info else "?"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {started}: "
            f"{info.get('command', '?')}")


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 1 << 16)
    try:
        info = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def acquire(folder: str) -> None:
    """Make this process the one writer of ``folder`` (created if needed) until ``release`` or its end.

    A folder this process already holds is taken again (a previous run in the same process that stopped with
    an exception never released it)."""
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    release(folder)
    path = os.path.join(folder, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            os.close(fd)
            warnings.warn(f"{folder}: cannot lock this folder ({e.strerror}); make sure no other run writes to it")
            return
        other = _read(fd)
        os.close(fd)
        raise RunFolderBusy(f"another run writes to this folder ({_describe(other)}); wait for it to finish, stop "
                            "it, or write this run elsewhere (another --exp_str or output folder)", folder) from None
    previous = _read(fd)
    if previous.get("pid") not in (None, os.getpid()):
        print(f"=> note: took over the lock of {folder} from a run that is no longer running "
              f"({_describe(previous)})", file=sys.stderr, flush=True)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(info).encode())
    _held[key] = fd


def release(folder: str) -> None:
    """Give up this process's lock of ``folder`` (no-op when it holds none). The emptied lock file stays: removing
    it would let a process that opened it just before lock a file no longer in the folder."""
    fd = _held.pop(os.path.realpath(folder), None)
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str, prefix: str = ".tmp-") -> list[str]:
    """Delete the temporary files an atomic write killed before its rename left in ``folder`` (call it only as
    the folder's one writer); returns their names."""
    if not os.path.isdir(folder):
        return []
    stale = sorted(name for name in os.listdir(folder) if name.startswith(prefix))
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale
