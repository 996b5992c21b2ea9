"""Table specs (configs/tables/*.yaml): the schema, loading and validation.

A table is columns (settings such as dataset x imbalance ratio) times rows (methods). Each (row, column,
training seed) is one run of a script, or a pipeline of runs whose last stage is the reported one
(``pretrain_rot.py -> train.py``; ``train.py -> gen_pseudolabels.py -> train_semi.py``).

Spec schema (unknown keys are errors, named with the file)::

    name: ldam_drw_cifar            # = the file's stem
    title: ...
    sources: {cao2019: "Cao et al. 2019, Table 2"}     # id -> citation, used by `paper` entries
    metric: error                   # error = 100 - top-1 (CIFAR/SVHN papers), accuracy = top-1 (LADE)
    rand_number: 0                  # seed of the long-tailed subset (docs/protocols.md#long-tailed-subsets), the same for every run
    seeds: [0, 1, 2]                # training seeds (--seed); `reproduce.py --seeds N` takes the first N
    compare: best                   # optional: which of ours the difference uses: best (default), last or val
                                    # (the epoch selected on a validation part: needs defaults: {val_split: K})
    notes: [...]                    # optional lines printed in the report
    defaults: {arch: resnet32}      # optional flags for every stage that inherits
    columns:
      - {key: cifar10_exp100, label: "CIFAR-10-LT rho=100", overrides: {dataset: cifar10, imb_factor: 0.01}}
    rows:
      - key: LDAM_DRW
        label: LDAM-DRW
        script: train.py            # single-stage row (default train.py) ...
        config: "configs/ldam_drw/{column}_{row}.yaml"    # optional; {column}, {row} = the column and row keys
        overrides: {loss_type: LDAM, train_rule: DRW}
        stages:                     # ... or a pipeline (then no script/config on the row)
          - {name: pretrain, script: pretrain_rot.py, overrides: {loss_type: CE}}
          - {name: train, script: train.py, overrides: {pretrained_model: "{pretrain.checkpoint}"}}
        paper:
          cifar10_exp100: {value: 22.97, source: cao2019, tag: S, note: optional}

A script is a path from the repository root (``train.py``, ``pretrain_moco.py``, ``imagenet_inat/main.py``) whose
module declares ``RUN`` (engine.train.runspec.RunSpec: its run name, outputs and run flags) and ``build_parser()``.
Flags are the scripts' destination names, as in ``--config`` YAML files. A stage with ``inherit: true`` (the
default) gets ``defaults`` < column ``overrides`` < row ``overrides`` < its own ``overrides``; ``inherit:
false`` gets only its own. In any of these mappings a key naming a script (``train_semi.py: {...}``) holds
flags for that script only. A string ``"{stage.name}"`` is one of an earlier stage's outputs (those its script
declares, e.g. ``checkpoint``, ``best_checkpoint``, ``final``, ``log_dir``, ``ckpt_dir``; ``file`` for
gen_pseudolabels.py) or one of its resolved flags. The seed, the subset seed, the data path, the run name
suffix and the output folders are set by reproduce.py as the script declares, never in a spec.

Tags (docs/protocols.md#confidence-tags): [V] verified in a primary source, [S] secondary source, [R] recalled, unverified.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from engine.tables.scripts import REPO_ROOT, TableError, load_script

TABLES_DIR = REPO_ROOT / "configs" / "tables"


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
    config: str | None              # a template over {column} and {row}
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
    """A flag mapping; keys naming a script hold that script's flags."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise TableError(f"{where}: expected a mapping of flag names to values, got {type(obj).__name__}")
    out = {}
    for raw, value in obj.items():
        key = str(raw) if str(raw).endswith(".py") else str(raw).replace("-", "_")
        if key.endswith(".py"):
            load_script(key, f"{where}: script section")
            out[key] = _overrides(value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def flags_for(overrides: dict, script: str) -> dict:
    """The flags of one mapping that apply to ``script``: the plain ones, then its own section's."""
    plain = {k: v for k, v in overrides.items() if not k.endswith(".py")}
    return {**plain, **overrides.get(script, {})}


def config_file(template: str, column: Column, row_key: str) -> str:
    """A stage's config path for one cell."""
    return template.replace("{column}", column.key).replace("{row}", row_key)


def _config_path(value, where: str, columns, row_key: str) -> str:
    if not isinstance(value, str):
        raise TableError(f"{where}: expected a path relative to the repository root")
    for column in columns:
        path = REPO_ROOT / config_file(value, column, row_key)
        if not path.is_file():
            raise TableError(f"{where}: no config file {path.relative_to(REPO_ROOT)} (column {column.key!r})")
    return value


def _stage(obj, where: str, columns, row_key: str, earlier: list[str]) -> Stage:
    _fields(obj, where, {"name", "script"}, {"config", "overrides", "inherit"})
    script = load_script(obj["script"], f"{where}.script").path
    name = _key(obj["name"], f"{where}.name")
    _require(name not in earlier, f"{where}.name", f"stage {name!r} appears twice")
    overrides = _overrides(obj.get("overrides"), f"{where}.overrides")
    for flag, value in flags_for(overrides, script).items():
        for ref, _ in REF_RE.findall(str(value)):
            _require(ref in earlier, f"{where}.overrides.{flag}",
                     f"{value!r} refers to {ref!r}, which is not an earlier stage (earlier: {earlier or 'none'})")
    inherit = obj.get("inherit", True)
    _require(isinstance(inherit, bool), f"{where}.inherit", f"expected true or false, got {inherit!r}")
    config = obj.get("config")
    return Stage(name, script, None if config is None else _config_path(config, f"{where}.config", columns, row_key),
                 overrides, inherit)


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
        _require(tag in TAGS, f"{here}.tag", f"{tag!r} must be one of {', '.join(TAGS)} (docs/protocols.md#confidence-tags)")
        out[column] = PaperValue(float(value), source, tag, str(entry.get("note", "")))
    return out


def _row(obj, where: str, columns, sources) -> Row:
    _fields(obj, where, {"key", "label"}, {"script", "config", "overrides", "stages", "paper"})
    key = _key(obj["key"], f"{where}.key")
    if "stages" in obj:
        _require("script" not in obj and "config" not in obj, where,
                 "give `script`/`config` on each stage when the row has `stages`")
        stages = []
        for i, stage in enumerate(_list(obj, "stages", where)):
            stages.append(_stage(stage, f"{where}.stages[{i}]", columns, key, [s.name for s in stages]))
    else:
        script = load_script(obj.get("script", "train.py"), f"{where}.script").path
        config = obj.get("config")
        stages = [Stage(Path(script).stem, script,
                        None if config is None else _config_path(config, f"{where}.config", columns, key), {}, True)]
    return Row(key, str(obj["label"]), _overrides(obj.get("overrides"), f"{where}.overrides"), tuple(stages),
               _paper(obj.get("paper"), f"{where}.paper", columns, sources))


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
    """Read and validate a table spec (structure, keys, references, scripts, config files, paper entries)."""
    path = table_path(name_or_path)
    with open(path) as f:
        obj = yaml.safe_load(f)
    _fields(obj, path, {"name", "title", "sources", "metric", "rand_number", "seeds", "columns", "rows"},
            {"notes", "defaults", "compare"})
    _require(obj["name"] == Path(path).stem, f"{path}: name", f"{obj['name']!r} must equal the file name")
    _require(obj["metric"] in METRICS, f"{path}: metric", f"{obj['metric']!r} must be one of {', '.join(METRICS)}")
    compare = obj.get("compare", "best")
    _require(compare in ("best", "last", "val"), f"{path}: compare", f"{compare!r} must be best, last or val")
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
