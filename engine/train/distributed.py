"""DistributedDataParallel plumbing for ``torchrun``: process-group setup, rank queries, reductions.

Single-process runs (the default) see rank 0 of world size 1, and every helper becomes a no-op, so the
rest of the code never branches on whether it runs distributed.

A process that stops answering (frozen by SIGSTOP, a debugger, a hung driver) would leave the others waiting
in their next collective; ``PeerWatch`` ends them after ``timeout`` seconds with one line naming its rank.
"""
from __future__ import annotations

import faulthandler
import math
import os
import sys
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT = 300.0  # seconds a process may stop answering before the others end the job


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun), known before the process group exists."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def check_timeout(timeout: float) -> None:
    """A usable ``timeout``: finite, and at least a second (the beats come every tenth of it; see ``PeerWatch``)."""
    if not (math.isfinite(timeout) and timeout >= 1):
        raise ValueError(f"the process-group timeout must be a finite number of seconds >= 1, got {timeout}")


def init(device_kind: str, timeout: float = DEFAULT_TIMEOUT) -> torch.device | None:
    """Join the process group torchrun describes (NCCL on GPUs, Gloo on CPUs); None when not under torchrun.

    ``timeout``: seconds after which a process that stopped answering ends the others (``PeerWatch``). The
    backend gets a little more, as the backstop should the watch itself be stuck: Gloo then raises in the
    blocked collective; NCCL's watchdog tears the process down only with TORCH_NCCL_ASYNC_ERROR_HANDLING
    (default 3, on, in torch >= 2.2). Returns this process's device (cuda:LOCAL_RANK on GPUs).
    """
    if not launched_by_torchrun():
        return None
    check_timeout(timeout)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backstop = timedelta(seconds=timeout + 3 * PeerWatch.beat_interval(timeout))
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", timeout=backstop)
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo", timeout=backstop)
        device = torch.device("cpu")
    global _watch
    if dist.get_world_size() > 1:
        _watch = PeerWatch(dist.distributed_c10d._get_default_store(), dist.get_rank(), dist.get_world_size(),
                           timeout)
    return device


def end_job(message: str) -> None:
    """Print ``error: message`` on a line of its own and end this process with exit code 1, from any thread.

    For a peer that stopped answering: the main thread is then blocked inside a collective (DDP's gradient
    all-reduce, a metric reduction) that no Python exception can interrupt, so the process ends here, as
    torch's own NCCL watchdog does; the run folder is left as a kill leaves it. ``LTR_TRACEBACK=1`` adds
    every thread's stack, the main thread's showing where it waited.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    print(f"\nerror: {message}", file=sys.stderr, flush=True)  # below a progress bar the line may hold
    if os.environ.get("LTR_TRACEBACK"):
        faulthandler.dump_traceback(all_threads=True)
    os._exit(1)


class PeerWatch:
    """Heartbeats through the process group's store, so that a process that stops answering is named.

    A beat thread adds 1 to this rank's counter in the store every ``interval`` seconds and reads the other
    ranks' counters; a guard thread ends this process (``end_job``) when a counter has not moved for
    ``timeout`` seconds, naming the rank, or when the store itself has not answered for that long, naming its
    host (a TCPStore client waits on a frozen server without bound). Nothing runs in the training step.
    ``stop``: this rank leaves cleanly, and the others stop watching it.
    """

    DONE = 1 << 40  # added to a counter by ``stop``: larger than any number of beats

    def __init__(self, store: dist.Store, rank: int, world: int, timeout: float):
        self.rank, self.world, self.timeout = rank, world, timeout
        self.interval = self.beat_interval(timeout)
        self._store = store  # the main thread's (``stop``); the beat thread uses its own client
        now = time.monotonic()
        self._answered = now  # when the store last answered a whole round
        self._moved = {peer: (0, now) for peer in range(world) if peer != rank}  # peer: (count, when it moved)
        self._stopped = threading.Event()
        beat_store = store.clone()  # one client per thread (Store.clone, torch >= 2.8)
        threading.Thread(target=self._beat, args=(beat_store,), name="peer-watch-beat", daemon=True).start()
        threading.Thread(target=self._guard, name="peer-watch-guard", daemon=True).start()

    @staticmethod
    def beat_interval(timeout: float) -> float:
        return min(timeout / 10, 5.0)

    def store_host(self) -> str:
        """Who hosts the store: torchrun's agent for its workers, else (a launch without the agent) rank 0."""
        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        return "torchrun's agent" if agent else f"rank 0 of {self.world}"

    @staticmethod
    def key(rank: int) -> str:
        return f"ltr_peer_watch/{rank}"

    def _beat(self, store: dist.Store) -> None:
        try:
            while not self._stopped.is_set():
                store.add(self.key(self.rank), 1)
                counts = {peer: store.add(self.key(peer), 0) for peer in self._moved}  # add 0: read, never waits
                now = time.monotonic()
                for peer, count in counts.items():
                    if count != self._moved[peer][0]:
                        self._moved[peer] = (count, now)
                self._answered = now
                self._stopped.wait(self.interval)
        except dist.DistError:
            # The store's host went away (rank 0 ending without torchrun's agent): if it died, the process
            # group reports it at once; if it finished, nothing is left to watch.
            self._stopped.set()

    def _guard(self) -> None:
        last = time.monotonic()
        while not self._stopped.wait(self.interval):
            now = time.monotonic()
            if now - last > 3 * self.interval:
                # This process itself was paused (SIGSTOP then SIGCONT, a suspended machine): what it saw
                # before says nothing about the others now, so they get a fresh timeout.
                self._answered = now
                self._moved = {peer: (count, now) for peer, (count, _) in self._moved.items()}
            last = now
            stale = {peer: now - moved for peer, (count, moved) in self._moved.items()
                     if count < self.DONE and now - moved > self.timeout}
            if now - self._answered > self.timeout:  # then every peer looks stale: the store is the one
                end_job(f"{self.store_host()}, which hosts the process group's store at "
                        f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}, stopped answering for "
                        f"{now - self._answered:.0f} s (frozen or killed); the job is stopped")
            elif stale:
                names = ", ".join(str(peer) for peer in sorted(stale))
                end_job(f"rank{'s' if len(stale) > 1 else ''} {names} of {self.world} stopped answering for "
                        f"{max(stale.values()):.0f} s (frozen or killed); the job is stopped")

    def stop(self) -> None:
        try:
            self._store.add(self.key(self.rank), self.DONE)
        except dist.DistError:
            pass  # the store's host has ended: no one is left to tell
        self._stopped.set()


_watch: PeerWatch | None = None


def per_process_batch(batch_size: int, flag: str = "-b/--batch-size") -> int:
    """The share of one process of a total batch (the papers' -b) split over the torchrun processes."""
    world = world_size()
    if batch_size % world:
        raise ValueError(f"{flag} {batch_size} is the total batch: it must be divisible by the {world} processes "
                         "of torchrun")
    return batch_size // world


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (identity when not distributed)."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shared_seed(seed: int, device: torch.device) -> int:
    """Rank 0's ``seed`` on every process, so samplers draw one global order and shards never overlap."""
    t = torch.tensor([seed if is_main() else 0], dtype=torch.long, device=device)
    return int(all_reduce_sum(t).item())


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every process before an evaluation."""
    if world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def shutdown() -> None:
    global _watch
    if _watch is not None:
        _watch.stop()
        _watch = None
    if is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` under torchrun, else ``model`` itself.

    BatchNorm normalises with per-process batch statistics (no SyncBatchNorm); DDP copies rank 0's running
    statistics to every process at each forward (``broadcast_buffers``).
    """
    if not is_initialized():
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
