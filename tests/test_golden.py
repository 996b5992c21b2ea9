"""Golden outputs: today's behaviour of the entry points, pinned bit for bit (written before the library redesign).

Every run in RUNS calls one entry point the way a user does (``<script>.main(argv)`` in this process, with one
intra-op thread and the run's folder as working directory) on tiny synthetic data with fixed seeds, each in its
own folder, and observes only what the run leaves behind:

* ``run_names`` / ``layout``: the run folders and the sorted file list (TensorBoard event files by folder only:
  their names hold the host and the time);
* every JSON file (final.json, shifted_eval.json, eval_test.json) and metrics.jsonl, without ``time_*`` fields
  (nor do the checkpoints' epoch records keep theirs);
* args.yaml (keys and values); CSV files (lines);
* every checkpoint, read with ``torch.load(map_location="cpu", weights_only=True)``: a SHA-256 per tensor
  (state_dict, optimizer state, MoCo queue...) and every other field;
* .npz files (pseudo-labels): a SHA-256 per array, strings as they are;
* for evaluation runs (``-e``, ``--test``) also the returned metrics; for ``reproduce.py TABLE --dry-run`` the
  printed commands (also checked once through the command line, as a subprocess).

Paths of the temporary folders appear as placeholders (``<RUNS>``, ``<TINY_CIFAR10>``, ``<REPO>``...). Golden
files: tests/golden/<run>.json. Metrics and tensor hashes must be bit-identical (torch's CPU results depend
on the number of intra-op threads, hence the one thread). ``legacy_*`` runs read a checkpoint written by the
pre-redesign code (tests/golden/legacy_resnet20_ckpt.pth.tar, never overwritten by a re-recording unless
asked). Only the entry points and the files they write are used: no engine.*, losses or models imports.

Regenerate after an intended behaviour change (runs everything twice and refuses runs that differ):
    python tests/golden/record.py [-k NAME]
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
LEGACY_CKPT = GOLDEN / "legacy_resnet20_ckpt.pth.tar"
LEGACY_META = GOLDEN / "legacy_resnet20_ckpt.meta.json"   # the writing run's metrics, stored with the file
LEGACY_MAX_BYTES = 1_600_000
RECORD = os.environ.get("GOLDEN_RECORD") == "1"           # set by tests/golden/record.py
RECORD_LEGACY = os.environ.get("GOLDEN_RECORD_LEGACY") == "1"
TABLES = sorted(p.stem for p in (REPO / "configs" / "tables").glob("*.yaml"))
SYNTHETIC = REPO / "imagenet_inat" / "config" / "synthetic"
ENTRY_POINTS = {"train": "train", "train_semi": "train_semi", "pretrain_rot": "pretrain_rot",
                "pretrain_moco": "pretrain_moco", "gen_pseudolabels": "gen_pseudolabels",
                "imagenet_inat": "imagenet_inat.main", "synthetic": "imagenet_inat.synthetic",
                "reproduce": "reproduce"}
EVENT_FILE = re.compile(r"^events\.out\.tfevents\.")


# == the runs =====================================================================================================
@dataclass(frozen=True)
class Run:
    name: str
    body: Callable[["Context", Path], tuple[list[str], object]]  # (context, own folder) -> (argv, returned)
    keep_return: bool = False      # observe the returned value too (evaluations)
    after: Callable | None = None  # (context, result) -> None, once the run has finished


RUNS: dict[str, Run] = {}


def run(name: str, keep_return: bool = False, after: Callable | None = None):
    def register(body):
        assert name not in RUNS, name
        RUNS[name] = Run(name, body, keep_return, after)
        return body
    return register


# Tiny CIFAR-10-LT (conftest's tiny_cifar10, 4 images per class; rho 2: classes [4, 3, 3, 3, 2, 2, 2, 2, 2, 2]).
TINY = ["--dataset", "cifar10", "--imb_factor", "0.5", "--arch", "resnet20", "-b", "8", "--device", "cpu",
        "--seed", "0"]


def cifar_flags(ctx, out: Path, *extra, epochs: int = 2, data: str | None = None) -> list[str]:
    return ["--data_path", data or ctx.data["tiny_cifar10"], *TINY, "--epochs", str(epochs),
            "--root_log", str(out / "log"), "--root_model", str(out / "ckpt"), *extra]


def ckpt_of(ctx, run_name: str, file: str = "ckpt.pth.tar") -> str:
    """The one ``file`` under another run's folder (running that run first)."""
    found = sorted(ctx.result(run_name).dir.rglob(file))
    assert len(found) == 1, f"run {run_name!r}: expected one {file}, found {[str(p) for p in found]}"
    return str(found[0])


def train_run(name: str, *extra, epochs: int = 2):
    @run(name)
    def body(ctx, out):
        return ctx.main("train", cifar_flags(ctx, out, *extra, epochs=epochs))
    return body


# 1. train.py: losses x rules on tiny CIFAR-10-LT, both loaders; bigger CIFAR-10 / CIFAR-100 / SVHN runs.
train_run("train_CE_None")
train_run("train_LDAM_DRW", "--loss_type", "LDAM", "--train_rule", "DRW", "--drw_epoch", "1")
train_run("train_LADE", "--loss_type", "LADE")
train_run("train_CE_Resample", "--train_rule", "Resample")
train_run("train_Focal_Reweight", "--loss_type", "Focal", "--train_rule", "Reweight")
train_run("train_LA", "--loss_type", "LA")
train_run("train_BalancedSoftmax", "--loss_type", "BalancedSoftmax")
train_run("train_CE_None_torch_loader", "--loader", "torch", "-j", "0")
train_run("train_LDAM_DRW_torch_loader", "--loss_type", "LDAM", "--train_rule", "DRW", "--drw_epoch", "1",
          "--loader", "torch", "-j", "0")
train_run("train_CE_cosine_schedule", "--lr_schedule", "cosine", "--warmup_epochs", "1", epochs=3)


@run("train_cifar10_LDAM_DRW_rho10")
def _(ctx, out):  # conftest's cifar10_root: 100 train / 20 test images per class; rho 10: 408 images
    return ctx.main("train", ["--dataset", "cifar10", "--data_path", ctx.data["cifar10_root"], "--imb_factor", "0.1",
                              "--arch", "resnet20", "-b", "64", "--device", "cpu", "--seed", "0", "--epochs", "2",
                              "--loss_type", "LDAM", "--train_rule", "DRW", "--drw_epoch", "1",
                              "--root_log", str(out / "log"), "--root_model", str(out / "ckpt")])


@run("train_cifar100_LADE")
def _(ctx, out):  # as tests/test_shifted.py: 100 classes, rho 100
    return ctx.main("train", ["--dataset", "cifar100", "--data_path", ctx.data["cifar100_root"], "--imb_factor",
                              "0.01", "--loss_type", "LADE", "--arch", "resnet20", "--epochs", "1", "-b", "32",
                              "--device", "cpu", "--seed", "0", "--root_log", str(out / "log"),
                              "--root_model", str(out / "ckpt")])


@run("train_svhn_CE_None")
def _(ctx, out):
    return ctx.main("train", ["--dataset", "svhn", "--data_path", ctx.data["svhn_root"], "--imb_factor", "0.01",
                              "--arch", "resnet20", "--epochs", "1", "-b", "32", "--device", "cpu", "--seed", "0",
                              "--root_log", str(out / "log"), "--root_model", str(out / "ckpt")])


# 6. evaluation of checkpoints of 1.: plain, post-hoc corrections, shifted test label distributions.
def eval_run(name: str, source: str, *extra, data_flags: Callable | None = None, file: str = "ckpt.pth.tar"):
    @run(name, keep_return=True)
    def body(ctx, out):
        flags = data_flags(ctx, out) if data_flags else cifar_flags(ctx, out)
        return ctx.main("train", [*flags, *extra, "-e", "--resume", ckpt_of(ctx, source, file)])
    return body


def cifar100_lade_flags(ctx, out):
    return ["--dataset", "cifar100", "--data_path", ctx.data["cifar100_root"], "--imb_factor", "0.01", "--loss_type",
            "LADE", "--arch", "resnet20", "--epochs", "1", "-b", "32", "--device", "cpu", "--seed", "0",
            "--root_log", str(out / "log"), "--root_model", str(out / "ckpt")]


eval_run("eval_CE_None", "train_CE_None")
eval_run("eval_CE_None_posthoc_la", "train_CE_None", "--posthoc", "la")
eval_run("eval_CE_None_posthoc_pc", "train_CE_None", "--posthoc", "pc")
eval_run("eval_LA_posthoc_pc", "train_LA", "--loss_type", "LA", "--posthoc", "pc")
eval_run("eval_best_checkpoint", "train_CE_None_torch_loader", file="ckpt.best.pth.tar")  # best (epoch 1) != last
eval_run("shifted_eval_LADE", "train_LADE", "--loss_type", "LADE", "--shifted_eval")
eval_run("shifted_eval_cifar100_LADE", "train_cifar100_LADE", "--shifted_eval", "--shifted_seed", "3",
         data_flags=cifar100_lade_flags)


# 2. rotation self-supervised pre-training on tiny CIFAR-10-LT, then train.py from it.
@run("rot_pretrain")
def _(ctx, out):
    return ctx.main("pretrain_rot", cifar_flags(ctx, out))


@run("rot_finetune_LDAM_DRW")
def _(ctx, out):
    return ctx.main("train", cifar_flags(ctx, out, "--loss_type", "LDAM", "--train_rule", "DRW", "--drw_epoch", "1",
                                         "--pretrained_model", ckpt_of(ctx, "rot_pretrain")))


@run("rot_eval", keep_return=True)
def _(ctx, out):
    return ctx.main("pretrain_rot", cifar_flags(ctx, out, "-e", "--resume", ckpt_of(ctx, "rot_pretrain")))


# 3. MoCo v2 on tiny CIFAR-10-LT (one process; plain BN and Split-BN), then train.py from it.
def moco_flags(ctx, out, *extra):
    return ["--dataset", "cifar10", "--data", ctx.data["tiny_cifar10"], "--imb_factor", "0.5", "-a", "resnet20",
            "--device", "cpu", "--seed", "0", "-j", "0", "--root_path", str(out / "moco"),
            "--root_log", str(out / "log"), "-b", "8", "--moco-k", "16", "--moco-dim", "8", *extra]


@run("moco_pretrain")
def _(ctx, out):
    argv, _ = ctx.main("pretrain_moco", moco_flags(ctx, out, "--epochs", "2"))
    return argv, None


@run("moco_pretrain_bn_splits")
def _(ctx, out):
    argv, _ = ctx.main("pretrain_moco", moco_flags(ctx, out, "--epochs", "1", "--bn-splits", "2", "--no-aug-plus"))
    return argv, None


@run("moco_finetune")
def _(ctx, out):
    return ctx.main("train", cifar_flags(ctx, out, "--pretrained_model",
                                         ckpt_of(ctx, "moco_pretrain", "moco_ckpt_0002.pth.tar")))


# 4. semi-supervised stand-in protocol (configs/semi/cifar10_standin_*): base on D_L, pseudo-labels, D_L + D_U.
STAND_IN = ["--dataset", "cifar10", "--imb_factor", "0.1", "--imb_factor_unlabel", "0.1", "--unlabeled_source",
            "cifar10_train", "--labeled_max", "20", "--unlabeled_max", "30"]


def semi_flags(ctx, out, *extra):
    return ["--data_path", ctx.data["cifar10_root"], *STAND_IN, "--epochs", "2", "-b", "16", "--arch", "resnet20",
            "--device", "cpu", "--seed", "0", "--root_log", str(out / "log"), "--root_model", str(out / "ckpt"),
            *extra]


@run("semi_base")
def _(ctx, out):
    return ctx.main("train_semi", semi_flags(ctx, out, "--labeled_only"))


@run("semi_pseudolabels")
def _(ctx, out):
    return ctx.main("gen_pseudolabels", ["--dataset", "cifar10", "--resume", ckpt_of(ctx, "semi_base"),
                                         "--data_dir", ctx.data["cifar10_root"], "--output_dir", str(out),
                                         "--unlabeled_source", "cifar10_train", "--device", "cpu"])


def pseudo_file(ctx) -> str:
    return str(ctx.result("semi_pseudolabels").dir / "pseudo_labeled_cifar.npz")


@run("semi_train_CE")
def _(ctx, out):
    return ctx.main("train_semi", semi_flags(ctx, out, "--pseudo_label_file", pseudo_file(ctx)))


@run("semi_train_LDAM_DRW")
def _(ctx, out):
    return ctx.main("train_semi", semi_flags(ctx, out, "--pseudo_label_file", pseudo_file(ctx), "--loss_type", "LDAM",
                                             "--train_rule", "DRW", "--drw_epoch", "1"))


# 5. imagenet_inat: the shipped synthetic configs, shrunk by flags (as tests/test_imagenet_inat.py).
def inat_flags(ctx, out, *extra):
    return ["--data_root", ctx.synthetic_lt(), "--num_classes", "6", "--crop_size", "32", "--resize_size", "32",
            "--batch_size", "16", "--workers", "0", "--device", "cpu", "--seed", "0", "--eval_batch_size", "64",
            "--log_dir", str(out), *extra]


@run("inat_feat_uniform")
def _(ctx, out):
    return ctx.main("imagenet_inat", ["--cfg", str(SYNTHETIC / "feat_uniform.yaml"), *inat_flags(ctx, out),
                                      "--epochs", "2"])


@run("inat_feat_balance")
def _(ctx, out):
    return ctx.main("imagenet_inat", ["--cfg", str(SYNTHETIC / "feat_balance.yaml"), *inat_flags(ctx, out),
                                      "--epochs", "1"])


@run("inat_crt")
def _(ctx, out):
    return ctx.main("imagenet_inat", ["--cfg", str(SYNTHETIC / "cls_crt.yaml"), *inat_flags(ctx, out), "--epochs", "2",
                                      "--init", str(ctx.result("inat_feat_uniform").dir)])


@run("inat_tau_norm")
def _(ctx, out):
    return ctx.main("imagenet_inat", ["--cfg", str(SYNTHETIC / "tau_norm.yaml"), *inat_flags(ctx, out),
                                      "--init", str(ctx.result("inat_feat_uniform").dir), "--tau_grid", "0", "0.5",
                                      "1"])


@run("inat_crt_test", keep_return=True)
def _(ctx, out):
    return ctx.main("imagenet_inat", ["--cfg", str(SYNTHETIC / "cls_crt.yaml"), *inat_flags(ctx, out), "--test",
                                      "--model_dir", str(ctx.result("inat_crt").dir)])


# 7. reproduce.py --dry-run of every table: reproduce.main in this process, from the repository root (a test below
# checks that ``python reproduce.py TABLE --dry-run`` prints the same).
def dry_run_summary(stdout: str, stderr: str) -> dict:
    """The printed commands, and stderr's '# N runs...' lines (without the count of runs already finished here)."""
    summary = [re.sub(r", \d+ already finished", ", <N> already finished", line)
               for line in stderr.splitlines() if line.startswith("# ")]
    return {"commands": stdout.splitlines(), "stderr_summary": summary}


def dry_run(table: str):
    @run(f"reproduce_{table}", keep_return=True)
    def body(ctx, out):
        argv = [table, "--dry-run"]
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.chdir(REPO), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            importlib.import_module("reproduce").main(list(argv))
        return ["reproduce", *argv], dry_run_summary(stdout.getvalue(), stderr.getvalue())
    return body


for _table in TABLES:
    dry_run(_table)


# Checkpoints written before the redesign: one small file (resnet20, 1 epoch, momentum 0 so that the optimizer
# holds no buffers) written by legacy_write, kept in tests/golden/, and read by today's and tomorrow's code.
def keep_legacy_checkpoint(ctx, result) -> None:
    if not (RECORD and ctx.primary) or (LEGACY_CKPT.exists() and not RECORD_LEGACY):
        return
    source = Path(ckpt_of(ctx, "legacy_write"))
    shutil.copyfile(source, LEGACY_CKPT)
    final = json.loads(next(result.dir.rglob("final.json")).read_text())
    LEGACY_META.write_text(dump_json({"written_by": "legacy_write in tests/test_golden.py, pre-redesign code",
                                      "argv": ctx.normalise(result.argv), "last": final["last"]}) + "\n")


LEGACY_FLAGS = ["--momentum", "0"]


@run("legacy_write", after=keep_legacy_checkpoint)
def _(ctx, out):
    return ctx.main("train", cifar_flags(ctx, out, *LEGACY_FLAGS, epochs=1))


def legacy_checkpoint(ctx) -> str:
    ctx.result("legacy_write")  # in record mode this writes LEGACY_CKPT when it is absent
    assert LEGACY_CKPT.is_file(), f"missing {LEGACY_CKPT}: record it with python tests/golden/record.py"
    return str(LEGACY_CKPT)


@run("legacy_eval", keep_return=True)
def _(ctx, out):
    return ctx.main("train", cifar_flags(ctx, out, *LEGACY_FLAGS, "-e", "--resume", legacy_checkpoint(ctx)))


@run("legacy_continue")
def _(ctx, out):
    return ctx.main("train", cifar_flags(ctx, out, *LEGACY_FLAGS, "--resume", legacy_checkpoint(ctx), epochs=2))


@run("legacy_pretrained")
def _(ctx, out):
    return ctx.main("train", cifar_flags(ctx, out, "--pretrained_model", legacy_checkpoint(ctx), epochs=1))


# == running ======================================================================================================
@dataclass
class Result:
    dir: Path
    argv: list[str]
    returned: object


@contextlib.contextmanager
def one_intra_op_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Context:
    """One set of runs in ``base`` (each run once, on demand, in ``base/<name>``)."""

    def __init__(self, base: Path, data: dict[str, str], primary: bool = True):
        self.base, self.data, self.primary = base, data, primary
        self.results: dict[str, Result | BaseException] = {}
        self._synthetic = None
        self._cwd = base
        base.mkdir(parents=True, exist_ok=True)

    def main(self, entry: str, argv: list[str]) -> tuple[list[str], object]:
        """``<entry point>.main(argv)`` with one intra-op thread, in the run's folder (stray relative writes land
        there and show in the layout)."""
        module = importlib.import_module(ENTRY_POINTS[entry])
        with one_intra_op_thread(), contextlib.chdir(self._cwd):
            return [entry, *argv], module.main(list(argv))

    def synthetic_lt(self) -> str:
        if self._synthetic is None:
            root = self.base / "_data" / "synthetic_lt"
            root.parent.mkdir(parents=True, exist_ok=True)
            self.main("synthetic", [str(root), "--classes", "6", "--max", "24", "--min", "2", "--val", "3",
                                    "--test", "3", "--size", "32"])
            self._synthetic = str(root)
        return self._synthetic

    def result(self, name: str) -> Result:
        if name not in self.results:
            out = self.base / name
            out.mkdir(parents=True)
            saved, self._cwd = self._cwd, out
            try:
                argv, returned = RUNS[name].body(self, out)
                self.results[name] = Result(out, argv, returned)
            except BaseException as e:  # noqa: BLE001 -- dependants fail with the same error
                self.results[name] = e
                raise
            finally:
                self._cwd = saved
            if RUNS[name].after is not None:
                RUNS[name].after(self, self.results[name])
        result = self.results[name]
        if isinstance(result, BaseException):
            raise RuntimeError(f"run {name!r} failed earlier: {result!r}") from result
        return result

    # -- observation ---------------------------------------------------------------------------------------------
    def normalise(self, value):
        """Replace the temporary folders in every string by placeholders; tuples become lists, keys strings."""
        if isinstance(value, str):
            for path, token in self._replacements():
                value = re.sub(re.escape(path) + r"(?![\w.-])", token, value)
            return value
        if isinstance(value, Path):
            return self.normalise(str(value))
        if isinstance(value, dict):
            return {str(k): self.normalise(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.normalise(v) for v in value]
        return value

    def _replacements(self):
        pairs = [(str(self.base / "_data" / "synthetic_lt"), "<SYNTHETIC_LT>"), (str(self.base), "<RUNS>"),
                 (str(REPO), "<REPO>")]
        pairs += [(os.path.realpath(p), f"<{k.upper()}>") for k, p in self.data.items()]
        pairs += [(p, f"<{k.upper()}>") for k, p in self.data.items()]
        return sorted(set(pairs), key=lambda kv: -len(kv[0]))

    def observe(self, name: str) -> dict:
        result = self.result(name)
        files = sorted(p for p in result.dir.rglob("*") if p.is_file())
        rel = [p.relative_to(result.dir).as_posix() for p in files]
        obs = {"argv": self.normalise(result.argv),
               "run_names": {top.name: sorted(c.name for c in top.iterdir() if c.is_dir())
                             for top in sorted(result.dir.iterdir()) if top.is_dir()},
               "layout": sorted(_layout_name(r) for r in rel)}
        if RUNS[name].keep_return:
            obs["returned"] = self.normalise(_plain(result.returned))
        contents, seen = {}, {}
        # The last checkpoint before the best one: a best checkpoint that is a copy refers to it.
        for path, r in sorted(zip(files, rel), key=lambda pr: (".best." in pr[1], pr[1])):
            if EVENT_FILE.match(path.name):
                continue
            content = self.normalise(_read(path))
            key = json.dumps(content, sort_keys=True)
            if path.name.endswith((".pth.tar", ".pth")) and key in seen:
                content = {"identical_to": seen[key]}
            else:
                seen.setdefault(key, r)
            contents[r] = content
        obs["files"] = dict(sorted(contents.items()))
        return json.loads(json.dumps(obs))  # exactly what a golden file holds (str keys, lists, JSON floats)


def _layout_name(rel: str) -> str:
    folder, _, name = rel.rpartition("/")
    if EVENT_FILE.match(name):
        name = "events.out.tfevents.*"
    return f"{folder}/{name}" if folder else name


def _drop_times(value):
    if isinstance(value, dict):
        return {k: _drop_times(v) for k, v in value.items() if not str(k).startswith("time_")}
    if isinstance(value, list):
        return [_drop_times(v) for v in value]
    return value


def tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)} {hashlib.sha256(data).hexdigest()}"


def _plain(value):
    """Checkpoint / returned values as JSON: tensors and arrays by digest, NaN as the string 'nan'."""
    if isinstance(value, torch.Tensor):
        return tensor_digest(value)
    if isinstance(value, np.ndarray):
        return _array_digest(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (np.integer, np.floating)):
        return _plain(value.item())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return f"<{type(value).__name__}>"


def _array_digest(a: np.ndarray):
    if a.dtype.kind == "U":
        return a.tolist()
    return f"{a.dtype}{list(a.shape)} {hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}"


def _read(path: Path):
    name = path.name
    if name.endswith((".pth.tar", ".pth")):
        return _drop_times(_plain(torch.load(path, map_location="cpu", weights_only=True)))  # its epoch records
    if name.endswith(".jsonl"):
        return [_drop_times(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    if name.endswith(".json"):
        return _drop_times(json.loads(path.read_text()))
    if name.endswith((".yaml", ".yml")):
        return yaml.safe_load(path.read_text())
    if name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: _array_digest(z[k]) for k in sorted(z.files)}
    if name.endswith((".csv", ".txt")):
        return path.read_text().splitlines()
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


# == comparison ===================================================================================================
def first_difference(got, want, where: str = "") -> str | None:
    """The first place where ``got`` differs from ``want`` (None if equal), e.g. ``[1].test.top1: 25.0 != 30.0``."""
    if isinstance(want, dict) and isinstance(got, dict):
        new, old = sorted(set(got) - set(want)), sorted(set(want) - set(got))
        if new or old:
            return f"{where or '<top>'}: keys only in the new output {new[:8]}, only in the golden {old[:8]}"
        for k in want:
            diff = first_difference(got[k], want[k], f"{where}.{k}" if where else str(k))
            if diff:
                return diff
        return None
    if isinstance(want, list) and isinstance(got, list):
        for i, (g, w) in enumerate(zip(got, want)):
            diff = first_difference(g, w, f"{where}[{i}]")
            if diff:
                return diff
        if len(got) != len(want):
            return f"{where or '<top>'}: {len(got)} items in the new output, {len(want)} in the golden"
        return None
    if type(got) is not type(want) and not (isinstance(got, (int, float)) and isinstance(want, (int, float))
                                            and not isinstance(got, bool) and not isinstance(want, bool)):
        return f"{where or '<top>'}: new {got!r} ({type(got).__name__}) != golden {want!r} ({type(want).__name__})"
    if got != want:
        return f"{where or '<top>'}: new {got!r} != golden {want!r}"
    return None


def differences(got: dict, want: dict) -> list[str]:
    """First difference of each section: argv, run names, layout, returned value, then file by file."""
    out = []
    for section in ("argv", "run_names", "returned"):
        diff = first_difference(got.get(section), want.get(section), section)
        if diff:
            out.append(diff)
    if got["layout"] != want["layout"]:
        new, old = _multiset_minus(got["layout"], want["layout"]), _multiset_minus(want["layout"], got["layout"])
        out.append(f"layout: files only in the new output {new[:10]}, only in the golden {old[:10]}")
    for rel in sorted(set(got["files"]) & set(want["files"])):
        diff = first_difference(got["files"][rel], want["files"][rel], rel)
        if diff:
            out.append(diff)
    return out


def _multiset_minus(a: list, b: list) -> list:
    rest = list(b)
    out = []
    for x in a:
        if x in rest:
            rest.remove(x)
        else:
            out.append(x)
    return out


def golden_path(name: str) -> Path:
    return GOLDEN / f"{name}.json"


def dump_json(value, indent: str = "") -> str:
    """Pretty JSON with lists of scalars on one line (per-class accuracies, class counts, argv)."""
    inner = indent + " "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {dump_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + dump_json(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value)


def write_golden(name: str, obs: dict) -> None:
    GOLDEN.mkdir(exist_ok=True)
    text = dump_json(obs) + "\n"
    assert json.loads(text) == obs
    golden_path(name).write_text(text)


# == tests ========================================================================================================
@pytest.fixture(scope="module")
def data(tiny_cifar10, cifar10_root, cifar100_root, svhn_root):
    return {"tiny_cifar10": tiny_cifar10, "cifar10_root": cifar10_root, "cifar100_root": cifar100_root,
            "svhn_root": svhn_root}


@pytest.fixture(scope="module")
def ctx(data, tmp_path_factory):
    return Context(tmp_path_factory.mktemp("golden_runs"), data)


@pytest.fixture(scope="module")
def ctx_again(data, tmp_path_factory):
    """Record mode only: a second set of the same runs, in this process, that must agree with the first."""
    return Context(tmp_path_factory.mktemp("golden_runs_again"), data, primary=False)


@pytest.mark.parametrize("name", list(RUNS))
def test_golden_run(name, ctx, request):
    got = ctx.observe(name)
    if RECORD:
        again = request.getfixturevalue("ctx_again").observe(name)
        diffs = differences(again, got)
        if diffs:
            pytest.fail(f"run {name!r} is not deterministic (two runs in one process differ); not recorded:\n  "
                        + "\n  ".join(diffs), pytrace=False)
        write_golden(name, got)
        return
    path = golden_path(name)
    assert path.is_file(), f"no golden file {path.relative_to(REPO)} for run {name!r}: python tests/golden/record.py -k {name}"
    want = json.loads(path.read_text())
    diffs = differences(got, want)
    if diffs:
        pytest.fail(f"run {name!r} differs from {path.relative_to(REPO)} (first difference per section):\n  "
                    + "\n  ".join(diffs[:12]) + ("\n  ..." if len(diffs) > 12 else "")
                    + f"\nAn intended change: re-record with python tests/golden/record.py -k {name}", pytrace=False)


def test_every_golden_file_has_a_run():
    names = {p.stem for p in GOLDEN.glob("*.json")} - {LEGACY_META.name.removesuffix(".json")}
    stale = sorted(names - set(RUNS))
    assert not stale, f"golden files without a run in tests/test_golden.py RUNS: {stale}"


def test_legacy_checkpoint_is_small_and_weights_only():
    assert LEGACY_CKPT.is_file(), f"missing {LEGACY_CKPT}"
    assert LEGACY_CKPT.stat().st_size < LEGACY_MAX_BYTES, f"{LEGACY_CKPT.name}: {LEGACY_CKPT.stat().st_size} bytes"
    ckpt = torch.load(LEGACY_CKPT, map_location="cpu", weights_only=True)
    assert ckpt["arch"] == "resnet20" and ckpt["epoch"] == 1 and "fc.weight" in ckpt["state_dict"]


def test_legacy_checkpoint_evaluates_to_its_recorded_metrics(ctx):
    """``train.py -e --resume LEGACY`` reproduces the last-epoch test metrics of the run that wrote the file."""
    returned = ctx.observe("legacy_eval")["returned"]
    recorded = json.loads(LEGACY_META.read_text())["last"]
    common = sorted((set(returned) & set(recorded)) - {"epoch"})
    assert {"top1", "top5", "loss", "per_class"} <= set(common), common
    diff = first_difference({k: returned[k] for k in common}, {k: recorded[k] for k in common})
    assert diff is None, f"evaluating {LEGACY_CKPT.name} differs from its writer's last epoch: {diff}"


def test_reproduce_cli_prints_the_recorded_dry_run():
    """``python reproduce.py TABLE --dry-run`` as a subprocess prints what the in-process runs recorded."""
    table = "speed_parity" if "speed_parity" in TABLES else TABLES[0]
    proc = subprocess.run([sys.executable, "reproduce.py", table, "--dry-run"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"python reproduce.py {table} --dry-run failed:\n{proc.stderr[-2000:]}"
    got = dry_run_summary(proc.stdout, proc.stderr)
    want = json.loads(golden_path(f"reproduce_{table}").read_text())["returned"]
    diff = first_difference(got, want)
    assert diff is None, f"python reproduce.py {table} --dry-run differs from the golden: {diff}\n{proc.stderr[-2000:]}"
