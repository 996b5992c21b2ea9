"""Papers' tables as data: load a table spec (configs/tables/*.yaml), expand it into ordinary script runs, run
the missing ones, and report our numbers next to the papers'.

A table is columns (settings such as dataset x imbalance ratio) times rows (methods). Each (row, column,
training seed) is one run of a script, or a pipeline of runs whose last stage is the reported one
(``pretrain_rot.py -> train.py``; ``train.py -> gen_pseudolabels.py -> train_semi.py``). Every run is a plain
command line, so any cell can be re-run by hand (``reproduce.py TABLE --dry-run`` prints them).

Spec schema (unknown keys are errors, named with the file)::

    name: ldam_drw_cifar            # = the file's stem
    title: ...
    sources: {cao2019: "Cao et al. 2019, Table 2"}     # id -> citation, used by `paper` entries
    metric: error                   # error = 100 - top-1 (CIFAR/SVHN papers), accuracy = top-1 (LADE)
    rand_number: 0                  # seed of the long-tailed subset (SPEC 2.1), the same for every run
    seeds: [0, 1, 2]                # training seeds (--seed); `reproduce.py --seeds N` takes the first N
    compare: best                   # optional: which of ours the difference uses, best (default) or last epoch
    notes: [...]                    # optional lines printed in the report
    defaults: {arch: resnet32}      # optional flags for every stage that inherits
    columns:
      - {key: cifar10_exp100, label: "CIFAR-10-LT rho=100", overrides: {dataset: cifar10, imb_factor: 0.01}}
    rows:
      - key: LDAM_DRW
        label: LDAM-DRW
        script: train.py            # single-stage row (default train.py) ...
        config: configs/ldam_drw/{column}_LDAM_DRW.yaml   # optional; {column} = the column key
        overrides: {loss_type: LDAM, train_rule: DRW}
        stages:                     # ... or a pipeline (then no script/config on the row)
          - {name: pretrain, script: pretrain_rot.py, overrides: {loss_type: CE}}
          - {name: train, script: train.py, overrides: {pretrained_model: "{pretrain.checkpoint}"}}
        paper:
          cifar10_exp100: {value: 22.97, source: cao2019, tag: S, note: optional}

Flags are the scripts' destination names, as in ``--config`` YAML files. A stage with ``inherit: true`` (the
default) gets ``defaults`` < column ``overrides`` < row ``overrides`` < its own ``overrides``; ``inherit:
false`` gets only its own. In any of these mappings a key naming a script (``train_semi.py: {...}``) holds
flags for that script only. A string ``"{stage.name}"`` is an earlier stage's output (``checkpoint``,
``best_checkpoint``, ``final``, ``file``, ``log_dir``, ``ckpt_dir``) or one of its resolved flags. The seed,
the subset seed, the data path, the run name suffix and the output folders are set here, never in a spec.

Tags follow SPEC section 7: [V] verified in a primary source, [S] secondary source, [R] recalled, unverified.
"""
from __future__ import annotations

import argparse
import copy
import csv
import importlib
import io
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from engine import config as engine_config
from engine.checkpoint import atomic_write

REPO_ROOT = Path(__file__).resolve().parents[1]
TABLES_DIR = REPO_ROOT / "configs" / "tables"

TRAIN_FIELDS = ("dataset", "arch", "loss_type", "train_rule", "imb_type", "imb_factor", "exp_str")
SEMI_FIELDS = ("dataset", "arch", "loss_type", "train_rule", "imb_type", "imb_factor", "imb_factor_unlabel",
               "exp_str")


class TableError(ValueError):
    """A table spec (or a run it describes) is invalid; the message names the file and the key."""


# ----------------------------------------------------------------------------------------------- scripts

@dataclass(frozen=True)
class Script:
    """How reproduce.py drives one script.

    ``store_fields``: the run-name fields (``{root_log}/{store_name}/final.json``,
    ``{root_model}/{store_name}/ckpt.pth.tar``); None for a script that writes one ``output_file`` into
    ``--output_dir``. ``trains``: takes --seed --rand_number --epochs --root_log --root_model and --resume
    (every script takes --device). ``exp_str``: gets ``--exp_str TABLE_sSEED`` (pretrain_rot.py keeps its
    upstream ``pretrain_rot``). ``fixed``: run-name fields the script fixes, used when it cannot be imported.
    """
    store_fields: tuple[str, ...] | None
    trains: bool = True
    exp_str: bool = True
    fixed: dict = field(default_factory=dict)
    data_flag: str = "data_path"
    output_file: str | None = None


SCRIPTS: dict[str, Script] = {
    "train.py": Script(TRAIN_FIELDS),
    "pretrain_rot.py": Script(TRAIN_FIELDS, exp_str=False, fixed={"exp_str": "pretrain_rot"}),
    "train_semi.py": Script(SEMI_FIELDS),
    "gen_pseudolabels.py": Script(None, trains=False, data_flag="data_dir", output_file="pseudo_labels.npz"),
}
# Set by reproduce.py for every run (seeds, data, outputs); a spec that sets one is an error.
RESERVED = {"seed", "rand_number", "exp_str", "root_log", "root_model", "config", "data_path", "data_dir",
            "output_dir", "output_filename"}


def script_hook(script: str, name: str) -> Callable | None:
    """Function ``name`` of ``script``'s module (``build_parser``, ``fill_defaults``, ``run_name_fields``); None
    when the script is not in this checkout or does not define it."""
    if not (REPO_ROOT / script).is_file():
        return None
    return getattr(importlib.import_module(Path(script).stem), name, None)


def script_parser(script: str) -> argparse.ArgumentParser | None:
    """A fresh parser of ``script`` (its module's ``build_parser()``); None when the script is not in this
    checkout or has no ``build_parser``."""
    build = script_hook(script, "build_parser")
    return build() if build is not None else None


def _raising(parser: argparse.ArgumentParser, where: str) -> argparse.ArgumentParser:
    def error(message):
        raise TableError(f"{where}: {message}")
    parser.error = error
    return parser


def check_config(script: str, path: str) -> argparse.Namespace:
    """Load the YAML config ``path`` with ``script``'s parser (keys, types, choices) and the common checks;
    checkpoints it names (--resume, --pretrained_model) are outputs of other runs and need not exist yet."""
    parser = script_parser(script)
    if parser is None:
        raise TableError(f"{path}: {script} is not in this checkout (or has no build_parser)")
    args = _parse(_raising(parser, path), ["--config", path], path)
    if SCRIPTS[script].trains:
        _validate(args, path, blank=("resume", "pretrained_model"))
    return args


def _parse(parser: argparse.ArgumentParser, argv: list[str], where: str) -> argparse.Namespace:
    try:
        return engine_config.parse(parser, argv, validate=lambda args: None)
    except SystemExit as e:  # load_yaml_defaults reports a bad --config file this way
        raise TableError(f"{where}: {e}") from None


def _validate(args: argparse.Namespace, where: str, blank) -> None:
    """engine.config.validate_common, except for files that earlier stages will write and the device
    (checked by the script on the machine that runs it)."""
    args = copy.copy(args)
    for dest in blank:
        setattr(args, dest, "")
    args.device = None
    try:
        engine_config.validate_common(args)
    except (ValueError, FileNotFoundError) as e:
        raise TableError(f"{where}: {e}") from None


# ------------------------------------------------------------------------------------------- spec model

@dataclass(frozen=True)
class PaperValue:
    value: float
    source: str
    tag: str
    note: str = ""


@dataclass(frozen=True)
class Stage:
    name: str
    script: str
    config: str | None
    overrides: dict
    inherit: bool


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    overrides: dict


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    overrides: dict
    stages: tuple[Stage, ...]
    paper: dict[str, PaperValue]


@dataclass(frozen=True)
class Table:
    path: str
    name: str
    title: str
    sources: dict[str, str]
    metric: str
    compare: str
    rand_number: int
    seeds: tuple[int, ...]
    notes: tuple[str, ...]
    defaults: dict
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Metric:
    description: str
    lower_is_better: bool
    from_top1: Callable[[float], float]


METRICS: dict[str, Metric] = {
    "error": Metric("top-1 error (%) = 100 - top-1 accuracy", True, lambda top1: 100.0 - top1),
    "accuracy": Metric("top-1 accuracy (%)", False, lambda top1: top1),
}
TAGS = {"V": "verified in a primary source", "S": "secondary source", "R": "recalled, unverified"}
KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
REF_RE = re.compile(r"\{([A-Za-z_]\w*)\.([A-Za-z_]\w*)\}")


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise TableError(f"{where}: {message}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _list(obj, key: str, path: str) -> list:
    _require(isinstance(obj.get(key), list) and bool(obj[key]), f"{path}: {key}", "expected a non-empty list")
    return obj[key]


def _fields(obj, where: str, required: set, optional: set = frozenset()) -> dict:
    if not isinstance(obj, dict):
        raise TableError(f"{where}: expected a mapping, got {type(obj).__name__}")
    unknown = sorted(set(map(str, obj)) - required - optional)
    if unknown:
        raise TableError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(required | optional))})")
    missing = sorted(required - set(obj))
    if missing:
        raise TableError(f"{where}: missing key {missing[0]!r}")
    return obj


def _key(value, where: str) -> str:
    _require(isinstance(value, str) and bool(KEY_RE.match(value)), where,
             f"{value!r} must be a name of letters, digits and _ . + - (it names folders)")
    return value


def _overrides(obj, where: str) -> dict:
    """A flag mapping; keys naming a script hold that script's flags. Reserved flags are errors."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise TableError(f"{where}: expected a mapping of flag names to values, got {type(obj).__name__}")
    out = {}
    for raw, value in obj.items():
        key = str(raw) if str(raw).endswith(".py") else str(raw).replace("-", "_")
        if key.endswith(".py"):
            if key not in SCRIPTS:
                raise TableError(f"{where}: unknown script section {key!r} (scripts: {', '.join(SCRIPTS)})")
            out[key] = _overrides(value, f"{where}.{key}")
        elif key in RESERVED:
            raise TableError(f"{where}: {key!r} is set by reproduce.py for every run (seeds come from `seeds`, "
                             "the subset seed from `rand_number`, the data from --data_path); remove it")
        else:
            out[key] = value
    return out


def _flags_for(overrides: dict, script: str) -> dict:
    plain = {k: v for k, v in overrides.items() if not k.endswith(".py")}
    return {**plain, **overrides.get(script, {})}


def _script(value, where: str) -> str:
    if value not in SCRIPTS:
        raise TableError(f"{where}: unknown script {value!r} (known: {', '.join(SCRIPTS)})")
    return value


def _config_path(value, where: str, columns) -> str:
    if not isinstance(value, str):
        raise TableError(f"{where}: expected a path relative to the repository root")
    for column in columns:
        path = REPO_ROOT / value.replace("{column}", column.key)
        if not path.is_file():
            raise TableError(f"{where}: no config file {path.relative_to(REPO_ROOT)} (column {column.key!r})")
    return value


def _stage(obj, where: str, columns, earlier: list[str]) -> Stage:
    _fields(obj, where, {"name", "script"}, {"config", "overrides", "inherit"})
    script = _script(obj["script"], f"{where}.script")
    name = _key(obj["name"], f"{where}.name")
    _require(name not in earlier, f"{where}.name", f"stage {name!r} appears twice")
    overrides = _overrides(obj.get("overrides"), f"{where}.overrides")
    for flag, value in _flags_for(overrides, script).items():
        for ref, _ in REF_RE.findall(str(value)):
            _require(ref in earlier, f"{where}.overrides.{flag}",
                     f"{value!r} refers to {ref!r}, which is not an earlier stage (earlier: {earlier or 'none'})")
    inherit = obj.get("inherit", True)
    _require(isinstance(inherit, bool), f"{where}.inherit", f"expected true or false, got {inherit!r}")
    config = obj.get("config")
    return Stage(name, script,
                 None if config is None else _config_path(config, f"{where}.config", columns), overrides, inherit)


def _paper(obj, where: str, columns, sources) -> dict[str, PaperValue]:
    obj = {} if obj is None else _fields(obj, where, set(), {c.key for c in columns})
    out = {}
    for column, entry in obj.items():
        here = f"{where}.{column}"
        _fields(entry, here, {"value", "source", "tag"}, {"note"})
        value, source, tag = entry["value"], entry["source"], entry["tag"]
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), f"{here}.value",
                 f"expected a number, got {value!r}")
        _require(source in sources, f"{here}.source", f"{source!r} is not in `sources` ({', '.join(sources)})")
        _require(tag in TAGS, f"{here}.tag", f"{tag!r} must be one of {', '.join(TAGS)} (SPEC section 7)")
        out[column] = PaperValue(float(value), source, tag, str(entry.get("note", "")))
    return out


def _row(obj, where: str, columns, sources) -> Row:
    _fields(obj, where, {"key", "label"}, {"script", "config", "overrides", "stages", "paper"})
    if "stages" in obj:
        _require("script" not in obj and "config" not in obj, where,
                 "give `script`/`config` on each stage when the row has `stages`")
        stages = []
        for i, stage in enumerate(_list(obj, "stages", where)):
            stages.append(_stage(stage, f"{where}.stages[{i}]", columns, [s.name for s in stages]))
    else:
        script = _script(obj.get("script", "train.py"), f"{where}.script")
        config = obj.get("config")
        stages = [Stage(Path(script).stem, script,
                        None if config is None else _config_path(config, f"{where}.config", columns), {}, True)]
    return Row(_key(obj["key"], f"{where}.key"), str(obj["label"]), _overrides(obj.get("overrides"),
               f"{where}.overrides"), tuple(stages), _paper(obj.get("paper"), f"{where}.paper", columns, sources))


def _unique(items, where: str):
    keys = [item.key for item in items]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise TableError(f"{where}: key {dup[0]!r} appears twice")
    return tuple(items)


def table_path(name_or_path: str) -> str:
    """A spec file: ``name_or_path`` itself, or ``configs/tables/NAME.yaml``."""
    if os.path.isfile(name_or_path):
        return name_or_path
    path = TABLES_DIR / f"{name_or_path}.yaml"
    if path.is_file():
        return str(path)
    names = ", ".join(sorted(p.stem for p in TABLES_DIR.glob("*.yaml")))
    raise TableError(f"no table {name_or_path!r}: not a file, and not one of configs/tables: {names}")


def _column(obj, where: str) -> Column:
    _fields(obj, where, {"key", "label"}, {"overrides"})
    return Column(_key(obj["key"], f"{where}.key"), str(obj["label"]), _overrides(obj.get("overrides"),
                                                                                 f"{where}.overrides"))


def load_table(name_or_path: str) -> Table:
    """Read and validate a table spec (structure, keys, references, config files, paper entries)."""
    path = table_path(name_or_path)
    with open(path) as f:
        obj = yaml.safe_load(f)
    _fields(obj, path, {"name", "title", "sources", "metric", "rand_number", "seeds", "columns", "rows"},
            {"notes", "defaults", "compare"})
    _require(obj["name"] == Path(path).stem, f"{path}: name", f"{obj['name']!r} must equal the file name")
    _require(obj["metric"] in METRICS, f"{path}: metric", f"{obj['metric']!r} must be one of {', '.join(METRICS)}")
    compare = obj.get("compare", "best")
    _require(compare in ("best", "last"), f"{path}: compare", f"{compare!r} must be best or last")
    _require(_is_int(obj["rand_number"]), f"{path}: rand_number", f"expected an integer, got {obj['rand_number']!r}")
    seeds = _list(obj, "seeds", path)
    _require(all(map(_is_int, seeds)) and len(set(seeds)) == len(seeds), f"{path}: seeds",
             f"expected distinct integers, got {seeds!r}")
    sources = obj["sources"]
    _require(isinstance(sources, dict) and bool(sources), f"{path}: sources", "expected a mapping of ids to citations")
    notes = obj.get("notes", [])
    _require(isinstance(notes, list) and all(isinstance(n, str) for n in notes), f"{path}: notes",
             "expected a list of strings")
    columns = _unique([_column(c, f"{path}: columns[{i}]") for i, c in enumerate(_list(obj, "columns", path))],
                      f"{path}: columns")
    rows = _unique([_row(r, f"{path}: rows[{i}]", columns, sources) for i, r in enumerate(_list(obj, "rows", path))],
                   f"{path}: rows")
    return Table(path, obj["name"], str(obj["title"]), {str(k): str(v) for k, v in sources.items()}, obj["metric"],
                 compare, obj["rand_number"], tuple(seeds), tuple(notes),
                 _overrides(obj.get("defaults"), f"{path}: defaults"), columns, rows)


def pick_seeds(table: Table, count: int | None) -> list[int]:
    """The first ``count`` of the spec's seeds, continued with max + 1, max + 2, ... when it asks for more."""
    seeds = list(table.seeds[:count] if count is not None else table.seeds)
    while count is not None and len(seeds) < count:
        seeds.append(max(seeds) + 1)
    return seeds


# ------------------------------------------------------------------------------------------- expansion

@dataclass(eq=False)
class Job:
    """One run of one script: the exact argv, its folder, its outputs and the runs it waits for."""
    script: str
    argv: list[str]
    dir: str
    outputs: dict[str, str]
    deps: list["Job"]
    epochs: int | None
    label: str

    @property
    def marker(self) -> str:
        """The file whose existence means the run has finished."""
        return self.outputs.get("final") or self.outputs["file"]

    def finished(self) -> bool:
        return os.path.isfile(self.marker)

    def command(self, python: str = "python") -> list[str]:
        return [python, os.path.relpath(REPO_ROOT / self.script), *self.argv]


@dataclass
class Plan:
    table: Table
    seeds: list[int]
    data_path: str
    epochs: int | None
    out: str
    jobs: list[Job]                                 # unique runs, each after the runs it needs
    cells: dict[tuple[str, str], dict[int, Job]]    # (row, column) -> seed -> the reported run
    unvalidated: list[str]                          # scripts not in this checkout: commands not checked

    @property
    def stem(self) -> str:
        """Report and run-folder name: the table's, tagged when --epochs shortens the papers' schedule."""
        return self.table.name + (f"_epochs{self.epochs}" if self.epochs is not None else "")


def _option(action: argparse.Action) -> str:
    longs = [o for o in action.option_strings if o.startswith("--")]
    exact = [o for o in longs if o[2:].replace("-", "_") == action.dest]
    return (exact or longs or action.option_strings)[0]


def _tokens(dest: str, value, action: argparse.Action | None, where: str) -> list[str]:
    """Command-line tokens setting ``dest`` to ``value`` (flag spelling from the parser when known)."""
    option = _option(action) if action is not None else f"--{dest}"
    if isinstance(action, argparse.BooleanOptionalAction):
        return [option] if value else ["--no-" + option[2:]]
    if isinstance(value, bool) or (action is not None and action.nargs == 0):
        const = True if action is None else action.const
        if value == const:
            return [option]
        if action is None or value == action.default:
            return []
        raise TableError(f"{where}: {dest}: {value!r} cannot be set from the command line ({option} is a switch)")
    if isinstance(value, list):
        return [option, *map(str, value)]
    return [option, str(value)]


def _argv(config: str | None, flags: dict, parser, where: str) -> list[str]:
    actions = {} if parser is None else {a.dest: a for a in parser._actions}
    argv = [] if config is None else ["--config", os.path.relpath(REPO_ROOT / config)]
    for dest, value in flags.items():
        if parser is not None and dest not in actions:
            raise TableError(f"{where}: unknown flag {dest!r} for this script")
        argv += _tokens(dest, value, actions.get(dest), where)
    return argv


def _resolve(value, done: dict[str, "ResolvedStage"], where: str):
    """Replace ``{stage.name}`` references by that stage's output path or flag value."""
    if not isinstance(value, str):
        return value

    def lookup(ref: str, name: str):
        if ref not in done:
            raise TableError(f"{where}: {{{ref}.{name}}}: no earlier stage {ref!r} "
                             f"(earlier: {', '.join(done) or 'none'})")
        stage = done[ref]
        if name in stage.job.outputs:
            return stage.job.outputs[name]
        if name in stage.values:
            return stage.values[name]
        raise TableError(f"{where}: {{{ref}.{name}}}: stage {ref!r} has no output or flag {name!r} "
                         f"(outputs: {', '.join(stage.job.outputs)})")
    whole = REF_RE.fullmatch(value)
    if whole:
        return lookup(*whole.groups())
    return REF_RE.sub(lambda m: str(lookup(*m.groups())), value)


@dataclass
class ResolvedStage:
    job: Job
    values: dict      # the stage's flag values (every flag when the script's parser is known)


def _values(script: str, config: str | None, argv: list[str], flags: dict, parser, where: str,
            blank) -> dict:
    """The stage's flag values: parsed (and validated) by the script's parser, else the spec's own."""
    if parser is not None:
        args = _parse(_raising(parser, where), argv, where)
        fill = script_hook(script, "fill_defaults")
        if fill is not None:  # defaults that depend on other flags (pretrain_rot.py: -a by --dataset)
            fill(args)
        if SCRIPTS[script].trains:
            _validate(args, where, blank)
        return vars(args)
    raw = {}
    if config is not None:
        with open(REPO_ROOT / config) as f:
            raw = {str(k).replace("-", "_"): v for k, v in (yaml.safe_load(f) or {}).items()}
    return {**raw, **SCRIPTS[script].fixed, **flags}


def _outputs(script: str, folder: str, values: dict, where: str) -> dict[str, str]:
    info = SCRIPTS[script]
    if info.store_fields is None:
        return {"file": os.path.join(folder, info.output_file)}
    name_fields = script_hook(script, "run_name_fields")  # run names that depend on flags (pretrain_rot.py)
    fields = info.store_fields if name_fields is None else name_fields(argparse.Namespace(**values))
    missing = [f for f in fields if f not in values]
    if missing:
        raise TableError(f"{where}: {script} is not in this checkout, so the run name needs {missing[0]!r} set "
                         "explicitly in the spec")
    store = "_".join(str(values[f]) for f in fields)
    log_dir, ckpt_dir = os.path.join(folder, "log", store), os.path.join(folder, "ckpt", store)
    return {"final": os.path.join(log_dir, "final.json"), "checkpoint": os.path.join(ckpt_dir, "ckpt.pth.tar"),
            "best_checkpoint": os.path.join(ckpt_dir, "ckpt.best.pth.tar"), "log_dir": log_dir, "ckpt_dir": ckpt_dir}


def _run_flags(plan: Plan, stage: Stage, seed: int, folder: str, device: str | None) -> dict:
    """The flags reproduce.py sets on every run: seeds, data, outputs (and --epochs/--device when given)."""
    info = SCRIPTS[stage.script]
    flags = {}
    if info.trains:
        if plan.epochs is not None:
            flags["epochs"] = plan.epochs
        flags.update(seed=seed, rand_number=plan.table.rand_number)
        if info.exp_str:
            flags["exp_str"] = f"{plan.table.name}_s{seed}"
        flags.update(root_log=os.path.join(folder, "log"), root_model=os.path.join(folder, "ckpt"))
    else:
        flags.update(output_dir=folder, output_filename=info.output_file)
    if device is not None:
        flags["device"] = device
    flags[info.data_flag] = plan.data_path
    return flags


def _stage_job(plan: Plan, column: Column, row: Row, stage: Stage, seed: int, done: dict, device: str | None,
               unvalidated: set) -> ResolvedStage:
    """The job of one stage of one cell and seed: spec flags (defaults < column < row < stage, references to
    earlier stages resolved), then the run flags; checked by the script's parser when it is present."""
    where = f"{plan.table.path}: row {row.key!r}, column {column.key!r}, stage {stage.name!r} ({stage.script})"
    flags = {}
    for layer in ((plan.table.defaults, column.overrides, row.overrides) if stage.inherit else ()):
        flags.update(_flags_for(layer, stage.script))
    flags.update(_flags_for(stage.overrides, stage.script))
    later_files = [dest for dest, value in flags.items() if REF_RE.search(str(value))]
    flags = {dest: _resolve(value, done, f"{where}: {dest}") for dest, value in flags.items()}
    folder = os.path.join(plan.out, "runs", plan.stem, column.key, row.key, f"seed{seed}", stage.name)
    flags.update(_run_flags(plan, stage, seed, folder, device))
    config = None if stage.config is None else stage.config.replace("{column}", column.key)
    parser = script_parser(stage.script)
    if parser is None:
        unvalidated.add(stage.script)
    argv = _argv(config, flags, parser, where)
    values = _values(stage.script, config, argv, flags, parser, where, later_files)
    job = Job(stage.script, argv, folder, _outputs(stage.script, folder, values, where),
              [s.job for s in done.values()], values.get("epochs") if SCRIPTS[stage.script].trains else None,
              f"{row.key} / {column.key} / seed {seed} / {stage.name}")
    return ResolvedStage(job, values)


def _identity(job: Job) -> tuple:
    return (job.script, tuple(arg.replace(job.dir, "<run>") for arg in job.argv))


def _resume_or_check(job: Job) -> None:
    """A finished run must match the table (same epochs); an interrupted one continues from its checkpoint."""
    if job.finished():
        if job.epochs is not None:
            with open(job.marker) as f:
                ran = json.load(f).get("epochs")
            if ran != job.epochs:
                raise TableError(f"{job.marker} is a finished run of {ran} epochs, but the table asks for "
                                 f"{job.epochs}: delete {job.dir} or choose another --out")
    elif "checkpoint" in job.outputs and os.path.isfile(job.outputs["checkpoint"]):
        job.argv += ["--resume", job.outputs["checkpoint"]]


def expand(table: Table, seeds: list[int], out: str = "results", data_path: str = "./data",
           epochs: int | None = None, device: str | None = None) -> Plan:
    """Every run of the table for ``seeds``: one job per distinct command (runs with identical flags, e.g. a
    pre-training stage shared by several rows, are run once), in dependency order, seed by seed."""
    if epochs is not None and epochs <= 0:
        raise TableError(f"--epochs must be positive, got {epochs}")
    plan = Plan(table, seeds, data_path, epochs, out, [], {}, [])
    unique, unvalidated = {}, set()
    for seed in seeds:
        for column in table.columns:
            for row in table.rows:
                done: dict[str, ResolvedStage] = {}
                for stage in row.stages:
                    resolved = _stage_job(plan, column, row, stage, seed, done, device, unvalidated)
                    key = _identity(resolved.job)
                    if key not in unique:
                        unique[key] = resolved
                        plan.jobs.append(resolved.job)
                    done[stage.name] = unique[key]
                plan.cells.setdefault((row.key, column.key), {})[seed] = done[row.stages[-1].name].job
    plan.unvalidated = sorted(unvalidated)
    for job in plan.jobs:
        _resume_or_check(job)
    return plan


# --------------------------------------------------------------------------------------------- running

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
    missing = sorted({j.script for j in plan.jobs if not j.finished() and not (REPO_ROOT / j.script).is_file()})
    if missing:
        raise TableError(f"{plan.table.path}: needs {', '.join(missing)}, which is not in this checkout")
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


# -------------------------------------------------------------------------------------- aggregation

def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1) over seeds; std is None for a single seed."""
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def read_final(path: str, metric: str) -> dict[str, float]:
    """Our numbers of one finished run in the table's metric: {'last': ..., 'best': ...}."""
    with open(path) as f:
        final = json.load(f)
    convert = METRICS[metric].from_top1
    return {which: convert(float(final[which]["top1"])) for which in ("last", "best")}


def collect(plan: Plan) -> list[dict]:
    """One record per cell: mean/std over the finished seeds of last and best epochs, the paper's number and
    the difference ours - paper (ours = the table's ``compare``: best or last epoch, mean over seeds)."""
    records = []
    for row in plan.table.rows:
        for column in plan.table.columns:
            runs = plan.cells[(row.key, column.key)]
            results = {seed: read_final(job.marker, plan.table.metric) for seed, job in runs.items()
                       if job.finished()}
            last = _mean_std([r["last"] for r in results.values()])
            best = _mean_std([r["best"] for r in results.values()])
            paper = row.paper.get(column.key)
            ours = (best if plan.table.compare == "best" else last)[0]
            records.append({
                "row": row.key, "row_label": row.label, "column": column.key, "column_label": column.label,
                "seeds": sorted(results), "missing_seeds": sorted(set(runs) - set(results)),
                "last_mean": last[0], "last_std": last[1], "best_mean": best[0], "best_std": best[1],
                "paper": paper,
                "diff": (ours - paper.value) if paper and ours is not None else None,
            })
    return records


# ----------------------------------------------------------------------------------------------- report

DASH = "—"


def _num(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def _pm(mean: float | None, std: float | None) -> str:
    return DASH if mean is None else f"{mean:.2f} ± {_num(std)}"


def _paper_text(paper: PaperValue | None) -> str:
    return DASH if paper is None else f"{paper.value:.2f} [{paper.tag}]"


def _signed(value: float | None) -> str:
    return DASH if value is None else f"{value:+.2f}"


def report_markdown(plan: Plan, records: list[dict], result: RunResult | None = None) -> str:
    table, metric = plan.table, METRICS[plan.table.metric]
    finished = sum(job.finished() for job in plan.jobs)
    epochs = ", ".join(map(str, sorted({job.epochs for cell in plan.cells.values() for job in cell.values()
                                        if job.epochs is not None}))) or DASH
    if plan.epochs is not None:
        epochs += " (set by --epochs: NOT the papers' schedule)"
    better = "lower" if metric.lower_is_better else "higher"
    compare = table.compare
    lines = [f"# {table.title}", "",
             f"Metric: {metric.description}, on the full test split; {better} is better.", "",
             "| | |", "|---|---|",
             f"| table spec | `{os.path.relpath(table.path)}` |",
             f"| long-tailed subset seed (`--rand_number`) | {table.rand_number} |",
             f"| training seeds (`--seed`) | {', '.join(map(str, plan.seeds))} |",
             f"| data (`--data_path`) | `{plan.data_path}` |",
             f"| epochs | {epochs} |",
             f"| runs | {finished} of {len(plan.jobs)} finished, under `{os.path.join(plan.out, 'runs', plan.stem)}` |",
             ""]
    if result is not None and result.failed:
        lines += [f"**{len(result.failed)} run(s) failed** (see each run's `output.log`): "
                  + "; ".join(job.label for job in result.failed), ""]
    lines += ["Ours: mean ± sample standard deviation (ddof = 1) over the training seeds that finished "
              f"({DASH} for a single seed). *last* = the final epoch; *best* = the epoch with the highest test "
              f"top-1, i.e. selected on the test set as the papers do. Δ = ours ({compare}) − paper, in the "
              f"metric's units ({'negative' if metric.lower_is_better else 'positive'} = ours better). Paper tags "
              "(SPEC section 7): " + "; ".join(f"[{t}] {d}" for t, d in TAGS.items()) + ".", "",
              f"| method | setting | ours: last | ours: best | seeds | paper | source | Δ ({compare} − paper) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in records:
        paper = r["paper"]
        source = DASH if paper is None else paper.source + (f" ({paper.note})" if paper.note else "")
        lines.append(f"| {r['row_label']} | {r['column_label']} | {_pm(r['last_mean'], r['last_std'])} | "
                     f"{_pm(r['best_mean'], r['best_std'])} | {len(r['seeds'])} | {_paper_text(paper)} | {source} | "
                     f"{_signed(r['diff'])} |")
    by_cell = {(r["row"], r["column"]): r for r in records}
    lines += ["", f"## Grid: ours ({compare}, mean over seeds) / paper", "",
              "| method | " + " | ".join(c.label for c in table.columns) + " |",
              "|---|" + "---|" * len(table.columns)]
    for row in table.rows:
        cells = [by_cell[(row.key, c.key)] for c in table.columns]
        lines.append(f"| {row.label} | " + " | ".join(
            f"{_num(r[compare + '_mean'])} / {_num(r['paper'].value if r['paper'] else None)}" for r in cells)
            + " |")
    incomplete = [r for r in records if r["missing_seeds"]]
    if incomplete:
        lines += ["", "## Not finished", ""] + [
            f"* {r['row_label']}, {r['column_label']}: seed(s) {', '.join(map(str, r['missing_seeds']))}"
            for r in incomplete]
    lines += ["", "## Sources", ""] + [f"* {key}: {text}" for key, text in table.sources.items()]
    if table.notes:
        lines += ["", "## Notes", ""] + [f"* {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["table", "row", "row_label", "column", "column_label", "metric", "n_seeds", "seeds",
              "last_mean", "last_std", "best_mean", "best_std", "paper", "paper_tag", "paper_source",
              "compared", "diff_ours_minus_paper", "rand_number", "data_path", "epochs"]


def _csv_num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def report_rows(plan: Plan, records: list[dict]) -> list[dict]:
    """The CSV rows: numbers with 4 decimals; empty where there is none (std of a single seed, no paper)."""
    rows = []
    for r in records:
        paper = r["paper"]
        rows.append({
            "table": plan.table.name, "row": r["row"], "row_label": r["row_label"], "column": r["column"],
            "column_label": r["column_label"], "metric": plan.table.metric, "n_seeds": len(r["seeds"]),
            "seeds": " ".join(map(str, r["seeds"])),
            **{k: _csv_num(r[k]) for k in ("last_mean", "last_std", "best_mean", "best_std")},
            "compared": plan.table.compare, "diff_ours_minus_paper": _csv_num(r["diff"]),
            "paper": "" if paper is None else f"{paper.value:g}", "paper_tag": "" if paper is None else paper.tag,
            "paper_source": "" if paper is None else paper.source, "rand_number": plan.table.rand_number,
            "data_path": plan.data_path, "epochs": "" if plan.epochs is None else plan.epochs})
    return rows


def write_report(plan: Plan, result: RunResult | None = None) -> tuple[str, str]:
    """Write ``{out}/{stem}.md`` and ``{out}/{stem}.csv``; returns their paths."""
    records = collect(plan)
    os.makedirs(plan.out, exist_ok=True)
    md_path, csv_path = os.path.join(plan.out, f"{plan.stem}.md"), os.path.join(plan.out, f"{plan.stem}.csv")
    atomic_write(md_path, lambda f: f.write(report_markdown(plan, records, result).encode()))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(report_rows(plan, records))
    atomic_write(csv_path, lambda f: f.write(table.getvalue().encode()))
    return md_path, csv_path
