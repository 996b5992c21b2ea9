"""Running a plan: the unfinished jobs as subprocesses, several at a time, each after the jobs it needs."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

from engine.tables.plan import Job, Plan
from engine.tables.scripts import REPO_ROOT, TableError


@dataclass
class RunResult:
    executed: int = 0
    skipped: int = 0
    failed: list[Job] = field(default_factory=list)
    blocked: list[Job] = field(default_factory=list)


def _execute(job: Job, threads: int) -> tuple[int, float]:
    os.makedirs(job.dir, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    # scripts inside a package start with python -m, which finds the package through the path
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    with open(os.path.join(job.dir, "output.log"), "a") as log:  # a resumed run keeps the interrupted log
        log.write(shlex.join(job.command()) + "\n")
        log.flush()
        rc = subprocess.run(job.command(sys.executable), stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    return rc, time.perf_counter() - start


def _tail(path: str, lines: int = 15) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def _ready(todo: list[Job], state: dict, result: RunResult, slots: int, echo) -> list[Job]:
    """Take from ``todo`` up to ``slots`` jobs whose inputs are done; jobs whose inputs failed are not run."""
    ready = []
    for job in list(todo):
        inputs = [state[d] for d in job.deps]
        if any(s in ("failed", "blocked") for s in inputs):
            state[job] = "blocked"
            result.blocked.append(job)
            todo.remove(job)
            echo(f"  not run (a stage it needs failed): {job.label}")
        elif all(s == "done" for s in inputs) and len(ready) < slots:
            state[job] = "running"
            todo.remove(job)
            ready.append(job)
    return ready


def _finish(job: Job, rc: int, seconds: float, state: dict, result: RunResult, echo) -> None:
    result.executed += 1
    if rc == 0 and job.finished():
        state[job] = "done"
        echo(f"  done  {job.label} ({seconds:.0f} s)")
        return
    state[job] = "failed"
    result.failed.append(job)
    log = os.path.join(job.dir, "output.log")
    why = f"exit code {rc}" if rc else f"exited 0 but wrote no {job.marker}"
    echo(f"  FAILED {job.label}: {why}; log {log}; last lines:\n{_tail(log)}")


def run_plan(plan: Plan, jobs: int = 1, echo: Callable[[str], None] = print) -> RunResult:
    """Run the unfinished jobs as subprocesses, ``jobs`` at a time, each after the jobs it needs (each gets
    cpu_count / jobs threads unless OMP_NUM_THREADS is set). A failed run is reported, the runs that need it
    are not run, every other run goes on."""
    if jobs < 1:
        raise TableError(f"--jobs must be positive, got {jobs}")
    result = RunResult()
    state = {job: ("done" if job.finished() else "pending") for job in plan.jobs}
    result.skipped = sum(s == "done" for s in state.values())
    todo = [job for job in plan.jobs if state[job] == "pending"]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    echo(f"{plan.stem}: {len(plan.jobs)} runs, {result.skipped} already finished, {len(todo)} to run "
         f"({jobs} at a time)")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running = {}
        while todo or running:
            for job in _ready(todo, state, result, jobs - len(running), echo):
                running[pool.submit(_execute, job, threads)] = job
                echo(f"  start {job.label}\n    {shlex.join(job.command())}")
            if running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    _finish(running.pop(future), *future.result(), state, result, echo)
    return result

