"""Pseudo-labels for semi-supervised long-tailed learning (Yang & Xu 2020, sec. 3; SPEC sections 1.2, 1.3, 2.2).

A base classifier trained on the labeled long-tailed set D_L labels the whole unlabeled pool once; the
semi-supervised datasets (imbalance_cifar.SemiSupervisedImbalanceCIFAR10, imbalance_svhn.SemiSupervisedImbalanceSVHN)
draw D_U from the pool and train on D_L with true labels plus D_U with these labels (one round of self-training).

Pools, in pool order (the index a pseudo-label file refers to):
* cifar10, ``tinyimages``: ``data`` of the 80M Tiny Images selection (upstream, withdrawn by its authors);
* cifar10, ``cifar10_train``: the whole CIFAR-10 training split in file order, labeled images included (the
  dataset never selects those), so indices do not depend on the long-tailed draw; the standard stand-in;
* svhn: the ``extra`` split in file order.

Prediction: y_hat = argmax_c z_c, confidence = max_c softmax(z)_c, with z the logits of the test-time input
(x / 255 - mean) / std. With a confidence threshold t, y_hat = -1 where confidence < t.

File formats (``FORMATS``, chosen by the file name's extension; the one reader is
imbalance_cifar.read_pseudo_labels):
* ``.npz`` (this project's default; loads with ``allow_pickle=False``): ``predictions`` int64 (N,),
  ``confidence`` float32 (N,), ``indices`` int64 (N,) pool indices, ``prediction_model`` 0-d unicode array
  (the checkpoint path), and ``ground_truth`` int64 (N,) when the pool has true labels;
* ``.pickle``/``.pkl`` (upstream): a dict with ``extrapolated_targets`` int64 (N,) in pool order,
  ``prediction_model`` str, ``confidence`` float32 (N,), and ``ground_truth`` int64 (N,) when known
  (upstream writes it for SVHN).
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

import imbalance_cifar
import imbalance_svhn
from engine import safe_pickle
from engine.augment import normalization, normalize
from engine.checkpoint import atomic_write
from engine.metrics import eval_outputs

# dataset -> (unlabeled sources the flag may name, the default one; None: the dataset has a single pool)
SOURCES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "cifar10": (imbalance_cifar.UNLABELED_SOURCES, "tinyimages"),
    "svhn": ((), None),
}
# dataset -> stem of the file the semi-supervised dataset reads by default (upstream names)
FILE_STEMS = {"cifar10": "pseudo_labeled_cifar", "svhn": "pseudo_labeled_svhn"}


def add_unlabeled_source_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unlabeled_source", default=None, choices=list(imbalance_cifar.UNLABELED_SOURCES),
                   help="cifar10 only: the unlabeled pool, tinyimages (upstream's 80M Tiny Images selection, "
                        "the default) or cifar10_train (the CIFAR-10 training images the labeled subset leaves "
                        "out, the stand-in); svhn always uses its extra split")


def resolve_source(dataset: str, source: str | None) -> str | None:
    """The pool of ``dataset`` named by --unlabeled_source (None = the dataset's default)."""
    allowed, default = SOURCES[dataset]
    if source is None:
        return default
    if source not in allowed:
        raise ValueError(f"--unlabeled_source {source} is not available for --dataset {dataset} "
                         f"({'choose one of ' + ', '.join(allowed) if allowed else 'it has a single pool'}); "
                         "leave it out")
    return source


def resolve_file(dataset: str, data_path: str, given: str | None, source: str | None) -> str:
    """The pseudo-label file of train_semi.py: ``given``, else ``{data_path}/{stem}.npz`` (gen_pseudolabels.py's
    default) if present, else the upstream ``{data_path}/{stem}.pickle``. FileNotFoundError, saying how to make
    one, when it is absent."""
    candidates = ([given] if given else
                  [os.path.join(data_path, FILE_STEMS[dataset] + ext) for ext in (".npz", ".pickle")])
    found = [path for path in candidates if os.path.isfile(path)]
    if found:
        return found[0]
    flags = "" if source == SOURCES[dataset][1] else f" --unlabeled_source {source}"
    flags += f" --output_dir {os.path.dirname(candidates[0]) or '.'}"
    if given:
        flags += f" --output_filename {os.path.basename(given)}"
    raise FileNotFoundError(
        f"--pseudo_label_file: no file {' or '.join(candidates)}. Make it: train a base classifier on the labeled "
        f"set (python train.py --dataset {dataset} --imb_factor ... --loss_type CE; with --labeled_max: "
        f"train_semi.py --labeled_only and the same flags), then run python "
        f"gen_pseudolabels.py --dataset {dataset} --resume CHECKPOINT --data_dir {data_path}{flags}")


# --------------------------------------------------------------------------------------------- pools

def _tiny_images(data_dir: str, data_filename: str) -> tuple[np.ndarray, None]:
    path = os.path.join(data_dir, data_filename)
    imbalance_cifar.require_files([path], "80M Tiny Images selection (--data_dir/--data_filename)",
                                  "Tiny Images was withdrawn by its authors; use --unlabeled_source "
                                  "cifar10_train instead.")
    return np.ascontiguousarray(imbalance_cifar.load_pickle_dict(path, ["data"])["data"], dtype=np.uint8), None


def _cifar10_train(data_dir: str, data_filename: str) -> tuple[np.ndarray, np.ndarray]:
    return imbalance_cifar.load_unlabeled_pool(data_dir, "cifar10_train")


def _svhn_extra(data_dir: str, data_filename: str) -> tuple[np.ndarray, np.ndarray]:
    return imbalance_svhn.load_unlabeled_pool(data_dir)


# (dataset, source) -> loader(data_dir, data_filename) -> (images uint8 (N, 32, 32, 3), true labels or None)
POOLS: dict[tuple[str, str | None], Callable[[str, str], tuple[np.ndarray, np.ndarray | None]]] = {
    ("cifar10", "tinyimages"): _tiny_images,
    ("cifar10", "cifar10_train"): _cifar10_train,
    ("svhn", None): _svhn_extra,
}


def load_pool(dataset: str, source: str | None, data_dir: str, data_filename: str):
    """(images, true labels or None) of the unlabeled pool, in pool order."""
    return POOLS[(dataset, source)](data_dir, data_filename)


# ---------------------------------------------------------------------------------------- prediction

@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, mean: Sequence[float], std: Sequence[float],
            batch_size: int, progress: bool = True, logit_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Argmax prediction (int64) and max-softmax confidence (float32) of every image, in order.

    Batches of ``batch_size`` uint8 images are copied to the model's device and normalised there (the pool may
    not fit on the device); results stay on the device until the end (one host synchronisation). The forward
    pass is the evaluation's (``engine.metrics.eval_outputs``). ``logit_scale`` multiplies the logits before
    the softmax: LDAM's s for a cosine head, whose raw cosines would give near-uniform confidences.
    """
    device = next(model.parameters()).device
    mean255, std255 = normalization(mean, std, device)
    starts = tqdm(range(0, len(images), batch_size), desc="pseudo-labelling", disable=not progress,
                  dynamic_ncols=True)
    batches = ((normalize(torch.from_numpy(images[s:s + batch_size]).to(device, non_blocking=True)
                          .permute(0, 3, 1, 2), mean255, std255), None) for s in starts)
    predictions, confidences = [], []
    for logits, _ in eval_outputs(model, batches):
        confidence, prediction = (logits * logit_scale).softmax(dim=1).max(dim=1)
        predictions.append(prediction)
        confidences.append(confidence)
    if not predictions:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (torch.cat(predictions).cpu().numpy().astype(np.int64),
            torch.cat(confidences).cpu().numpy().astype(np.float32))


def apply_threshold(predictions: np.ndarray, confidence: np.ndarray, threshold: float | None) -> np.ndarray:
    """``predictions`` with -1 where ``confidence < threshold`` (unchanged when threshold is None)."""
    if threshold is None:
        return predictions
    return np.where(confidence < threshold, -1, predictions).astype(np.int64)


# --------------------------------------------------------------------------------------------- files

def _write_npz(path: str, predictions, confidence, prediction_model, ground_truth) -> None:
    arrays = {"predictions": predictions, "confidence": confidence,
              "indices": np.arange(len(predictions), dtype=np.int64),
              "prediction_model": np.array(str(prediction_model))}
    if ground_truth is not None:
        arrays["ground_truth"] = ground_truth
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _write_pickle(path: str, predictions, confidence, prediction_model, ground_truth) -> None:
    content = {"extrapolated_targets": predictions, "prediction_model": str(prediction_model),
               "confidence": confidence}
    if ground_truth is not None:
        content["ground_truth"] = ground_truth
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    safe_pickle.dump(content, path)


FORMATS: dict[str, Callable] = {".npz": _write_npz, ".pickle": _write_pickle, ".pkl": _write_pickle}


def check_output(path: str, overwrite: bool) -> None:
    """Refuse an unknown extension, or an existing file unless ``overwrite`` (upstream refuses too)."""
    if os.path.splitext(path)[1] not in FORMATS:
        raise ValueError(f"--output_filename {os.path.basename(path)!r}: end it in .npz (this project's format) "
                         "or .pickle/.pkl (the upstream format)")
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path} exists; pass --overwrite to replace it or choose another --output_filename")


def write_pseudo_labels(path: str, predictions: np.ndarray, confidence: np.ndarray, prediction_model: str,
                        ground_truth: np.ndarray | None = None, overwrite: bool = False) -> None:
    """Write one pseudo-label per pool image to ``path`` atomically, in the format of its extension."""
    check_output(path, overwrite)
    ground_truth = None if ground_truth is None else np.asarray(ground_truth, np.int64)
    FORMATS[os.path.splitext(path)[1]](path, np.asarray(predictions, np.int64),
                                       np.asarray(confidence, np.float32), prediction_model, ground_truth)


def describe(predictions: np.ndarray, num_classes: int, ground_truth: np.ndarray | None) -> str:
    """Counts per predicted class, the number below the threshold (-1) and, when the pool has true labels, the
    accuracy of the pseudo-labels that were kept."""
    kept = predictions >= 0
    counts = np.bincount(predictions[kept], minlength=num_classes).tolist()
    line = f"{len(predictions)} pool images; per predicted class {counts}; below threshold {int((~kept).sum())}"
    if ground_truth is not None and kept.any():
        accuracy = 100.0 * float((predictions[kept] == ground_truth[kept]).mean())
        line += f"; pseudo-label accuracy against the true labels {accuracy:.2f}%"
    return line
