"""Figures of a run folder, drawn from what the run saved: PNG files in ``RUN_DIR/figures/`` and TensorBoard images.

Sources: ``metrics.jsonl`` (one record per epoch), ``final.json`` (``last``, ``best``, optional ``val_selected``
metrics; ``best_epoch``; ``cls_num_list``, ``class_names`` when present), ``args.yaml`` and ``shifted_eval.json``
(engine/eval/shifted.py). Each figure is drawn when its data exist, and skipped with a note otherwise:

* ``curves.png``: per epoch, the training loss and test loss / NLL, train and test top-1, test many/medium/few,
  the learning rate, test ECE and classwise ECE, ECE per shot group; the selected epochs marked (test-selected
  best, last, validation-selected);
* ``per_class_<sel>.png``: each class's test accuracy against its training images (log scale), the shot groups
  of Liu et al. 2019 shaded, for each selection ``sel`` in last / best / val_selected;
* ``confusion_<sel>.png``: the confusion matrix, rows normalised (percent of the true class's test images),
  classes ordered by training images (head first);
* ``reliability_<sel>.png``: the reliability diagram (Guo et al. 2017) of the 15 confidence bins;
* ``shifted.png``: top-1 accuracy on test sets of growing forward and backward imbalance (Hong et al. 2021), with
  and without the target-prior correction.

Figures are ``matplotlib.figure.Figure`` objects rendered by the Agg canvas (no pyplot, no display), so they draw
headless and leave matplotlib's global state alone.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

import matplotlib
import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from engine.eval.metrics import FEW_SHOT, MANY_SHOT
from engine.train.checkpoint import CheckpointError, atomic_write, load_checkpoint
from engine.train.runlog import METRICS, read_records

FOLDER = "figures"
DPI = 100
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 14, "axes.grid": True,
         "grid.alpha": 0.3}
SIZES = {"curves": (15, 9), "per_class": (10, 6), "confusion": (9, 8), "reliability": (7, 8), "shifted": (10, 6),
         "table_column": (10, 6)}
SELECTIONS = {"last": "last epoch", "best": "test-selected best", "val_selected": "validation-selected"}
MARKS = {"best": ("tab:red", "--"), "last": ("0.35", ":"), "val_selected": ("tab:green", "-.")}
GROUPS = (("many", f"many-shot (>{MANY_SHOT})", "tab:blue"),  # (metrics key, label, colour)
          ("medium", f"medium-shot ({FEW_SHOT}-{MANY_SHOT})", "tab:orange"),
          ("few", f"few-shot (<{FEW_SHOT})", "tab:red"))
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
KNOWN_NAMES = {"cifar10": CIFAR10_NAMES}
NAMED_TICKS = 30  # up to this many classes the axes name every class
ANNOTATED_CELLS = 12  # up to this many classes the confusion matrix prints its cells
LOG_LOSS_RATIO = 50  # the loss panel turns to a log scale when its values span more than this factor


@dataclass
class RunFolder:
    """What a run folder holds (None for a file it lacks)."""
    dir: str
    records: list
    final: dict | None
    args: dict | None
    shifted: list | None

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.dir))


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON file ({e}); the run folder is damaged") from None


def load_run(run_dir: str) -> RunFolder:
    """The files of ``run_dir``; ValueError naming the folder when it is not a run folder."""
    if not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir}: no such folder; give a run folder (--root_log/<run name>)")
    metrics, shifted = os.path.join(run_dir, METRICS), os.path.join(run_dir, "shifted_eval.json")
    if not (os.path.isfile(metrics) or os.path.isfile(shifted)):
        raise ValueError(f"{run_dir}: not a run folder: it has neither {METRICS} (written by a training run) nor "
                         "shifted_eval.json (--shifted_eval); give the folder a run wrote (--root_log/<run name>)")
    args_path = os.path.join(run_dir, "args.yaml")
    args = None
    if os.path.isfile(args_path):
        with open(args_path) as f:
            try:
                args = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ValueError(f"{args_path}: not a YAML file ({str(e).splitlines()[0]}); the run folder is "
                                 "damaged") from None
    return RunFolder(run_dir, read_records(metrics) if os.path.isfile(metrics) else [],
                     _read_json(os.path.join(run_dir, "final.json")), args, _read_json(shifted))


def training_counts(run: RunFolder) -> list[int] | None:
    """The training images per class: final.json's ``cls_num_list``, else the one in the run's checkpoint
    (``root_model``/<run name>/ckpt.pth.tar of args.yaml), else None."""
    if run.final and run.final.get("cls_num_list"):
        return list(run.final["cls_num_list"])
    if not run.args or not run.args.get("root_model"):
        return None
    path = os.path.join(run.args["root_model"], run.name, "ckpt.pth.tar")
    try:
        counts = load_checkpoint(path, flag="the run's checkpoint").get("cls_num_list") if os.path.isfile(path) else None
    except CheckpointError:
        return None
    return None if counts is None else [int(n) for n in counts]


def class_labels(run: RunFolder, num_classes: int, class_names: Sequence[str] | None = None) -> list[str]:
    """Class names: those given, else final.json's ``class_names``, else the dataset's known ones, else indices."""
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {run.dir}, whose run has {num_classes} classes")
    dataset = (run.args or {}).get("dataset")
    for candidate in (class_names, (run.final or {}).get("class_names"), KNOWN_NAMES.get(dataset)):
        if candidate is not None and len(candidate) == num_classes:
            return [str(n) for n in candidate]
    return [str(c) for c in range(num_classes)]


def _figure(kind: str) -> Figure:
    fig = Figure(figsize=SIZES[kind], dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _epoch_label(run: RunFolder, sel: str) -> str:
    epoch = selected_epochs(run).get(sel)
    return SELECTIONS[sel] + ("" if epoch is None else f", epoch {epoch + 1}")


def selected_epochs(run: RunFolder) -> dict[str, int]:
    """0-based epochs of the selections final.json names (val_selected only when the run has one)."""
    final = run.final or {}
    out = {}
    for sel in SELECTIONS:
        entry = final.get(sel)
        if isinstance(entry, dict) and entry.get("epoch") is not None:
            out[sel] = int(entry["epoch"])
    if final.get("best_epoch", -1) >= 0:
        out["best"] = int(final["best_epoch"])
    return out


# == training curves ==============================================================================================
def _series(records: list, path: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(1-based epochs, values) of the records holding a number at ``path`` (e.g. ("test", "top1"))."""
    xs, ys = [], []
    for r in records:
        value = r
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            xs.append(r["epoch"] + 1)
            ys.append(value)
    return np.asarray(xs), np.asarray(ys, dtype=float)


CURVE_PANELS = (  # (title, y label, lines: (record path, label, plot keywords))
    ("Loss", "cross-entropy (nats)", ((("train_loss",), "train loss", {}),
                                      (("test", "loss"), "test loss (raw logits)", {}),
                                      # dashed: without a post-hoc adjustment it lies on the test loss
                                      (("test", "nll"), "test NLL (prediction logits)", {"linestyle": "--"}))),
    ("Top-1 accuracy", "accuracy (%)", ((("train_top1",), "train", {}), (("val", "top1"), "validation", {}),
                                        (("test", "top1"), "test", {}))),
    ("Test accuracy per shot group", "accuracy (%)",
     tuple((("test", g), label, {"color": colour}) for g, label, colour in GROUPS)),
    ("Learning rate", "learning rate", ((("lr",), "learning rate", {}),)),
    ("Test calibration", "calibration error (%)", ((("test", "ece"), "ECE (15 bins)", {}),
                                                   (("test", "classwise_ece"), "classwise ECE", {}))),
    ("Test ECE per shot group", "ECE (%)",
     tuple((("test", f"ece_{g}"), label, {"color": colour}) for g, label, colour in GROUPS)),
)


def curves_figure(run: RunFolder) -> Figure:
    fig = _figure("curves")
    axes = fig.subplots(2, 3).flatten()
    marks = selected_epochs(run)
    few_epochs = len(run.records) <= 30
    last = max(r["epoch"] for r in run.records) + 1
    for ax, (title, ylabel, lines) in zip(axes, CURVE_PANELS):
        drawn = 0
        for path, label, style in lines:
            xs, ys = _series(run.records, path)
            if len(xs):
                ax.plot(xs, ys, marker="o" if few_epochs else None, markersize=4, label=label, **style)
                drawn += 1
        for sel, epoch in marks.items():
            colour, style = MARKS[sel]
            ax.axvline(epoch + 1, color=colour, linestyle=style, linewidth=1.5)
        if not drawn:
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", va="center", color="0.4")
        elif len(lines) > 1:
            ax.legend(loc="best")
        low, high = ax.dataLim.intervaly
        if title == "Loss" and low > 0 and high / low > LOG_LOSS_RATIO:
            ax.set_yscale("log")  # a diverging epoch's loss would flatten every other onto the axis
            ylabel += ", log scale"
        ax.set(title=title, xlabel="epoch", ylabel=ylabel, xlim=(0.5, last + 0.5))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [Line2D([], [], color=MARKS[s][0], linestyle=MARKS[s][1], linewidth=1.5,
                                       label=_epoch_label(run, s)) for s in marks]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), title="selected epochs")
    fig.suptitle(f"{run.name}: training curves")
    return fig


# == per-class accuracy ===========================================================================================
def _group_spans(lo: float, hi: float) -> dict[str, tuple[float, float]]:
    """The few / medium / many-shot ranges of training counts (Liu et al. 2019) within [lo, hi]; empty ones left
    out."""
    bounds = {"few": (lo, FEW_SHOT), "medium": (FEW_SHOT, MANY_SHOT), "many": (MANY_SHOT, hi)}
    spans = {g: (max(a, lo), min(b, hi)) for g, (a, b) in bounds.items()}
    return {g: (a, b) for g, (a, b) in spans.items() if a < b}


def per_class_figure(run: RunFolder, sel: str, counts: Sequence[int], names: Sequence[str]) -> Figure:
    metrics = run.final[sel]
    acc = np.array([np.nan if a is None else a for a in metrics["per_class"]], dtype=float)
    # a class without training images (possible in a tiny subset) sits at 0.5 on the log axis
    counts = np.maximum(np.asarray(counts, dtype=float), 0.5)
    fig = _figure("per_class")
    ax = fig.subplots()
    lo, hi = counts.min() / 1.6, counts.max() * 1.6
    spans = _group_spans(lo, hi)
    for group, label, colour in GROUPS:
        if group in spans:
            ax.axvspan(*spans[group], color=colour, alpha=0.1, linewidth=0, label=label)
    ax.scatter(counts, acc, s=36, color="black", zorder=3, label="class")
    for group, label, colour in GROUPS:
        mean = metrics.get(group)
        if mean is not None and group in spans:
            ax.hlines(mean, *spans[group], color=colour, linewidth=2,
                      label=f"{label.split(' ')[0]} mean {mean:.1f}%")
    if len(counts) <= NAMED_TICKS:
        points: dict[tuple, list] = {}  # classes on one point share one label
        for x, y, name in zip(counts, acc, names):
            if np.isfinite(y):
                points.setdefault((x, y), []).append(name)
        for k, ((x, y), at) in enumerate(sorted(points.items())):  # neighbours' labels alternate above / below
            ax.annotate(", ".join(at), (x, y), xytext=(4, 4 if k % 2 == 0 else -13), textcoords="offset points",
                        fontsize=9)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 5, 50, 500 rather than powers of ten
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain if hi / lo < 30 else NullFormatter())  # label 2, 3.. over a short range
    zero = " (0 drawn at 0.5)" if (counts == 0.5).any() else ""
    ax.set(xlim=(lo, hi), ylim=(-5, 105), xlabel=f"training images of the class (log scale){zero}",
           ylabel="test accuracy of the class (%)",
           title=f"{run.name}\nper-class test accuracy, {_epoch_label(run, sel)} (top-1 {metrics['top1']:.2f}%)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# == confusion matrix =============================================================================================
def confusion_figure(run: RunFolder, sel: str, counts: Sequence[int] | None, names: Sequence[str]) -> Figure:
    matrix = np.asarray(run.final[sel]["confusion"], dtype=float)
    num_classes = len(matrix)
    order = np.arange(num_classes) if counts is None else np.argsort(-np.asarray(counts), kind="stable")
    rows = matrix[order][:, order]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = rows / rows.sum(axis=1, keepdims=True) * 100.0
    fig = _figure("confusion")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="0.85")  # grey: a class without test images
    # a square-root scale, so the few-percent confusions of a many-class matrix stay visible
    image = ax.imshow(np.ma.masked_invalid(share), cmap=cmap, norm=PowerNorm(0.5, vmin=0, vmax=100),
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.85, ticks=(0, 5, 10, 20, 40, 60, 80, 100),
                 label="% of the true class's test images (square-root scale)")
    ax.grid(False)
    if num_classes <= NAMED_TICKS:
        ordered = [names[i] for i in order]
        ax.set_xticks(range(num_classes), ordered, rotation=45, ha="right")
        ax.set_yticks(range(num_classes), ordered)
        unit = ""
    else:
        unit = " (rank)" if counts is None else " (rank; 0 = most training images)"
    if num_classes <= ANNOTATED_CELLS:
        for i, j in np.ndindex(num_classes, num_classes):
            if np.isfinite(share[i, j]):
                ax.text(j, i, f"{share[i, j]:.0f}", ha="center", va="center", fontsize=9,
                        color="white" if share[i, j] > 40 else "black")
    rank = "classes in label order" if counts is None else "classes ordered by training images, head first"
    ax.set(xlabel=f"predicted class{unit}", ylabel=f"true class{unit}",
           title=f"{run.name}\nconfusion matrix, {_epoch_label(run, sel)}\nrows normalised; {rank}")
    return fig


# == reliability diagram ==========================================================================================
def reliability_figure(run: RunFolder, sel: str) -> Figure:
    metrics = run.final[sel]
    data = metrics["reliability"]
    bins = data["bins"]
    width = 100.0 / bins
    centres = (np.arange(bins) + 0.5) * width
    count = np.asarray(data["count"], dtype=float)
    acc = np.array([np.nan if a is None else a for a in data["accuracy"]], dtype=float)
    conf = np.array([np.nan if c is None else c for c in data["confidence"]], dtype=float)
    fig = _figure("reliability")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    filled = np.isfinite(acc)  # bins holding samples
    top.bar(centres[filled], acc[filled], width=width, color="tab:blue", edgecolor="black", label="accuracy")
    top.bar(centres[filled], (conf - acc)[filled], bottom=acc[filled], width=width, color="tab:red", alpha=0.35,
            edgecolor="tab:red", hatch="//", label="gap to mean confidence")
    top.plot([0, 100], [0, 100], color="0.3", linestyle="--", label="perfect calibration")
    shots = ", ".join(f"{g} {metrics[f'ece_{g}']:.2f}%" for g, _, _ in GROUPS if metrics.get(f"ece_{g}") is not None)
    top.set(xlim=(0, 100), ylim=(0, 100), ylabel="accuracy in the bin (%)",
            title=f"{run.name}\nreliability diagram, {_epoch_label(run, sel)} ({bins} bins)\n"
                  f"ECE {metrics['ece']:.2f}%, classwise ECE {metrics['classwise_ece']:.2f}%, NLL {metrics['nll']:.3f}"
                  + (f"\nECE per shot group: {shots}" if shots else ""))
    top.legend(loc="upper left")  # an over-confident model leaves the top left empty
    bottom.bar(centres, count, width=width, color="0.5", edgecolor="black")
    bottom.set(xlabel="confidence: largest softmax probability (%)", ylabel="test images")
    return fig


# == shifted test distributions ===================================================================================
def shifted_figure(run: RunFolder) -> Figure:
    rows = run.shifted
    xs = np.arange(len(rows))
    fig = _figure("shifted")
    ax = fig.subplots()
    for key, label, style in (("top1", "plain: argmax z", "-o"),
                              ("top1_prior", "with target-prior correction", "-s")):
        ax.plot(xs, [r[key] for r in rows], style, label=label, markersize=6)
    ticks = [("uniform" if r["direction"] == "uniform" else str(r["imbalance"])) for r in rows]
    ax.set_xticks(xs, ticks)
    middle = next((i for i, r in enumerate(rows) if r["direction"] == "uniform"), None)
    if middle is not None:
        ax.axvline(middle, color="0.5", linestyle=":")
        below = ax.get_xaxis_transform()  # x in data, y in axes units: under the tick labels
        ax.text(middle - 0.3, -0.1, "\u2190 forward long-tailed (head = class 0)", transform=below, ha="right",
                va="top", color="0.3")
        ax.text(middle + 0.3, -0.1, "backward long-tailed (head = last class) \u2192", transform=below, ha="left",
                va="top", color="0.3")
    ax.set(xlabel="imbalance ratio of the test set (largest / smallest class)", ylabel="test top-1 accuracy (%)",
           title=f"{run.name}\naccuracy under shifted test label distributions")
    ax.legend(loc="best")
    return fig


# == all of a run's figures =======================================================================================
def build_figures(run: RunFolder, class_names: Sequence[str] | None = None) -> tuple[dict[str, Figure], list[str]]:
    """({figure name: Figure}, notes on the figures left out and why); ``class_names`` in label order."""
    with matplotlib.rc_context(STYLE):
        return _build(run, class_names)


def _build(run: RunFolder, class_names: Sequence[str] | None) -> tuple[dict[str, Figure], list[str]]:
    figures, notes = {}, []
    if run.records:
        figures["curves"] = curves_figure(run)
    else:
        notes.append(f"curves: no {METRICS}")
    final = run.final or {}
    if not final:
        notes.append("per-class, confusion and reliability figures: no final.json (the run has not finished)")
    counts = training_counts(run) if final else None
    for sel in SELECTIONS:
        if isinstance(final.get(sel), dict) and final[sel].get("per_class"):
            _selection_figures(run, sel, counts, class_names, figures, notes)
    if run.shifted:
        figures["shifted"] = shifted_figure(run)
    return figures, notes


def _selection_figures(run: RunFolder, sel: str, counts: list[int] | None, class_names: Sequence[str] | None,
                       figures: dict, notes: list) -> None:
    """Add the per-class, confusion and reliability figures of final.json's ``sel`` metrics (or why not)."""
    metrics = run.final[sel]
    labels = class_labels(run, len(metrics["per_class"]), class_names)
    counts = counts if counts is not None and len(counts) == len(labels) else None
    if counts is not None:
        figures[f"per_class_{sel}"] = per_class_figure(run, sel, counts, labels)
    else:
        notes.append(f"per_class_{sel}: the training images per class are unknown (no cls_num_list in final.json "
                     "nor in the run's checkpoint)")
    if "confusion" in metrics:
        figures[f"confusion_{sel}"] = confusion_figure(run, sel, counts, labels)
    else:
        notes.append(f"confusion_{sel}: no confusion matrix in final.json")
    if "reliability" in metrics:
        figures[f"reliability_{sel}"] = reliability_figure(run, sel)
    else:
        notes.append(f"reliability_{sel}: no reliability data in final.json")


def render(fig: Figure) -> np.ndarray:
    """The figure as an (H, W, 3) uint8 RGB image, at its size and DPI."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()


def write_figures(run_dir: str, class_names: Sequence[str] | None = None, writer=None, step: int | None = None
                  ) -> tuple[list[str], list[str]]:
    """Draw every figure of ``run_dir`` into ``run_dir/figures/<name>.png``, and when a TensorBoard
    ``SummaryWriter`` is given, add each as the image ``figures/<name>`` (the PNG's pixels) at ``step``; returns
    (paths, notes on the figures left out)."""
    figures, notes = build_figures(load_run(run_dir), class_names)
    folder = os.path.join(run_dir, FOLDER)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = os.path.join(folder, f"{name}.png")
        atomic_write(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=DPI))
        paths.append(path)
        if writer is not None:
            writer.add_image(f"{FOLDER}/{name}", render(fig), global_step=step, dataformats="HWC")
    if writer is not None:
        writer.flush()
    return paths, notes


TABLE_SELECTIONS = (("last", "last epoch", "0.45"), ("val", "validation-selected", "tab:green"),
                    ("best", "test-selected best", "tab:blue"))


def table_column_figure(title: str, metric: str, rows: Sequence[dict]) -> Figure:
    """One column of a reproduced table: per row (method), ours as mean ± sample std over seeds for the last
    epoch, the validation-selected and the test-selected epoch (bars with error bars; a selection no run has is
    left out), and the paper's number as a black diamond. ``rows``: dicts with ``label``, ``paper`` (or None) and
    ``{sel}_mean`` / ``{sel}_std`` for sel in last / val / best."""
    fig = _figure("table_column")
    ax = fig.add_subplot()
    shown = [s for s in TABLE_SELECTIONS if any(r.get(f"{s[0]}_mean") is not None for r in rows)]
    width = 0.8 / max(len(shown), 1)
    y = np.arange(len(rows))
    for k, (sel, label, colour) in enumerate(shown):
        means = [np.nan if r.get(f"{sel}_mean") is None else r[f"{sel}_mean"] for r in rows]
        stds = [0.0 if r.get(f"{sel}_std") is None else r[f"{sel}_std"] for r in rows]
        bars = ax.barh(y + (k - (len(shown) - 1) / 2) * width, means, height=width, xerr=stds, color=colour,
                       alpha=0.85, capsize=3, label=f"ours: {label} (mean ± std over seeds)")
        ax.bar_label(bars, labels=["" if np.isnan(m) else f"{m:.2f}" for m in means], label_type="center",
                     color="white", fontsize=9)
    papers = [(i, r["paper"]) for i, r in enumerate(rows) if r.get("paper") is not None]
    if papers:
        ax.scatter([p for _, p in papers], [i for i, _ in papers], marker="D", color="black", zorder=3, s=36,
                   label="paper")
    ax.set_yticks(y, [r["label"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    ax.set_title(title)
    fig.legend(loc="outside lower center", ncols=2, fontsize=9)
    return fig


def write_table_figure(path: str, title: str, metric: str, rows: Sequence[dict]) -> None:
    fig = table_column_figure(title, metric, rows)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
