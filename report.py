"""Regenerate the figures of existing run folders from what the runs saved (metrics.jsonl, final.json, args.yaml,
shifted_eval.json), into RUN_DIR/figures/; prints the path of every figure written and why any was left out.

    python report.py log/cifar10_resnet32_LDAM_DRW_exp_0.01_0
    python report.py RUN_DIR [RUN_DIR ...] --class_names names.txt   # one class name a line, in label order

The figures are described in engine/eval/figures.py.
"""
from __future__ import annotations

import argparse

from engine import config
from engine.eval.figures import load_run, write_figures


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run's log folder (--root_log/<run name>)")
    p.add_argument("--class_names", default=None, metavar="FILE",
                   help="text file with one class name a line, in label order (default: final.json's class_names, "
                        "the CIFAR-10 names, else class indices)")
    return p


def read_names(path: str | None) -> list[str] | None:
    if path is None:
        return None
    try:
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise FileNotFoundError(f"--class_names: cannot read {path!r}: {e.strerror}") from None
    if not names:
        raise ValueError(f"--class_names: {path!r} holds no class name; write one name a line")
    return names


def main(argv=None) -> dict[str, list[str]]:
    args = build_parser().parse_args(argv)
    names = read_names(args.class_names)
    for run_dir in args.run_dirs:  # every folder checked before any figure is written
        load_run(run_dir)
    written = {}
    for run_dir in args.run_dirs:
        paths, notes = write_figures(run_dir, names)
        for path in paths:
            print(path)
        for note in notes:
            print(f"=> {run_dir}: left out {note}")
        written[run_dir] = paths
    return written


if __name__ == "__main__":
    config.run_cli(main)
