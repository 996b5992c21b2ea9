"""Expanding a table into jobs: one plain command line per run, in dependency order, with its folder and outputs.

Every run is a plain command line, so any cell can be re-run by hand (``reproduce.py TABLE --dry-run`` prints
them). The run flags (seeds, output folders, data) and the output paths come from the script's own
declaration (``RUN``, engine.train.runspec.RunSpec).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

from engine.train.runspec import RunSpec
from engine.tables.scripts import (REPO_ROOT, Script, TableError, check_values, entry_point, load_script, option,
                                   parse_values)
from engine.tables.spec import REF_RE, Column, Row, Stage, Table, config_file, flags_for


@dataclass(eq=False)
class Job:
    """One run of one script: the exact argv, its folder, its outputs and the runs it waits for."""
    script: str
    argv: list[str]
    dir: str
    outputs: dict[str, str]
    marker: str                     # the output whose existence means the run has finished
    deps: list["Job"]
    epochs: int | None
    label: str

    def finished(self) -> bool:
        return os.path.isfile(self.marker)

    def command(self, python: str = "python") -> list[str]:
        return [python, *entry_point(self.script), *self.argv]


@dataclass
class Plan:
    table: Table
    seeds: list[int]
    data_path: str
    epochs: int | None
    out: str
    jobs: list[Job]                                 # unique runs, each after the runs it needs
    cells: dict[tuple[str, str], dict[int, Job]]    # (row, column) -> seed -> the reported run

    @property
    def stem(self) -> str:
        """Report and run-folder name: the table's, tagged when --epochs shortens the papers' schedule."""
        return self.table.name + (f"_epochs{self.epochs}" if self.epochs is not None else "")


def _tokens(dest: str, value, action: argparse.Action, where: str) -> list[str]:
    """Command-line tokens setting ``dest`` to ``value``, spelled as the script's parser spells the flag."""
    flag = option(action)
    if isinstance(action, argparse.BooleanOptionalAction):
        return [flag] if value else ["--no-" + flag[2:]]
    if isinstance(value, bool) or action.nargs == 0:
        if value == action.const:
            return [flag]
        if value == action.default:
            return []
        raise TableError(f"{where}: {dest}: {value!r} cannot be set from the command line ({flag} is a switch)")
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def _argv(config: str | None, flags: dict, parser: argparse.ArgumentParser, where: str) -> list[str]:
    actions = {a.dest: a for a in parser._actions}
    argv = [] if config is None else [option(actions["config"]), os.path.relpath(REPO_ROOT / config)]
    for dest, value in flags.items():
        if dest not in actions:
            raise TableError(f"{where}: unknown flag {dest!r} for this script")
        argv += _tokens(dest, value, actions[dest], where)
    return argv


@dataclass
class ResolvedStage:
    job: Job
    values: dict      # the stage's flag values (every flag of its script)


def _resolve(value, done: dict[str, ResolvedStage], where: str):
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


def _run_flags(plan: Plan, run: RunSpec, seed: int, folder: str, device: str | None) -> dict:
    """The flags reproduce.py sets on a run, as its script declares: seeds, output folders, data (and
    --epochs/--device when given)."""
    flags = {}
    if run.trains:
        if plan.epochs is not None:
            flags["epochs"] = plan.epochs
        flags["seed"] = seed
    if run.subset_seed:
        flags["rand_number"] = plan.table.rand_number
    if run.exp_str:
        flags["exp_str"] = f"{plan.table.name}_s{seed}"
    flags.update({dest: template.format(run=folder) for dest, template in run.folders.items()})
    flags.update(run.fixed)
    if device is not None:
        flags["device"] = device
    flags["data_path"] = plan.data_path
    return flags


def _check_reserved(flags: dict, run_flags: dict, where: str) -> None:
    """A spec may set --epochs and --device (reproduce.py's options override them), not the other run flags."""
    for dest in flags:
        if dest == "config" or (dest in run_flags and dest not in ("epochs", "device")):
            raise TableError(f"{where}: {dest!r} is set by reproduce.py for every run (seeds come from `seeds`, "
                             "the subset seed from `rand_number`, the data from --data_path, configs from "
                             "`config`); remove it")


def _values(script: Script, parser, argv: list[str], where: str, blank) -> dict:
    """The stage's flag values, parsed and checked by the script's parser and declared checks."""
    values = parse_values(script, parser, argv, where)
    check_values(script, values, where, blank)
    return values


def _stage_job(plan: Plan, column: Column, row: Row, stage: Stage, seed: int, done: dict,
               device: str | None) -> ResolvedStage:
    """The job of one stage of one cell and seed: spec flags (defaults < column < row < stage, references to
    earlier stages resolved), then the run flags; checked by the script's parser."""
    where = f"{plan.table.path}: row {row.key!r}, column {column.key!r}, stage {stage.name!r} ({stage.script})"
    script = load_script(stage.script, where)
    flags = {}
    for layer in ((plan.table.defaults, column.overrides, row.overrides) if stage.inherit else ()):
        flags.update(flags_for(layer, stage.script))
    flags.update(flags_for(stage.overrides, stage.script))
    later_files = [dest for dest, value in flags.items() if REF_RE.search(str(value))]
    flags = {dest: _resolve(value, done, f"{where}: {dest}") for dest, value in flags.items()}
    folder = os.path.join(plan.out, "runs", plan.stem, column.key, row.key, f"seed{seed}", stage.name)
    run_flags = _run_flags(plan, script.run, seed, folder, device)
    _check_reserved(flags, run_flags, where)
    flags.update(run_flags)
    config = None if stage.config is None else config_file(stage.config, column, row.key)
    parser = script.build_parser()
    argv = _argv(config, flags, parser, where)
    values = _values(script, parser, argv, where, later_files)
    outputs = script.run.output_paths(values)
    job = Job(stage.script, argv, folder, outputs, outputs[script.run.marker], [s.job for s in done.values()],
              values.get("epochs") if script.run.trains else None, f"{row.key} / {column.key} / seed {seed} / "
              f"{stage.name}")
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
    plan = Plan(table, seeds, data_path, epochs, out, [], {})
    unique = {}
    for seed in seeds:
        for column in table.columns:
            for row in table.rows:
                done: dict[str, ResolvedStage] = {}
                for stage in row.stages:
                    resolved = _stage_job(plan, column, row, stage, seed, done, device)
                    key = _identity(resolved.job)
                    if key not in unique:
                        unique[key] = resolved
                        plan.jobs.append(resolved.job)
                    done[stage.name] = unique[key]
                plan.cells.setdefault((row.key, column.key), {})[seed] = done[row.stages[-1].name].job
    for job in plan.jobs:
        _resume_or_check(job)
    return plan
