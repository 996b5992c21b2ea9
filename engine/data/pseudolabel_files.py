"""Pseudo-label files: the one reader, the one writer and the one file-name resolution (docs/protocols.md#unlabeled-set).

A pseudo-label file holds one prediction per image of an unlabeled pool, in pool order (Yang & Xu 2020: the base
classifier's argmax, -1 where a confidence threshold dropped it). Formats, chosen by the file name's extension:

* ``.npz`` (this project's default; read with ``allow_pickle=False``): ``predictions`` int64 (N,),
  ``confidence`` float32 (N,), ``indices`` int64 (N,) pool indices, ``prediction_model`` 0-d unicode array
  (the checkpoint path), and ``ground_truth`` int64 (N,) when the pool has true labels;
* ``.pickle``/``.pkl`` (upstream): a dict with ``extrapolated_targets`` int64 (N,) in pool order,
  ``prediction_model`` str, ``confidence`` float32 (N,), and ``ground_truth`` int64 (N,) when known
  (upstream writes it for SVHN); read with the restricted unpickler ``engine.data.safe_pickle``.

Default names: ``{data_path}/{stem}.npz`` (what gen_pseudolabels.py writes), else the upstream
``{data_path}/{stem}.pickle``, with the data set's stem (``pseudo_labeled_cifar``, ``pseudo_labeled_svhn``).
"""
from __future__ import annotations

import os
import zipfile
from typing import Callable

import numpy as np

from engine.data import safe_pickle
from engine.train.checkpoint import atomic_write
from engine.data.datafiles import load_pickle_dict

BELOW_THRESHOLD, MISSING = -1, -2
DEFAULT_EXTENSIONS = (".npz", ".pickle")  # the default names, in the order they are looked for


def read_pseudo_labels(path, pool_indices, pool_size, num_classes):
    """Pseudo-labels (int64) of the pool images ``pool_indices``.

    Either format of the module docstring. A prediction of -1 marks an image below gen_pseudolabels.py's
    ``--confidence_threshold``: it is returned as -1 for the caller to drop. A pool image the file does not cover
    is an error.
    """
    if os.fspath(path).endswith(".npz"):
        predictions, covered = read_npz_arrays(path, ("predictions", "indices"))
        if covered.size and (covered.min() < 0 or covered.max() >= pool_size):
            raise ValueError(f"{path}: pool indices outside [0, {pool_size}); was it made for "
                             "another unlabeled pool?")
        lookup = np.full(pool_size, MISSING, np.int64)
        lookup[covered] = predictions
    else:
        lookup = _labels(path, "extrapolated_targets",
                         load_pickle_dict(path, ["extrapolated_targets"])["extrapolated_targets"])
        if len(lookup) != pool_size:
            raise ValueError(f"{path}: {len(lookup)} pseudo-labels for a pool of {pool_size} "
                             "images; was it made for another unlabeled pool?")
    pseudo = lookup[pool_indices]
    invalid = pool_indices[(pseudo < BELOW_THRESHOLD) | (pseudo >= num_classes)]
    if invalid.size:
        raise ValueError(f"{path}: no pseudo-label in 0..{num_classes - 1} for pool indices "
                         f"{invalid[:5].tolist()} ({invalid.size} in all); regenerate it with "
                         "gen_pseudolabels.py over the whole pool")
    return pseudo


def _labels(path, key: str, value) -> np.ndarray:
    """``value`` as int64 labels (N,), else a ValueError naming the file and the key."""
    try:
        labels = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {key!r} is not an array of labels ({e})") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {key!r} is a {labels.dtype} array of shape {labels.shape}, expected one integer "
                         "label per pool image (N,)")
    return labels.astype(np.int64)


def read_npz_arrays(path, keys) -> list[np.ndarray]:
    """The integer arrays ``keys`` of the .npz file ``path``, each (N,) with one N (read with
    ``allow_pickle=False``); a damaged file, a missing key or another shape is a ValueError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            absent = [key for key in keys if key not in archive.files]
            if absent:
                raise ValueError(f"{path}: no array {absent[0]!r} (it holds {archive.files}); write it with "
                                 "gen_pseudolabels.py")
            arrays = [_labels(path, key, archive[key]) for key in keys]
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable .npz file (truncated or another format: {e})") from None
    except ValueError as e:
        if str(e).startswith(f"{path}:"):
            raise
        if "allow_pickle" in str(e):  # numpy's advice there would turn the protection off: not passed on
            raise ValueError(f"{path}: holds pickled Python objects (an object array, or not an .npz archive at "
                             "all), which are never loaded; write plain arrays with gen_pseudolabels.py") from None
        raise ValueError(f"{path}: not a readable .npz file ({e})") from None
    if len({len(a) for a in arrays}) > 1:
        raise ValueError(f"{path}: arrays {list(keys)} differ in length ({[len(a) for a in arrays]})")
    return arrays


def resolve_pseudo_label_file(dataset: str, stem: str, data_path: str, given: str | None = None,
                              source: str | None = None) -> str:
    """``given``, else ``{data_path}/{stem}.npz`` if present, else ``{data_path}/{stem}.pickle``.

    FileNotFoundError, saying how to make one, when it is absent; ``source`` is the --unlabeled_source to name
    in that command (None: the data set's default pool)."""
    candidates = [given] if given else [os.path.join(data_path, stem + ext) for ext in DEFAULT_EXTENSIONS]
    found = [path for path in candidates if os.path.isfile(path)]
    if found:
        return found[0]
    flags = "" if source is None else f" --unlabeled_source {source}"
    flags += f" --output_dir {os.path.dirname(candidates[0]) or '.'}"
    if given:
        flags += f" --output_filename {os.path.basename(given)}"
    raise FileNotFoundError(
        f"--pseudo_label_file: no file {' or '.join(candidates)}. Make it: train a base classifier on the labeled "
        f"set (python train.py --dataset {dataset} --imb_factor ... --loss_type CE; with --labeled_max: "
        f"train_semi.py --labeled_only and the same flags), then run python "
        f"gen_pseudolabels.py --dataset {dataset} --resume CHECKPOINT --data_dir {data_path}{flags}")


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
