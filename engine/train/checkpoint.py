"""The one checkpoint format: atomic writes, safe reads, and the key mapping for pre-trained backbones.

A checkpoint is a dict (upstream names kept): ``epoch`` (the next epoch to run), ``arch``, ``state_dict``,
``best_acc1`` (float, percent), ``optimizer``, plus ``args`` (the run's configuration as plain values),
``num_classes``, ``use_norm``, ``best`` (metrics of the best epoch) and ``seed``. Checkpoints released with
the papers (``best_acc1`` as a 0-dim tensor, DataParallel ``module.`` keys) load too, and so do the reference
ImageNet-LT code's ``final_model_checkpoint.pth`` / ``latest_model_checkpoint.pth`` (``from_decoupled_layout``).

Reads use ``torch.load(weights_only=True)``: no pickled code is ever executed.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from typing import Iterable

import torch
import torch.nn as nn

HEAD_KEYS = ("fc", "linear")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class DiskFullError(OSError):
    """The disk cannot hold a file the run must write (errno ENOSPC): the message says how much was needed or
    written and how much is free, ``filename`` is the file or folder (a run failure: the scripts print it as one
    line)."""

    def __init__(self, message: str, path: str):
        super().__init__(errno.ENOSPC, message, path)


def free_bytes(folder: str) -> int:
    return shutil.disk_usage(folder).free


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MB"


def ensure_space(folder: str, needed: int) -> None:
    """Fail before writing when ``folder``'s disk has less than ``needed`` bytes free."""
    os.makedirs(folder, exist_ok=True)
    free = free_bytes(folder)
    if free < needed:
        raise DiskFullError(f"not enough disk space for the next checkpoint: {_mb(free)} free, about {_mb(needed)} "
                            "needed", folder)


def torch_write_failed(error: BaseException) -> bool:
    """torch.save's own error when its zip writer's write fails part-way (a full disk, most likely), which names
    neither the file nor the cause."""
    text = str(error)
    return isinstance(error, RuntimeError) and ("PytorchStreamWriter failed" in text or "unexpected pos" in text)


def _is_disk_full(error: BaseException) -> bool:
    """A write failed for want of space: ENOSPC/EDQUOT, or torch.save's zip writer's own error for it."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return torch_write_failed(error)


def atomic_write(path: str, write) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path``, then rename it over ``path``.

    A crash leaves either the old file or the new one, never a half-written one (a kill may leave the temporary
    ``.tmp-*`` file, which the next run of the folder removes). A full disk is a ``DiskFullError`` naming the
    folder, and the old file stays.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException as e:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.remove(tmp)
        if _is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(f"no space left on the device ({_mb(written)} of the file written, "
                                f"{_mb(free_bytes(folder))} free; the previous file is intact)", path) from e
        raise


def save_checkpoint(state: dict, path: str, best_path: str | None = None) -> None:
    """Write ``state`` to ``path`` atomically; when ``best_path`` is given, copy it there (atomically too)."""
    atomic_write(path, lambda f: torch.save(state, f))
    if best_path is not None:
        copy_file(path, best_path)


def copy_file(source: str, target: str) -> None:
    """Copy ``source`` to ``target`` atomically."""
    with open(source, "rb") as src:
        atomic_write(target, lambda f: shutil.copyfileobj(src, f))


def state_bytes(state) -> int:
    """The bytes of the tensors in ``state`` (nested dicts and lists): what a checkpoint of it takes on disk, less
    a little metadata."""
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def load_checkpoint(path: str, flag: str = "--resume") -> dict:
    """Load a checkpoint on the CPU with ``weights_only=True``; errors name the flag that gave the path and say
    what the file is instead (a CheckpointError, on one line)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: no checkpoint file at {path!r}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{flag}: cannot read {path!r}: not a checkpoint: zero bytes")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"{flag}: cannot read {path!r}: {e.strerror or e}") from e
    except Exception as e:  # a truncated file or a pickle with code both land here
        raise CheckpointError(f"{flag}: cannot read {path!r}: {_load_failure(e)}") from e
    if isinstance(ckpt, dict) and "state_dict" not in ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        ckpt = {"state_dict": ckpt}  # a bare state_dict
    ckpt = from_decoupled_layout(ckpt)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        found = f"a {type(ckpt).__name__}" if not isinstance(ckpt, dict) else f"a dict of {sorted(map(str, ckpt))[:5]}"
        raise CheckpointError(f"{flag}: {path!r} holds no 'state_dict' ({found}): not a checkpoint of this project "
                              "or the reference code")
    weights = ckpt["state_dict"]
    if not (isinstance(weights, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in weights.items())):
        raise CheckpointError(f"{flag}: {path!r}: its 'state_dict' is not a mapping of tensor names to tensors "
                              f"({_kind(weights)}): not a checkpoint of this project or the reference code")
    return ckpt


def _kind(value) -> str:
    """What a value is, for a message: its type, or for a mapping the first entry that is not a named tensor."""
    if not isinstance(value, dict):
        return f"a {type(value).__name__}"
    key, item = next((k, v) for k, v in value.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
    return f"{key!r} is of type {type(item).__name__}"


class CheckpointError(ValueError, RuntimeError):
    """A file given as a checkpoint cannot be used; the message names the flag, the file and why (a user error:
    the scripts print it as one line)."""


def check_resumable(ckpt: dict, path: str, flag: str = "--resume") -> None:
    """Refuse a checkpoint a run cannot continue from: one without an optimizer state or epoch (e.g. a released
    model, or the reference code's final_model_checkpoint.pth)."""
    optimizer, epoch = ckpt.get("optimizer"), ckpt.get("epoch")
    if not (isinstance(optimizer, dict) and {"state", "param_groups"} <= set(optimizer)):
        raise CheckpointError(f"{flag}: {path!r} holds no optimizer state, so training cannot continue from it "
                              "(evaluate it with -e, or start from its weights with --pretrained_model)")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"{flag}: {path!r}: 'epoch' (the next epoch to run) is {epoch!r}, not a "
                              "non-negative integer: not a checkpoint of this project")


def _load_failure(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line. torch's own message suggests
    ``weights_only=False``, i.e. running the file's code: that advice is never passed on."""
    text = str(error)
    if "Weights only load failed" in text:
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
        what = (f"the global {refused.group(1)}" if refused else
                detail.group(1).splitlines()[0].rstrip(".") if detail else "an object that is not a tensor")
        return (f"refused: it holds pickled objects a weights-only checkpoint may not hold ({what}); nothing in "
                "it was run. If you trust its author, re-save its tensors with torch.save(state_dict)")
    first = text.strip().split(". ")[0].splitlines()[0] if text.strip() else ""
    reason = f": {first}" if first and not first.strip("'").isdigit() else ""
    return f"not a readable PyTorch checkpoint (truncated, or a file of another format{reason})"


def from_decoupled_layout(ckpt):
    """A checkpoint of the reference ImageNet-LT / iNaturalist code (Kang et al.'s decoupling code, used by the
    imagenet_inat folder of the SSP paper) as a flat one: ``final_model_checkpoint.pth`` keeps the best weights
    as ``state_dict_best = {'feat_model': ..., 'classifier': ...}`` and ``latest_model_checkpoint.pth`` the
    last ones as ``state_dict``; the two networks' keys (``module.conv1.weight``..., ``module.fc.weight``) are
    merged into one ``state_dict``. Any other checkpoint is returned unchanged."""
    if not isinstance(ckpt, dict):
        return ckpt
    nets = ckpt.get("state_dict_best", ckpt.get("state_dict"))
    if not (isinstance(nets, dict) and all(isinstance(nets.get(k), dict) for k in ("feat_model", "classifier"))):
        return ckpt
    merged = {**strip_prefix(nets["feat_model"], "module."), **strip_prefix(nets["classifier"], "module.")}
    best = ckpt.get("best_acc")  # a fraction there, a percentage here
    return {"state_dict": merged, "best_acc1": None if best is None else 100.0 * float(best)}


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    """Remove ``prefix`` from every key that has it (e.g. DataParallel's ``module.``)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def model_state(ckpt: dict) -> dict:
    """The model weights of a checkpoint with DataParallel/DDP prefixes removed and ``linear`` renamed ``fc``."""
    sd = strip_prefix(ckpt["state_dict"], "module.")
    return {("fc" + k[len("linear"):] if k.startswith("linear.") else k): v for k, v in sd.items()}


def describe(ckpt: dict) -> str:
    """What a checkpoint says it holds, e.g. ``a resnet32 checkpoint (100 classes, cosine head)``."""
    classes = ckpt.get("num_classes")
    head = model_state(ckpt).get("fc.weight")
    if classes is None and head is not None and head.dim() == 2 and "use_norm" in ckpt:  # else ambiguous
        classes = head.shape[1] if ckpt["use_norm"] else head.shape[0]  # a cosine head stores (features, classes)
    details = [f"{classes} classes"] if classes is not None else []
    if "use_norm" in ckpt:
        details.append("cosine head" if ckpt["use_norm"] else "linear head")
    arch = ckpt.get("arch") or "an unrecorded architecture"
    return f"a checkpoint of {arch}" + (f" ({', '.join(details)})" if details else "")


def state_mismatch(own: dict, theirs: dict) -> str:
    """Why the tensors ``theirs`` cannot be loaded strictly into a module whose ``state_dict()`` is ``own``, in
    one line ("" when they can): the tensors of other shapes, the missing ones, the extra ones."""
    shapes = [k for k in theirs if k in own and tuple(theirs[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in theirs]
    extra = [k for k in theirs if k not in own]
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensors differ in shape, e.g. {k} {tuple(theirs[k].shape)} in the file vs "
                     f"{tuple(own[k].shape)} in the model")
    if missing:
        parts.append(f"it lacks {len(missing)} of the model's tensors, e.g. {missing[:3]}")
    if extra:
        parts.append(f"it has {len(extra)} tensors the model lacks, e.g. {extra[:3]}")
    return "; ".join(parts)


def load_model_weights(model: nn.Module, ckpt: dict, flag: str = "--resume") -> None:
    """Load a full model checkpoint strictly; when it does not fit, a CheckpointError saying what the checkpoint
    is and which tensors differ (engine.config checks the scripts' checkpoints this way before a run starts)."""
    sd = model_state(ckpt)
    mismatch = state_mismatch(model.state_dict(), sd)
    if mismatch:
        raise CheckpointError(f"{flag}: {describe(ckpt)} does not fit the model: {mismatch}")
    model.load_state_dict(sd)


def backbone_state(ckpt: dict) -> dict:
    """Backbone weights of a self-supervised checkpoint, whatever wrote it.

    * MoCo (``[module.]encoder_q.*``): the query encoder without its projection head ``encoder_q.fc``;
      the key encoder and the queue are dropped.
    * Rotation or any classifier checkpoint: every key except the head (``fc``/``linear``).
    """
    sd = strip_prefix(ckpt["state_dict"], "module.")
    if any(k.startswith("encoder_q.") for k in sd):
        sd = {k[len("encoder_q."):]: v for k, v in sd.items() if k.startswith("encoder_q.")}
    return {k: v for k, v in sd.items() if k.split(".")[0] not in HEAD_KEYS}


def backbone_fit(own: dict, ckpt: dict, path: str, flag: str = "--pretrained_model",
                 skip: Iterable[str] = HEAD_KEYS) -> tuple[list[str], list[str]]:
    """(keys of ``own`` the checkpoint's backbone gives, keys it leaves fresh) for a model whose ``state_dict()``
    is ``own``. Refuses (CheckpointError) a checkpoint that matches no key, whose matching keys have other shapes,
    or that holds or lacks backbone tensors (another architecture): upstream users silently loaded nothing
    (docs/protocols.md#differences-from-the-upstream-code)."""
    src = backbone_state(ckpt)
    what = f"{flag}: {path!r} ({describe(ckpt)})"
    wrong_shape = [k for k in src if k in own and src[k].shape != own[k].shape]
    if wrong_shape:
        raise CheckpointError(f"{what} is for another architecture: {len(wrong_shape)} tensors differ in shape, "
                              f"e.g. {wrong_shape[0]} {tuple(src[wrong_shape[0]].shape)} vs "
                              f"{tuple(own[wrong_shape[0]].shape)}")
    matched = [k for k in own if k in src]
    foreign = [k for k in src if k not in own]
    if matched and foreign:
        raise CheckpointError(f"{what} has backbone weights the model lacks, e.g. {foreign[:3]}: it was trained "
                              "with another (deeper or different) --arch")
    if not matched:
        raise CheckpointError(f"{what}: no key matches the model (checkpoint keys look like {list(src)[:3]}, the "
                              f"model's like {list(own)[:3]})")
    missing = [k for k in own if k not in src]
    unexpected_backbone = [k for k in missing if k.split(".")[0] not in skip]
    if unexpected_backbone:
        raise CheckpointError(f"{what} lacks backbone weights {unexpected_backbone[:5]}: is it a checkpoint of the "
                              "same --arch?")
    return matched, missing


def load_pretrained_backbone(model: nn.Module, path: str, flag: str = "--pretrained_model",
                             skip: Iterable[str] = HEAD_KEYS) -> dict:
    """Initialise ``model``'s backbone from a self-supervised checkpoint (``backbone_fit``); the classifier stays
    fresh. Returns {'loaded': [...], 'missing': [...]} (keys of the model)."""
    ckpt = load_checkpoint(path, flag)
    matched, missing = backbone_fit(model.state_dict(), ckpt, path, flag, skip)
    src = backbone_state(ckpt)
    model.load_state_dict({k: src[k] for k in matched}, strict=False)
    return {"loaded": matched, "missing": missing}
