"""One prepared GPU check: every CUDA path, the speed ratio and the two headline accuracies, in one call.

    python3 bench/gpu_check.py --data_npz .devdata/cifar10_jpeg75.npz --out $OUT/gpu_check   # the GPU machine
    python bench/gpu_check.py --data_path ./data                                              # any CUDA machine
    python bench/gpu_check.py --smoke --out /tmp/gpu_check          # the same stages, tiny, on the CPU (tests)

Stages, in this order; each runs as its own subprocess under its own time budget, so a hang or a crash in one
cannot take the others with it, and the stage can be stopped at its budget:

  data      the CIFAR-10 copy the runs train on (expanded from --data_npz, synthetic with --smoke, or --data_path)
  env       GPU, driver, CUDA, torch/torchvision/triton versions, the project's commit, CPU count
  tests     pytest -m cuda tests/test_cuda.py: passed/failed/skipped and the failures' names
  speed     bench/bench_train.py: reference DataLoader pipeline vs the device loader (fp32 eager, compiled, CUDA
            graphs): images/s, epoch time, 200-epoch projection, ratios
  accuracy  200-epoch CE and LDAM-DRW runs on CIFAR-10-LT rho=100, fastest flags and fp32 eager, concurrently

Each stage's function below says in its docstring what it measures. After every stage ``gpu_check.json`` and
``gpu_check.md`` under --out are rewritten (temporary file + rename), so whatever stops the check leaves the
stages before it recorded. A stage's status is ``ok``; ``skipped: <why>`` (``skipped: no CUDA`` for CUDA-only
parts on a machine without one); ``incomplete: ...`` (accuracy runs stopped at the budget, with the epochs they
reached); ``timeout: ...`` or ``failed: ...``, with the tail of its output. The exit code is 0 when every stage
is ok or skipped, 1 otherwise, 2 for bad input (reported before anything runs).

The default budgets (data 45 s, env 15 s, tests 110 s, speed 165 s, accuracy 225 s) are each stage's cap, and
--total_budget (520 s) caps them together: a stage gets at most what is left of it. The data and env stages take
seconds (9 s and 3 to 5 s on a 2-core CPU), so the accuracy runs normally get their full 225 s, and the whole
check stays under nine minutes even when every stage runs long.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import io
import json
import math
import os
import pickle
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "bench")]

# torch and the project's modules are imported inside the stages, and by the driver only to check flags after the
# cheap checks (paths, names, numbers): those fail in milliseconds. The driver never creates a CUDA context.

STAGES = ("data", "env", "tests", "speed", "accuracy")
NEEDS_DATA = ("speed", "accuracy")
# Each stage's cap; --total_budget caps them together (a stage gets at most what is left), so the early stages'
# generous caps cost nothing when unused, and the whole check stays under nine minutes even when all run long.
BUDGETS = {"data": 45, "env": 15, "tests": 110, "speed": 165, "accuracy": 225}
TOTAL_BUDGET = 520
CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
               "batches.meta")
NPZ_KEYS = ("train_jpeg", "train_offsets", "train_labels", "test_jpeg", "test_offsets", "test_labels", "classes")
# Settings of a full check and of --smoke (CPU, tiny: ResNet-20 on about 80 synthetic training images).
FULL = dict(arch="resnet32", batch_size=128, imb_factor=0.01, speed_epochs=4, epochs=200, workers=4, device=None)
SMOKE = dict(arch="resnet20", batch_size=32, imb_factor=0.1, speed_epochs=2, epochs=2, workers=0, device="cpu")
LOSSES = {"CE": ["--loss_type", "CE", "--train_rule", "None"],
          "LDAM-DRW": ["--loss_type", "LDAM", "--train_rule", "DRW"]}
# Best top-1 of 200-epoch CIFAR-10-LT rho=100 ResNet-32 runs: the seed repository's code on the JPEG-75 copy of
# CIFAR-10 (shared/data/README.md, measured by the data's provider) and the papers (official data).
REFERENCE_TOP1 = {"CE": {"jpeg75": 67.0, "paper": 70.4}, "LDAM-DRW": {"jpeg75": 72.9, "paper": 77.0}}
GOAL_RATIO, GOAL_200_EPOCHS_S = 9.0, 60.0


def good(status: str) -> bool:
    return status == "ok" or status.startswith("skipped")


# ----------------------------------------------------------------------------------------------- data files

def write_cifar_batches(root: str, train: tuple, test: tuple, classes: list[str]) -> str:
    """Write ``root/cifar-10-batches-py`` as the official python release lays it out: five training batches,
    ``test_batch`` and ``batches.meta``. ``train``/``test``: (rows uint8 (N, 3072) channel-major, labels, file
    names)."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    batches = [(f"data_batch_{k + 1}", train, idx)
               for k, idx in enumerate(np.array_split(np.arange(len(train[1])), 5))]
    batches.append(("test_batch", test, np.arange(len(test[1]))))
    for fname, (rows, labels, names), idx in batches:
        entry = {"batch_label": fname, "labels": np.asarray(labels)[idx].tolist(),
                 "data": np.ascontiguousarray(rows[idx]), "filenames": [names[i] for i in idx]}
        with open(os.path.join(folder, fname), "wb") as f:
            pickle.dump(entry, f, protocol=4)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": classes, "num_cases_per_batch": len(batches[0][2]), "num_vis": 3072}, f,
                    protocol=4)
    return folder


def write_synthetic_cifar10(root: str, train_per_class: int = 20, test_per_class: int = 5, seed: int = 0) -> str:
    """A small learnable stand-in for CIFAR-10 in its official layout: each class a fixed colour plus uniform
    noise, classes in a shuffled order (the --smoke data when none is given)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(10, 3, 1))

    def split(per_class, tag):
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        pixels = colours[labels] + rng.integers(-40, 41, size=(len(labels), 3, 1024))
        return (pixels.astype(np.uint8).reshape(len(labels), 3072), labels,
                [f"{tag}_{i:05d}.png" for i in range(len(labels))])

    return write_cifar_batches(root, split(train_per_class, "train"), split(test_per_class, "test"),
                               [f"class_{c}" for c in range(10)])


def decode_jpegs(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Concatenated JPEG files (image i = blob[offsets[i]:offsets[i+1]]) as rows uint8 (N, 3072), channel-major."""
    from PIL import Image
    out = np.empty((len(offsets) - 1, 3, 32, 32), np.uint8)
    for i in range(len(out)):
        out[i] = np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB")
                            ).transpose(2, 0, 1)
    return out.reshape(len(out), 3072)


def expand_npz(npz: str, dest: str) -> str:
    """Expand the JPEG copy of CIFAR-10 (``cifar10_jpeg75.npz``) into ``dest/cifar-10-batches-py``.

    With ``expand_cifar10.py`` beside the archive (shared/data ships them together), that script does it;
    otherwise the same decoding happens here, including the script's fixed shuffle of each split
    (``RandomState(0)``), which the long-tailed subset depends on. Returns which of the two ran."""
    script = os.path.join(os.path.dirname(os.path.abspath(npz)), "expand_cifar10.py")
    if os.path.isfile(script):
        import importlib.util
        spec = importlib.util.spec_from_file_location("expand_cifar10", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(dest, src=npz)
        return script
    z = np.load(npz)
    classes = [str(c) for c in z["classes"]]
    splits = []
    for split in ("train", "test"):
        rows, labels = decode_jpegs(z[f"{split}_jpeg"], z[f"{split}_offsets"]), z[f"{split}_labels"]
        perm = np.random.RandomState(0).permutation(len(labels))
        splits.append((rows[perm], labels[perm], [f"{classes[label]}_{i:05d}.png"
                                                  for i, label in zip(perm, labels[perm])]))
    write_cifar_batches(dest, *splits, classes)
    return "decoded here (no expand_cifar10.py beside the archive)"


# ------------------------------------------------------------------------------------------ subprocesses

def stop(procs: list[subprocess.Popen], group: bool = False, grace: float = 3.0) -> None:
    """End ``procs`` (each one's whole process group with ``group``): SIGTERM to all, SIGKILL to those still
    running ``grace`` seconds later."""
    def send(proc, sig):
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            pass

    running = [p for p in procs if p.poll() is None]
    for proc in running:
        send(proc, signal.SIGTERM)
    end = time.time() + grace
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, end - time.time()))
        except subprocess.TimeoutExpired:
            send(proc, signal.SIGKILL)
            proc.wait()


PROGRESS_BAR = re.compile(r"\|\s*\d+/\d+ \[")  # a tqdm redraw: "epoch 3:  45%|####  | 44/97 [00:01<00:01, ...]"


def tail(path: str, chars: int = 3000) -> str:
    """The end of a log without its progress-bar redraws and empty lines."""
    if not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 64 * chars))
        text = f.read().decode(errors="replace").replace("\r", "\n")
    return "\n".join(line for line in text.split("\n") if line.strip() and not PROGRESS_BAR.search(line))[-chars:]


def stop_time(ctx: dict) -> float:
    """When a stage must stop its own children: its deadline less a reserve for stopping and reporting."""
    return ctx["deadline"] - min(10.0, max(2.0, 0.05 * ctx["budget"]))


def run_child(cmd: list[str], log_path: str, stop_at: float, env: dict | None = None) -> int | None:
    """Run ``cmd`` in the repository with its output in ``log_path``; None when it had to be stopped at ``stop_at``."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            return proc.wait(timeout=max(0.1, stop_at - time.time()))
        except subprocess.TimeoutExpired:
            stop([proc])
            return None


def child_env(**extra) -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", **{k: str(v) for k, v in extra.items()})


# ------------------------------------------------------------------------------------------------ stages

def stage_data(ctx: dict, publish) -> dict:
    """Data: the CIFAR-10 copy that the speed and accuracy stages train on, and its long-tailed subset.

    Expands --data_npz (the JPEG-75 copy) into the official ``cifar-10-batches-py`` layout, writes a small
    synthetic set (--smoke without data), or takes --data_path; then reads it with the project's reader: the test
    images, whether the files are the official release (md5), and the class counts of the long-tailed training
    subset every run uses."""
    import warnings
    from imbalance_cifar import ChecksumWarning, ImbalanceCIFAR10
    start = time.perf_counter()
    root = ctx["data_path"]
    if ctx["data_source"] == "npz":
        prepared_by = expand_npz(ctx["data_npz"], root)
    elif ctx["data_source"] == "synthetic":
        write_synthetic_cifar10(root)
        prepared_by = "synthetic (gpu_check.write_synthetic_cifar10)"
    else:
        prepared_by = "given (--data_path)"
    prepare_s = time.perf_counter() - start
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ChecksumWarning)
        train = ImbalanceCIFAR10(root, imb_factor=ctx["imb_factor"], train=True)
        test = ImbalanceCIFAR10(root, train=False)
    return {"status": "ok", "source": ctx["data_source"], "path": root, "prepared_by": prepared_by,
            "prepare_s": round(prepare_s, 1),
            "official_md5": not any(issubclass(w.category, ChecksumWarning) for w in caught),
            "imb_factor": ctx["imb_factor"], "lt_train_images": len(train),
            "cls_num_list": [int(c) for c in train.get_cls_num_list()], "test_images": len(test)}


def git_commit() -> tuple[str, bool | None]:
    """The checkout's commit and whether tracked files differ from it; ("unknown", None) without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", None
    if head.returncode != 0:
        return "unknown", None
    return head.stdout.strip(), bool(dirty.stdout.strip()) if dirty.returncode == 0 else None


def nvidia_smi() -> dict:
    """Driver version, GPU name and memory as nvidia-smi reports them ({} without nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0 or not out.stdout.strip():
        return {}
    driver, name, memory = [part.strip() for part in out.stdout.splitlines()[0].split(",")[:3]]
    return {"driver": driver, "smi_name": name, "smi_memory": memory}


def stage_env(ctx: dict, publish) -> dict:
    """Environment: the GPU, driver, CUDA and library versions, the project's commit, the CPU count.

    GPU name, memory, compute capability and count, the driver (nvidia-smi), the CUDA runtime and cuDNN torch was
    built with, torch/torchvision/triton/Python versions, the git commit (or "unknown", or --commit)."""
    import torch
    import torchvision
    commit, dirty = git_commit()
    if commit == "unknown" and ctx.get("commit"):
        commit, dirty = f"{ctx['commit']} (given with --commit)", None
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    out = {"status": "ok", "python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "triton": triton_version, "cuda_runtime": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "git_commit": commit, "git_dirty": dirty, "cuda_available": torch.cuda.is_available(),
           "gpu": None, "driver": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                   gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count)
    out.update(nvidia_smi())
    return out


PYTEST_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")  # -v: one line per test
PYTEST_SKIP_SUMMARY = re.compile(r"^SKIPPED \[\d+\] \S+?:\d+: (.*)$")  # -rA's summary: where and why


def parse_pytest(text: str) -> dict:
    """Counts, failed test ids and skip reasons from ``pytest -v`` output (complete or cut off)."""
    counts = {k: 0 for k in ("passed", "failed", "error", "skipped", "xfailed", "xpassed")}
    failures, reasons = [], []
    key = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped", "XFAIL": "xfailed",
           "XPASS": "xpassed"}
    for line in text.splitlines():
        m = PYTEST_LINE.match(line.strip())
        skip = PYTEST_SKIP_SUMMARY.match(line.strip())
        if skip and skip.group(1) not in reasons:
            reasons.append(skip.group(1))
        if not m:
            continue
        counts[key[m.group(2)]] += 1
        if m.group(2) in ("FAILED", "ERROR"):
            failures.append(m.group(1))
    return {"counts": counts, "failures": failures, "skip_reasons": reasons}


def stage_tests(ctx: dict, publish) -> dict:
    """CUDA tests: ``pytest -m cuda tests/test_cuda.py``, every CUDA path of the project.

    The device loader against the CPU and its sampling distributions, the compiled step (default and
    reduce-overhead) against eager, bf16 autocast, evaluation on CUDA against the CPU, a one-process NCCL group,
    checkpoints across devices, and no host synchronisation inside the training loop. Records passed/failed/skipped
    counts, the failures' names and the skip reasons; on a machine without CUDA every test skips and the stage says
    so."""
    log = os.path.join(ctx["work"], "logs", "tests-pytest.log")
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-v", "-rA", "-p", "no:cacheprovider"]
    # no third-party plugins: the tests need none, and loading them costs seconds of the budget
    rc = run_child(cmd, log, stop_time(ctx), child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD=1))
    with open(log, errors="replace") as f:
        parsed = parse_pytest(f.read())
    counts = parsed["counts"]
    ran = counts["passed"] + counts["failed"] + counts["error"]
    bad = counts["failed"] + counts["error"]
    if rc is None:
        status = f"timeout: pytest stopped at the budget after {counts['passed']} passed, {bad} failed"
    elif bad:
        status = f"failed: {bad} of {ran} tests failed"
    elif rc not in (0, 5) or sum(counts.values()) == 0:
        status = f"failed: pytest exit code {rc}, no test result read"
    elif ran == 0:
        status = "skipped: no CUDA" if not ctx["cuda"] else "skipped: every test skipped"
    else:
        status = "ok"
    out = {"status": status, "command": shlex.join(cmd[1:]), "returncode": rc, **parsed}
    if not good(status):
        out["log_tail"] = tail(log, 6000)
    return out


def speed_settings(ctx: dict) -> list[str]:
    """bench_train.py arguments of the speed stage (its variants are given separately)."""
    return ["--data_path", ctx["data_path"], "--imb_factor", str(ctx["imb_factor"]), "-a", ctx["arch"],
            "--epochs", str(ctx["speed_epochs"]), "-b", str(ctx["batch_size"]), "-j", str(ctx["workers"]),
            "--device", ctx["device"], "--target_epochs", "200"]


def stage_speed(ctx: dict, publish) -> dict:
    """Speed: training images/s of the reference pipeline and of the device loader's variants, and their ratios.

    bench/bench_train.py in one process on the same data, model and batch (CIFAR-10-LT rho=100, ResNet-32, batch
    128): (a) the reference pipeline of the seed repository (``--loader torch``: DataLoader workers, PIL
    crop/flip, fp32), then the device loader in fp32 eager (``eager``), with ``--amp --channels_last --compile``
    (``compiled``, default mode) and with CUDA graphs (``graphs``, ``--compile_mode reduce-overhead``). Per path:
    training images/s over the epochs after the first, the epoch time with evaluation, the first epoch's time
    (compilation), the projected 200-epoch wall time, and the ratios to the reference (images/s and wall time).
    Compiled variants measure CUDA paths and are skipped on the CPU. A variant that fails is recorded with its
    error and the others still run."""
    import bench_train
    result = {"settings": speed_settings(ctx), "variants": {"baseline": {"status": "pending", "flags": []}}}
    runnable = []
    for name, flags in ctx["speed_variants"]:
        if "--compile" in flags and not ctx["cuda"]:
            result["variants"][name] = {"status": "skipped: no CUDA", "flags": flags}
        else:
            result["variants"][name] = {"status": "pending", "flags": flags}
            runnable.append((name, flags))

    def done(name, r):
        result["variants"][name] = {"status": "ok", **r}
        publish(result)

    def failed(name, error):
        result["variants"][name].update(status=f"failed: {type(error).__name__}: {error}"[:500])
        publish(result)

    publish(result)
    bench_train.compare(bench_train.parse_args(speed_settings(ctx)), runnable, done, failed)
    measured = {n: v for n, v in result["variants"].items() if n != "baseline" and v["status"] == "ok"}
    if measured:
        result["fastest"] = max(measured, key=lambda n: measured[n]["images_per_s"])
    broken = [n for n, v in result["variants"].items() if v["status"].startswith("failed")]
    result["status"] = f"failed: {', '.join(broken)}" if broken else "ok"
    return result


def choose_fast_flags(ctx: dict, report: dict) -> tuple[list[str] | None, str]:
    """The flags of the accuracy stage's fast runs and why: --fast_flags, else the fastest compiled variant the
    speed stage measured in this check, else CUDA graphs; None (with the reason) when they cannot run here."""
    if ctx["fast_flags"] != "auto":
        return shlex.split(ctx["fast_flags"]), "given with --fast_flags"
    if not ctx["cuda"]:
        return None, "skipped: no CUDA"
    variants = report.get("stages", {}).get("speed", {}).get("result", {}).get("variants", {})
    measured = {n: v for n, v in variants.items() if n != "baseline" and v.get("status") == "ok" and v.get("flags")}
    if measured:
        name = max(measured, key=lambda n: measured[n]["images_per_s"])
        return measured[name]["flags"], f"the fastest flagged variant of the speed stage ({name})"
    import bench_train
    return bench_train.VARIANTS["graphs"], "CUDA graphs (the speed stage measured no compiled variant)"


def read_metrics(log_root: str) -> tuple[list[dict], dict | None]:
    """The per-epoch records (metrics.jsonl; a line cut off by a kill is dropped) and final.json of the one run
    under ``log_root`` (None until it has finished)."""
    records, final = [], None
    for path in glob.glob(os.path.join(log_root, "*", "metrics.jsonl")):
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break
        final_path = os.path.join(os.path.dirname(path), "final.json")
        if os.path.exists(final_path):
            with open(final_path) as f:
                final = json.load(f)
    return records, final


def run_summary(log_root: str, train_images: int) -> dict:
    """Best and last top-1 with many/medium/few, epochs reached, the top-1 curve and images/s of one run."""
    records, final = read_metrics(log_root)
    tested = [r for r in records if r.get("test")]
    if not tested:
        return {"epochs_done": len(records)}
    best_record = max(tested, key=lambda r: r["test"]["top1"])  # the first of equal epochs, as the Trainer keeps
    best = final["best"] if final else dict(best_record["test"], epoch=best_record["epoch"])
    last = final["last"] if final else dict(tested[-1]["test"], epoch=tested[-1]["epoch"])
    train_s = sum(r["time_train"] for r in records)
    out = {"epochs_done": len(records), "train_s": round(train_s, 1),
           "images_per_s": round(train_images * len(records) / train_s, 1) if train_s > 0 else None,
           "top1_curve": [round(r["test"]["top1"], 2) for r in tested]}
    for which, metrics in (("best", best), ("last", last)):
        out[which] = {k: metrics.get(k) for k in ("epoch", "top1", "top5", "many", "medium", "few")}
    return out


def accuracy_runs(ctx: dict, fast: list[str] | None, why: str) -> dict:
    """The accuracy stage's runs: {name: entry}, each with its train.py command, or a status when it cannot run."""
    runs = {}
    for seed in ctx["seeds"]:
        for loss, loss_flags in LOSSES.items():
            for column, flags in (("fast", fast), ("fp32", [])):
                entry = {"loss": loss, "column": column, "seed": seed, "flags": flags}
                runs[f"{loss} {column} seed {seed}"] = entry
                if flags is None:
                    entry["status"] = why
                    continue
                entry["folder"] = folder = os.path.join(ctx["work"], "runs", f"{loss}-{column}-s{seed}")
                extra = ["--drw_epoch", "1"] if ctx["smoke"] and loss == "LDAM-DRW" else []  # DRW switches in smoke
                entry["command"] = ["train.py", "--dataset", "cifar10", "--data_path", ctx["data_path"],
                                    "--imb_factor", str(ctx["imb_factor"]), "-a", ctx["arch"], "--epochs",
                                    str(ctx["epochs"]), "-b", str(ctx["batch_size"]), "--seed", str(seed),
                                    "--device", ctx["device"], "--root_log", os.path.join(folder, "log"),
                                    "--root_model", os.path.join(folder, "ckpt"), "--exp_str", "gpu_check",
                                    *loss_flags, *extra, *flags]
    return runs


def run_concurrently(jobs: dict, stop_at: float, progress) -> tuple[dict, set, float]:
    """Start every job's command at once (output in its folder's output.log) and wait for them until ``stop_at``,
    calling ``progress()`` every 10 s; the rest are stopped then. Returns ({name: (returncode, wall seconds)}, the
    names stopped, the wall seconds of them all). The runs share the CPU cores (OMP_NUM_THREADS) and stay in this
    process's group, so that the driver stopping this stage stops them too."""
    threads = max(1, (os.cpu_count() or 1) // max(1, len(jobs)))
    procs = {}
    for name, entry in jobs.items():
        os.makedirs(entry["folder"], exist_ok=True)
        with open(os.path.join(entry["folder"], "output.log"), "wb") as log:
            procs[name] = subprocess.Popen([sys.executable, *entry["command"]], cwd=REPO, stdout=log,
                                           stderr=subprocess.STDOUT, env=child_env(OMP_NUM_THREADS=threads))
        entry["status"] = "running"
    began, ended, stopped, last_progress = time.time(), {}, set(), 0.0
    while len(ended) < len(procs):
        ended.update({name: time.time() for name, proc in procs.items()
                      if name not in ended and proc.poll() is not None})
        if time.time() >= stop_at:
            stopped = set(procs) - set(ended)
            stop([procs[name] for name in stopped])
            ended.update({name: time.time() for name in stopped})
        if time.time() - last_progress > 10:
            progress()
            last_progress = time.time()
        time.sleep(0.5)
    return ({name: (procs[name].returncode, ended[name] - began) for name in procs}, stopped,
            max(ended.values(), default=began) - began)


def stage_accuracy(ctx: dict, publish) -> dict:
    """Accuracy: best and last top-1 of 200-epoch CE and LDAM-DRW runs, fast flags and fp32 eager, concurrently.

    Full CIFAR-10-LT rho=100 ResNet-32 runs (batch 128) of CE (``--loss_type CE --train_rule None``) and LDAM-DRW
    (``--loss_type LDAM --train_rule DRW``), each with the fastest flags and in fp32 eager, per seed, all started at
    once as ``train.py`` processes on the one GPU. Per run: best and last top-1 with many/medium/few (final.json),
    the epochs reached, its wall time and training images/s; and the aggregate images/s of all runs together. Runs
    still going at the budget are stopped and reported as incomplete with the epochs they reached and their
    best/last so far (metrics.jsonl)."""
    with open(ctx["report_path"]) as f:
        report = json.load(f)
    train_images = report["stages"]["data"]["result"]["lt_train_images"]
    fast, why = choose_fast_flags(ctx, report)
    result = {"fast_flags": fast, "fast_flags_from": why, "epochs": ctx["epochs"], "train_images": train_images,
              "runs": accuracy_runs(ctx, fast, why)}
    jobs = {name: entry for name, entry in result["runs"].items() if "command" in entry}

    def summarize():  # also the progress report: epochs so far, should the stage be cut off from outside
        for entry in jobs.values():
            entry.update(run_summary(os.path.join(entry["folder"], "log"), train_images))
        publish(result)

    outcome, stopped, wall_s = run_concurrently(jobs, stop_time(ctx), summarize)
    summarize()
    for name, entry in jobs.items():
        returncode, seconds = outcome[name]
        entry["wall_s"] = round(seconds, 1)
        if name in stopped:
            entry["status"] = (f"incomplete: stopped at the budget after {entry['epochs_done']} of {ctx['epochs']} "
                               "epochs")
        elif returncode != 0 or entry["epochs_done"] < ctx["epochs"]:
            entry["status"] = f"failed: exit code {returncode}"
            entry["log_tail"] = tail(os.path.join(entry["folder"], "output.log"), 2500)
        else:
            entry["status"] = "ok"
    if jobs:
        result["wall_s"] = round(wall_s, 1)
        result["aggregate_images_per_s"] = round(sum(train_images * e["epochs_done"] for e in jobs.values())
                                                 / max(wall_s, 1e-9), 1)
    failed = [name for name, e in result["runs"].items() if e["status"].startswith("failed")]
    result["status"] = (f"failed: {', '.join(failed)}" if failed else
                        f"incomplete: {len(stopped)} of {len(jobs)} runs stopped at the budget" if stopped else "ok")
    return result


STAGE_FUNCTIONS = {"data": stage_data, "env": stage_env, "tests": stage_tests, "speed": stage_speed,
                   "accuracy": stage_accuracy}


def run_worker(stage: str, context_path: str) -> int:
    """Body of a stage's subprocess: run the stage, publishing its (partial) result for the driver to read."""
    from engine.train.runlog import write_json
    with open(context_path) as f:
        ctx = json.load(f)
    path = os.path.join(ctx["work"], "stages", f"{stage}.json")
    publish = lambda result: write_json(path, result)  # noqa: E731
    publish(STAGE_FUNCTIONS[stage](ctx, publish))
    return 0


# -------------------------------------------------------------------------------------------- the report

def fmt(value, spec: str = ".1f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec) if isinstance(value, float) else str(value)


def headline(report: dict) -> dict:
    """The numbers to record, gathered from the stages' results."""
    stages = report["stages"]
    env = stages.get("env", {}).get("result", {})
    speed = stages.get("speed", {}).get("result", {}).get("variants", {})
    runs = stages.get("accuracy", {}).get("result", {}).get("runs", {})
    out = {"device": env.get("gpu") or ("CPU" if env else None), "torch": env.get("torch"),
           "reference_images_per_s": speed.get("baseline", {}).get("images_per_s")}
    measured = {name: v for name, v in speed.items() if name != "baseline" and v.get("status") == "ok"}
    for name, v in measured.items():
        out[f"{name}_images_per_s"], out[f"{name}_ratio"] = v["images_per_s"], v["ratio"]
        out[f"{name}_projected_200_epochs_s"] = v["projected_s"]
    if measured:
        fastest = max(measured, key=lambda n: measured[n]["images_per_s"])
        out["fastest"] = fastest
    full_size_on_gpu = not report["settings"]["smoke"] and report["settings"]["device"] == "cuda"
    if measured and full_size_on_gpu:  # the goals are about a full-size check on a GPU, not a smoke or CPU run
        out[f"goal: >= {GOAL_RATIO:g}x the reference"] = measured[fastest]["ratio"] >= GOAL_RATIO
        out[f"goal: 200 epochs in about {GOAL_200_EPOCHS_S:g} s (projected)"] = (
            measured[fastest]["projected_s"] <= GOAL_200_EPOCHS_S)
    for name, entry in runs.items():
        if "best" in entry:
            out[f"{name} top-1"] = {"best": entry["best"]["top1"], "last": entry["last"]["top1"],
                                    "epochs": entry["epochs_done"], "wall_s": entry.get("wall_s"),
                                    "status": entry["status"]}
    return out


def headline_value(value) -> str:
    if isinstance(value, dict):
        return (f"best {fmt(value['best'], '.2f')}, last {fmt(value['last'], '.2f')} after {value['epochs']} epochs "
                f"in {fmt(value['wall_s'])} s ({value['status']})")
    return fmt(value, ".2f")


def render_markdown(report: dict) -> str:
    stages, s = report["stages"], report["settings"]
    lines = [f"# GPU check ({'finished' if report['finished'] else 'in progress'}, updated {report['updated']})", ""]
    if s["smoke"]:
        lines += ["**Smoke run**: tiny settings (ResNet-20, a few epochs, synthetic or small data, "
                  f"device {s['device']}); its numbers test the check itself and say nothing about a GPU.", ""]
    lines += [f"Command: `{report['command']}`", "",
              f"Settings: device {s['device']}, {s['arch']}, batch {s['batch_size']}, imb_factor {s['imb_factor']}, "
              f"speed {s['speed_epochs']} epochs per path, accuracy {s['epochs']} epochs, seeds {s['seeds']}, "
              f"budgets {s['budgets']} s (total {s['total_budget']} s)", "",
              "| stage | status | time / budget (s) | measures |", "|---|---|---|---|"]
    for name in STAGES:
        st = stages[name]
        doc = STAGE_FUNCTIONS[name].__doc__.split("\n")[0].split(": ", 1)[1].rstrip(".")
        lines.append(f"| {name} | {st['status']} | {fmt(st.get('seconds'))} / {fmt(st.get('budget_s'), '.0f')} "
                     f"| {doc} |")
    lines += ["", "## What to record", ""] + [f"* {k}: {headline_value(v)}" for k, v in headline(report).items()]
    if s["smoke"] or s["device"] != "cuda":
        lines += ["* the goals (speed ratio, 200-epoch time) are about the full check on a GPU, not this run"]
    lines += render_env(stages["env"]) + render_tests(stages["tests"]) + render_speed(stages["speed"])
    lines += render_accuracy(stages["accuracy"], stages["data"])
    for name in STAGES:
        if stages[name].get("log_tail"):
            lines += ["", f"## Output of {name} (tail)", "", "```", stages[name]["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def render_env(st: dict) -> list[str]:
    r = st.get("result") or {}
    if not r:
        return []
    keys = ("gpu", "gpu_memory_gib", "capability", "multiprocessors", "gpu_count", "driver", "cuda_runtime", "cudnn",
            "torch", "torchvision", "triton", "python", "platform", "cpu_count", "git_commit", "git_dirty")
    return ["", "## env", "", "| | |", "|---|---|"] + [f"| {k} | {fmt(r.get(k))} |" for k in keys if k in r]


def render_tests(st: dict) -> list[str]:
    r = st.get("result") or {}
    if "counts" not in r:
        return []
    out = ["", "## tests", "", f"`{r.get('command', '')}`: " + ", ".join(f"{v} {k}" for k, v in r["counts"].items())]
    out += [f"* failed: `{name}`" for name in r["failures"]] + [f"* skip reason: {why}" for why in r["skip_reasons"]]
    return out


def render_speed(st: dict) -> list[str]:
    r = st.get("result") or {}
    if "variants" not in r:
        return []
    out = ["", "## speed", "", "| path | flags | status | train img/s | epoch s | first epoch s | 200 epochs s | "
           "ratio img/s | ratio wall |", "|---|---|---|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        label = "reference (`--loader torch`)" if name == "baseline" else f"device: {name}"
        status = "not reached" if v["status"] == "pending" and not good(st["status"]) else v["status"]
        out.append(f"| {label} | `{' '.join(v['flags']) or 'fp32 eager'}` | {status} "
                   f"| {fmt(v.get('images_per_s'), '.0f')} | {fmt(v.get('epoch_s'), '.2f')} "
                   f"| {fmt(v.get('first_epoch_s'), '.2f')} | {fmt(v.get('projected_s'))} "
                   f"| {fmt(v.get('ratio'), '.2f')} | {fmt(v.get('wall_ratio'), '.2f')} |")
    return out


def render_accuracy(st: dict, data: dict) -> list[str]:
    r = st.get("result") or {}
    if "runs" not in r:
        return []
    data = data.get("result") or {}
    # the reference numbers are 200-epoch runs on real CIFAR-10: shown next to runs on real data only
    ref_key, ref_label = (("paper", "papers") if data.get("official_md5") else
                          ("jpeg75", "seed repository's code on the JPEG-75 copy"))
    if data.get("source") == "synthetic":
        ref_key, ref_label = None, "none for synthetic data"
    out = ["", "## accuracy", "", f"Fast flags: `{' '.join(r['fast_flags'] or []) or '-'}` ({r['fast_flags_from']}). "
           f"{r['epochs']} epochs, {r['train_images']} training images.", "",
           "| run | status | epochs | best top-1 (0-indexed epoch) | last top-1 | last many / medium / few | wall s "
           "| img/s | "
           f"reference best ({ref_label}) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, e in r["runs"].items():
        best, last = e.get("best") or {}, e.get("last") or {}
        shots = " / ".join(fmt(last.get(k)) for k in ("many", "medium", "few"))
        out.append(f"| {name} | {e['status']} | {fmt(e.get('epochs_done'))} | {fmt(best.get('top1'), '.2f')} "
                   f"({fmt(best.get('epoch'))}) | {fmt(last.get('top1'), '.2f')} | {shots} | {fmt(e.get('wall_s'))} "
                   f"| {fmt(e.get('images_per_s'), '.0f')} | {REFERENCE_TOP1[e['loss']].get(ref_key, '-')} |")
    if "aggregate_images_per_s" in r:
        out += ["", f"All runs together: {fmt(r['aggregate_images_per_s'], '.0f')} training images/s over "
                    f"{fmt(r['wall_s'])} s."]
    return out


class Report:
    """gpu_check.json and gpu_check.md under ``out``, rewritten atomically after every change."""

    def __init__(self, out: str, command: str, settings: dict, selected: list[str]):
        self.json_path, self.md_path = os.path.join(out, "gpu_check.json"), os.path.join(out, "gpu_check.md")
        self.data = {"check": "bench/gpu_check.py", "command": command, "started": now(), "updated": now(),
                     "finished": False, "settings": settings,
                     "stages": {name: {"status": "pending" if name in selected else "not selected"}
                                for name in STAGES}}

    def set(self, stage: str, record: dict) -> None:
        self.data["stages"][stage] = record
        self.write()

    def write(self) -> None:
        from engine.train.checkpoint import atomic_write
        from engine.train.runlog import write_json
        self.data["updated"] = now()
        self.data["headline"] = headline(self.data)
        write_json(self.json_path, self.data)
        atomic_write(self.md_path, lambda f: f.write(render_markdown(self.data).encode()))


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# -------------------------------------------------------------------------------------------- the driver

def run_stage(stage: str, budget: float, ctx: dict, report: Report) -> dict:
    """Run one stage as a subprocess (its own process group, so that stopping it stops its children too) for at
    most ``budget`` seconds; its record: status, seconds, budget, result and, unless it is ok, its output's tail."""
    ctx = dict(ctx, stage=stage, budget=budget, deadline=time.time() + budget)
    context_path = os.path.join(ctx["work"], "stages", f"{stage}.context.json")
    with open(context_path, "w") as f:
        json.dump(ctx, f)
    result_path = os.path.join(ctx["work"], "stages", f"{stage}.json")
    log_path = os.path.join(ctx["work"], "logs", f"{stage}.log")
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--stage-worker", stage, context_path],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=budget), False
        except subprocess.TimeoutExpired:
            stop([proc], group=True)
            rc, timed_out = proc.returncode, True
        except BaseException:  # the driver itself is stopped (Ctrl-C, SIGTERM): stop the stage with it
            stop([proc], group=True)
            raise
    result = {}
    if os.path.exists(result_path):
        with open(result_path) as f:
            result = json.load(f)
    status = result.pop("status", None)
    if timed_out:
        status = f"timeout: stopped at its budget of {budget:.0f} s (--budget_{stage})"
    elif rc != 0:
        status = f"failed: exit code {rc}"
    elif status is None:
        status = "failed: the stage wrote no result"
    record = {"status": status, "seconds": round(time.perf_counter() - start, 1), "budget_s": round(budget, 1),
              "result": result}
    if not good(status):
        record["log_tail"] = tail(log_path)
    return record


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data (one of them, or --smoke for synthetic data)")
    g.add_argument("--data_path", help="folder holding cifar-10-batches-py/")
    g.add_argument("--data_npz", help="the JPEG copy cifar10_jpeg75.npz, expanded into the work folder first")
    p.add_argument("--out", default=os.path.join("results", "gpu_check"), help="folder of gpu_check.json/.md")
    p.add_argument("--work", default=None,
                   help="folder for expanded data, runs, logs and checkpoints (default: a temporary one, removed at "
                        "the end; a given one is kept)")
    p.add_argument("--stages", default=",".join(STAGES[1:]),
                   help=f"comma-separated subset of {', '.join(STAGES)} (data is added for speed and accuracy)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny settings on the CPU (ResNet-20, 2 epochs, synthetic data unless given): tests the check")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when present (cpu for --smoke)")
    p.add_argument("--commit", default=None, help="the commit to record when the checkout has no git history")
    for stage in STAGES:
        p.add_argument(f"--budget_{stage}", type=float, default=BUDGETS[stage], metavar="S",
                       help=f"seconds for the {stage} stage (default {BUDGETS[stage]})")
    p.add_argument("--total_budget", type=float, default=TOTAL_BUDGET, metavar="S",
                   help="seconds for the whole check: a stage gets at most what is left (default %(default)s)")
    g = p.add_argument_group("settings (defaults: full check; --smoke: tiny)")
    g.add_argument("-a", "--arch", default=None, help="resnet32 (smoke: resnet20)")
    g.add_argument("-b", "--batch_size", type=int, default=None, help="128 (smoke: 64)")
    g.add_argument("--imb_factor", type=float, default=None, help="1/rho: 0.01 (smoke: 0.1)")
    g.add_argument("--speed_epochs", type=int, default=None,
                   help="epochs per speed path, the first untimed: 4 (smoke: 2)")
    # CUDA graphs before the plain compiled step: the headline path is measured first, should the budget run out,
    # and the compiled variant after it finds inductor's on-disk cache warm
    g.add_argument("--speed_variants", nargs="+", default=["eager", "graphs", "compiled"], metavar="VARIANT",
                   help="device-loader variants of the speed stage: names of bench_train.VARIANTS or "
                        "NAME=FLAG,FLAG,... (default: eager graphs compiled)")
    g.add_argument("-j", "--workers", type=int, default=None, help="DataLoader workers of the reference: 4 (smoke: 0)")
    g.add_argument("--epochs", type=int, default=None, help="epochs of the accuracy runs: 200 (smoke: 2)")
    g.add_argument("--seeds", type=int, default=1, help="training seeds 0..N-1 of the accuracy runs (default 1)")
    g.add_argument("--fast_flags", default="auto",
                   help="train.py flags of the accuracy stage's fast runs, quoted as one argument; auto: the fastest "
                        "compiled variant of the speed stage (CUDA graphs without one; skipped without CUDA)")
    args = p.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        check_args(args)
    except ValueError as e:
        p.error(str(e))
    return args


def check_args(args: argparse.Namespace) -> None:
    """Every check of the input that needs no GPU and no training, so that a mistake costs no device time."""
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"--stages: unknown {unknown or 'empty list'}; choose from {', '.join(STAGES)}")
    if any(s in NEEDS_DATA for s in stages) and "data" not in stages:
        stages.append("data")
    args.selected = [s for s in STAGES if s in stages]
    if args.data_path and args.data_npz:
        raise ValueError("give --data_path or --data_npz, not both")
    needs_data = "data" in args.selected
    if args.data_path:
        folder = os.path.join(args.data_path, "cifar-10-batches-py")
        missing = [f for f in CIFAR_FILES if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise ValueError(f"--data_path {args.data_path}: {folder} lacks {', '.join(missing)} (expand the JPEG copy "
                             "with python ../shared/data/expand_cifar10.py DIR, or pass --data_npz)")
    elif args.data_npz:
        if not os.path.isfile(args.data_npz) or not zipfile.is_zipfile(args.data_npz):
            raise ValueError(f"--data_npz {args.data_npz}: no such .npz file")
        absent = sorted(set(NPZ_KEYS) - set(np.load(args.data_npz).files))
        if absent:
            raise ValueError(f"--data_npz {args.data_npz}: not the CIFAR-10 JPEG copy (no {', '.join(absent)})")
    elif needs_data and not args.smoke:
        raise ValueError("the speed and accuracy stages need --data_path DIR or --data_npz FILE (or --smoke for "
                         "synthetic data; or --stages env,tests)")
    for stage in STAGES:
        if getattr(args, f"budget_{stage}") <= 0:
            raise ValueError(f"--budget_{stage} must be positive")
    for flag in ("batch_size", "speed_epochs", "epochs", "seeds", "total_budget"):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if args.speed_epochs < 2:
        raise ValueError("--speed_epochs must be at least 2: the first epoch (start-up, compilation) is not timed")
    if not 0 < args.imb_factor <= 1:
        raise ValueError(f"--imb_factor is 1/rho and must be in (0, 1], got {args.imb_factor}")
    import bench_train
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        args.speed_variants = [bench_train.variant(v) for v in args.speed_variants]
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"--speed_variants: {e}") from None
    for name, flags in [*args.speed_variants, *([("--fast_flags", shlex.split(args.fast_flags))]
                                                 if args.fast_flags != "auto" else [])]:
        check_train_flags(flags, name)


def check_train_flags(flags: list[str], what: str) -> None:
    """Refuse train.py flags that train.py would refuse (unknown names, bad values) before anything runs."""
    import train
    parser = train.build_parser()
    parser.exit_on_error = False
    try:
        _, unknown = parser.parse_known_args(flags)
    except argparse.ArgumentError as e:
        raise ValueError(f"{what}: {e}") from None
    if unknown:
        raise ValueError(f"{what}: train.py does not know {' '.join(unknown)}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--stage-worker"]:
        return run_worker(argv[1], argv[2])
    args = parse_args(argv)
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="gpu_check-"))
    for sub in ("stages", "logs"):
        os.makedirs(os.path.join(work, sub), exist_ok=True)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    source = "npz" if args.data_npz else "path" if args.data_path else "synthetic"
    settings = {k: getattr(args, k) for k in ("smoke", "arch", "batch_size", "imb_factor", "speed_epochs",
                                               "workers", "epochs", "fast_flags", "total_budget", "device")}
    settings.update(seeds=list(range(args.seeds)), speed_variants=args.speed_variants,
                    budgets={s: getattr(args, f"budget_{s}") for s in STAGES}, data_source=source)
    ctx = dict(settings, repo=REPO, work=work, cuda=args.device == "cuda", commit=args.commit,
               data_npz=os.path.abspath(args.data_npz) if args.data_npz else None,
               data_path=os.path.abspath(args.data_path) if args.data_path else os.path.join(work, "data"),
               report_path=os.path.join(out, "gpu_check.json"))
    report = Report(out, shlex.join([os.path.relpath(os.path.abspath(__file__), REPO), *argv]), settings,
                    args.selected)
    report.write()
    deadline = time.time() + args.total_budget

    def on_term(signum, frame):  # a driver stopped from outside still stops its stage and writes the report
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        for stage in args.selected:
            left = deadline - time.time()
            if stage in NEEDS_DATA and not good(report.data["stages"]["data"]["status"]):
                record = {"status": f"skipped: no data (the data stage: {report.data['stages']['data']['status']})"}
            elif left < 1:
                record = {"status": f"skipped: no time left of --total_budget {args.total_budget:g} s"}
            else:
                print(f"[gpu_check] {stage}: running (budget {min(left, getattr(args, f'budget_{stage}')):.0f} s)",
                      flush=True)
                record = run_stage(stage, min(left, getattr(args, f"budget_{stage}")), ctx, report)
            print(f"[gpu_check] {stage}: {record['status']}", flush=True)
            report.set(stage, record)
        report.data["finished"] = True
    except KeyboardInterrupt:
        for name, st in report.data["stages"].items():
            if st["status"] == "pending":
                st["status"] = "failed: the check was interrupted"
        raise SystemExit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
        report.write()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"[gpu_check] wrote {report.json_path} and {report.md_path}")
    return 0 if all(good(report.data["stages"][s]["status"]) for s in args.selected) else 1


if __name__ == "__main__":
    sys.exit(main())
