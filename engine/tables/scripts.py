"""The scripts a table runs: found by path, described by their own ``RUN`` declaration (engine.train.runspec), parsed
and checked with their own parser, and spelled back into command lines.

A script is a file of this repository (``train.py``, ``imagenet_inat/main.py``) whose module defines ``RUN``,
an engine.train.runspec.RunSpec, and ``build_parser()``. Scripts inside a package run as ``python -m PACKAGE.MODULE``.
"""
from __future__ import annotations

import argparse
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine import config as engine_config
from engine.train.runspec import RunSpec

REPO_ROOT = Path(__file__).resolve().parents[2]


class TableError(ValueError):
    """A table spec (or a run it describes) is invalid; the message names the file and the key."""


def module_name(path: str) -> str:
    """``imagenet_inat/main.py`` -> ``imagenet_inat.main``."""
    return path.removesuffix(".py").replace("/", ".")


def entry_point(path: str) -> list[str]:
    """How to start a script: ``-m PACKAGE.MODULE`` inside a package (its imports are package-absolute), else its
    path from the working folder."""
    return ["-m", module_name(path)] if "/" in path else [os.path.relpath(REPO_ROOT / path)]


@dataclass(frozen=True)
class Script:
    path: str                                           # from the repository root
    run: RunSpec
    build_parser: Callable[[], argparse.ArgumentParser]


def load_script(path, where: str) -> Script:
    """The script at ``path`` (from the repository root) and its declaration."""
    if not (isinstance(path, str) and path.endswith(".py") and (REPO_ROOT / path).is_file()):
        raise TableError(f"{where}: unknown script {path!r}: give a script's path from the repository root, e.g. "
                         "train.py or imagenet_inat/main.py")
    module = importlib.import_module(module_name(path))
    run, build = getattr(module, "RUN", None), getattr(module, "build_parser", None)
    if not isinstance(run, RunSpec) or build is None:
        raise TableError(f"{where}: {path} does not declare RUN = engine.train.runspec.RunSpec(...) and build_parser(), "
                         "which reproduce.py needs to set its run flags and find its outputs")
    return Script(path, run, build)


def _raising(parser: argparse.ArgumentParser, where: str) -> argparse.ArgumentParser:
    def error(message):
        raise TableError(f"{where}: {message}")
    parser.error = error
    return parser


def parse_values(script: Script, parser: argparse.ArgumentParser, argv: list[str], where: str) -> dict:
    """The flag values ``argv`` gives ``script`` (its YAML config merged, flag-dependent defaults filled in),
    before the script's own checks."""
    args = engine_config.parse(_raising(parser, where), argv, validate=lambda args: None,
                               translate=script.run.translate)
    return script.run.resolve(vars(args)) if script.run.resolve is not None else vars(args)


def check_values(script: Script, values: dict, where: str, blank) -> None:
    """The script's declared checks (``RunSpec.checks``), except for the files in ``blank``, which earlier stages
    will write, and the device (checked by the script on the machine that runs it)."""
    if script.run.checks is None:
        return
    try:
        script.run.checks(argparse.Namespace(**{**values, **dict.fromkeys(blank, ""), "device": None}))
    except (ValueError, FileNotFoundError) as e:
        raise TableError(f"{where}: {e}") from None


def option(action: argparse.Action) -> str:
    """The spelling of a flag: its long option named as its destination, else its first long option."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    exact = [o for o in longs if o[2:].replace("-", "_") == action.dest]
    return (exact or longs or action.option_strings)[0]


def check_config(script: str, path: str) -> dict:
    """Load the YAML config ``path`` with ``script``'s parser (keys, types, choices) and its declared checks;
    checkpoints it names (--resume, --pretrained_model) are outputs of other runs and need not exist yet."""
    found = load_script(script, path)
    parser = found.build_parser()
    config_flag = option(next(a for a in parser._actions if a.dest == "config"))
    values = parse_values(found, parser, [config_flag, path], path)
    check_values(found, values, path, blank=("resume", "pretrained_model"))
    return values
