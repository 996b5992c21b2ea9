"""Reproduce a paper's table: run every cell over several training seeds and report ours next to the papers'.

    python reproduce.py ldam_drw_cifar --dry-run            # print every command of the table, stages in order
    python reproduce.py ldam_drw_cifar --jobs 4             # run what is missing, write results/ldam_drw_cifar.{md,csv}
    python reproduce.py ssp_cifar --seeds 1 --epochs 2      # a quick smoke run (report results/ssp_cifar_epochs2.*)
    python reproduce.py path/to/table.yaml

TABLE is a name in configs/tables/ or a spec file (schema: engine/tables/spec.py). Runs go to
OUT/runs/TABLE/COLUMN/ROW/seedS/STAGE/ (each its own output folders and --exp_str, as each script declares in its
RUN = engine.train.runspec.RunSpec(...)); finished runs (final.json or the stage's output file present) are skipped,
interrupted ones resume from their checkpoint.
"""
from __future__ import annotations

import argparse
import shlex
import os
import sys

from engine import config, tables


def build_parser() -> argparse.ArgumentParser:
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", help="table name in configs/tables (e.g. ldam_drw_cifar) or a spec file")
    p.add_argument("--seeds", type=int, default=None,
                   help="number of training seeds: the first N of the spec's list (default: all of them)")
    p.add_argument("--epochs", type=int, default=None,
                   help="override every training stage's epochs (smoke runs; reports are tagged _epochsE)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, one per line, and exit")
    p.add_argument("--jobs", type=int, default=1, help="runs at the same time")
    p.add_argument("--data_path", default="./data", help="dataset folder passed to every run")
    p.add_argument("--out", default="results", help="folder of the runs and the reports")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="--device passed to every training run")
    return p


def main(argv=None) -> tables.RunResult | None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds <= 0:
        parser.error(f"--seeds must be positive, got {args.seeds}")
    if args.jobs <= 0:
        parser.error(f"--jobs must be positive, got {args.jobs}")
    try:
        if os.path.isfile(args.table):
            config.read_yaml(args.table)  # not YAML: one line naming the file and the line, as for configs
        table = tables.load_table(args.table)
        plan = tables.expand(table, tables.pick_seeds(table, args.seeds), args.out, args.data_path, args.epochs,
                             args.device)
        if args.dry_run:
            for job in plan.jobs:
                print(shlex.join(job.command()))
            finished = sum(job.finished() for job in plan.jobs)
            print(f"# {len(plan.jobs)} runs, {finished} already finished (skipped when run)", file=sys.stderr)
            return None
        result = tables.run_plan(plan, args.jobs)
    except (tables.TableError, config.UsageError) as e:
        parser.error(str(e))
    md_path, csv_path = tables.write_report(plan, result)
    print(f"{result.executed} run(s) executed, {result.skipped} already finished, {len(result.failed)} failed, "
          f"{len(result.blocked)} not run; report: {md_path}, {csv_path}")
    return result


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if outcome is not None and (outcome.failed or outcome.blocked) else 0)
