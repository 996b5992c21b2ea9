"""Reporting a plan: our mean ± sample std over seeds next to the papers' numbers, as Markdown and CSV."""
from __future__ import annotations

import csv
import io
import json
import os
import statistics

from engine.train.checkpoint import atomic_write
from engine.tables.plan import Plan
from engine.tables.runner import RunResult
from engine.tables.spec import METRICS, TAGS, PaperValue


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1) over seeds; std is None for a single seed."""
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


SELECTIONS = ("last", "val", "best")  # final epoch, selected on the validation part, selected on the test set
FINAL_KEYS = {"last": "last", "val": "val_selected", "best": "best"}


def read_final(path: str, metric: str) -> dict[str, float]:
    """Our numbers of one finished run in the table's metric: {'last': ..., 'best': ...}, and 'val' when the run
    selected an epoch on a validation part (--val_split)."""
    with open(path) as f:
        final = json.load(f)
    convert = METRICS[metric].from_top1
    return {which: convert(float(final[key]["top1"])) for which, key in FINAL_KEYS.items() if final.get(key)}


def collect(plan: Plan) -> list[dict]:
    """One record per cell: mean/std over the finished seeds of last and best epochs, the paper's number and
    the difference ours - paper (ours = the table's ``compare``: best or last epoch, mean over seeds)."""
    records = []
    for row in plan.table.rows:
        for column in plan.table.columns:
            runs = plan.cells[(row.key, column.key)]
            results = {seed: read_final(job.marker, plan.table.metric) for seed, job in runs.items()
                       if job.finished()}
            stats = {which: _mean_std([r[which] for r in results.values() if which in r]) for which in SELECTIONS}
            paper = row.paper.get(column.key)
            ours = stats[plan.table.compare][0]
            records.append({
                "row": row.key, "row_label": row.label, "column": column.key, "column_label": column.label,
                "seeds": sorted(results), "missing_seeds": sorted(set(runs) - set(results)),
                **{f"{which}_{part}": value for which, pair in stats.items() for part, value in zip(("mean", "std"), pair)},
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


SELECTION_LABELS = {"last": "last", "val": "val-selected", "best": "best"}


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
    shown = [w for w in SELECTIONS if w != "val" or any(r["val_mean"] is not None for r in records)]
    lines += ["Ours: mean ± sample standard deviation (ddof = 1) over the training seeds that finished "
              f"({DASH} for a single seed). *last* = the final epoch; "
              + ("*val-selected* = the epoch with the highest top-1 on the validation part held out of the test "
                 "split (`--val_split`), scored on the rest of the test split; " if "val" in shown else "")
              + "*best* = the epoch with the highest test top-1, i.e. selected on the test set as the papers do. "
              f"Δ = ours ({compare}) − paper, in the metric's units "
              f"({'negative' if metric.lower_is_better else 'positive'} = ours better). Paper tags "
              "(docs/protocols.md#confidence-tags): " + "; ".join(f"[{t}] {d}" for t, d in TAGS.items()) + ".", "",
              "| method | setting | " + " | ".join(f"ours: {SELECTION_LABELS[w]}" for w in shown)
              + f" | seeds | paper | source | Δ ({compare} − paper) |",
              "|---|---|" + "---|" * len(shown) + "---|---|---|---|"]
    for r in records:
        paper = r["paper"]
        source = DASH if paper is None else paper.source + (f" ({paper.note})" if paper.note else "")
        lines.append(f"| {r['row_label']} | {r['column_label']} | "
                     + " | ".join(_pm(r[f"{w}_mean"], r[f"{w}_std"]) for w in shown)
                     + f" | {len(r['seeds'])} | {_paper_text(paper)} | {source} | {_signed(r['diff'])} |")
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
              "last_mean", "last_std", "val_mean", "val_std", "best_mean", "best_std", "paper", "paper_tag", "paper_source",
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
            **{k: _csv_num(r[k]) for k in ("last_mean", "last_std", "val_mean", "val_std", "best_mean", "best_std")},
            "compared": plan.table.compare, "diff_ours_minus_paper": _csv_num(r["diff"]),
            "paper": "" if paper is None else f"{paper.value:g}", "paper_tag": "" if paper is None else paper.tag,
            "paper_source": "" if paper is None else paper.source, "rand_number": plan.table.rand_number,
            "data_path": plan.data_path, "epochs": "" if plan.epochs is None else plan.epochs})
    return rows


def results_page(plan: Plan, records: list[dict]) -> str:
    """The Markdown of the table's figures, ``{stem}_figures/<column>.png`` (written by ``write_report``): one per
    column, and under each, every cell's runs linked to their figure folders."""
    metric = METRICS[plan.table.metric].description
    lines = ["", "## Figures", "",
             f"Per column: ours ({', '.join(SELECTION_LABELS.values())}; mean ± sample std over seeds) against the "
             "paper's number (black diamond). Each cell's runs link to the figures their runs drew.", ""]
    for column in plan.table.columns:
        lines += [f"### {column.label}", "", f"![{column.label}: {metric}]({plan.stem}_figures/{column.key}.png)", ""]
        for r in (r for r in records if r["column"] == column.key):
            links = [f"[seed {seed}]({os.path.relpath(os.path.join(os.path.dirname(job.marker), 'figures'), plan.out)})"
                     for seed, job in sorted(plan.cells[(r["row"], column.key)].items()) if job.finished()]
            lines.append(f"* {r['row_label']}: " + (", ".join(links) if links else "no finished run"))
        lines.append("")
    return "\n".join(lines)


def write_figures(plan: Plan, records: list[dict]) -> list[str]:
    """``{out}/{stem}_figures/<column>.png``: each column's rows, ours next to the paper's (engine.eval.figures)."""
    from engine.eval.figures import write_table_figure  # matplotlib is loaded only to draw

    folder = os.path.join(plan.out, f"{plan.stem}_figures")
    os.makedirs(folder, exist_ok=True)
    metric = METRICS[plan.table.metric].description
    paths = []
    for column in plan.table.columns:
        rows = [dict(r, label=r["row_label"], paper=None if r["paper"] is None else r["paper"].value)
                for r in records if r["column"] == column.key]
        paths.append(os.path.join(folder, f"{column.key}.png"))
        write_table_figure(paths[-1], f"{plan.table.title}: {column.label}", metric, rows)
    return paths


def write_report(plan: Plan, result: RunResult | None = None) -> tuple[str, str]:
    """Write ``{out}/{stem}.md`` (with the results page: ``{stem}_figures/``, one figure per column) and
    ``{out}/{stem}.csv``; returns their paths."""
    records = collect(plan)
    os.makedirs(plan.out, exist_ok=True)
    md_path, csv_path = os.path.join(plan.out, f"{plan.stem}.md"), os.path.join(plan.out, f"{plan.stem}.csv")
    write_figures(plan, records)
    page = report_markdown(plan, records, result) + results_page(plan, records)
    atomic_write(md_path, lambda f: f.write(page.encode()))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(report_rows(plan, records))
    atomic_write(csv_path, lambda f: f.write(table.getvalue().encode()))
    return md_path, csv_path
