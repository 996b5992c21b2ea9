"""The long-tail profile, the seeded subset draw and the unlabeled size rule (docs/protocols.md#long-tailed-subsets, docs/protocols.md#unlabeled-set).

Profile (Cao et al. 2019, LDAM-DRW; the same in Yang & Xu 2020 and LADE): for C classes, class rank i (0 = head)
keeps n_i = int(img_max * imb_factor**(i/(C-1))) training images, with imb_factor = 1/ρ. The kept images are
drawn as in the upstream code: numpy's legacy global RNG is seeded once with ``rand_number``, then for each class
in rank order its indices are shuffled and the first n_i kept, so for the same data and seed the subset equals the
upstream one. The unlabeled set D_U of the semi-supervised protocol (Yang & Xu 2020) continues on the same RNG
stream with its own profile (``unlabeled_counts``).

Used by every in-memory data set (CIFAR, SVHN, registered ones), the semi-supervised sets and the shifted-prior
evaluation (engine/eval/shifted.py).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

# --imb_type: the exponential and step profiles of Cao et al. 2019, and "none" for the balanced set (which the
# upstream code gave for any other value).
IMB_TYPES = ("exp", "step", "none")


def get_img_num_per_cls(img_max: float, cls_num: int, imb_type: str, imb_factor: float) -> list[int]:
    """Per-class image counts, index = rank (0 = head) (Cao et al. 2019; docs/protocols.md#long-tailed-subsets).

    * ``'exp'``:  n_i = int(img_max * imb_factor**(i / (cls_num - 1))), i = 0..cls_num-1;
    * ``'step'``: the first cls_num//2 classes get int(img_max), the rest int(img_max * imb_factor)
      (upstream lists only 2*(cls_num//2) counts, which drops the last class when cls_num is odd);
    * ``'none'``: int(img_max) for every class.
    """
    if imb_type == "exp":
        return [int(img_max * imb_factor ** (i / (cls_num - 1))) for i in range(cls_num)]
    if imb_type == "step":
        head = cls_num // 2
        return [int(img_max)] * head + [int(img_max * imb_factor)] * (cls_num - head)
    if imb_type == "none":
        return [int(img_max)] * cls_num
    raise ValueError(f"--imb_type must be one of {', '.join(IMB_TYPES)} (none: balanced), got {imb_type!r}")


def check_imb_factor(imb_factor: float, flag: str = "--imb_factor") -> None:
    """Raise ValueError unless imb_factor = 1/ρ lies in (0, 1]."""
    if 0 < imb_factor <= 1:
        return
    hint = f": did you mean {1 / imb_factor:g}?" if imb_factor > 1 else ""
    raise ValueError(f"{flag} is 1/ρ and must be in (0, 1] (0.01 for ρ=100): "
                     f"got {imb_factor:g}{hint}")


def select_per_class(labels: np.ndarray, plan: Iterable[tuple[int, int]]) -> np.ndarray:
    """Indices drawn per class with numpy's global legacy RNG (docs/protocols.md#long-tailed-subsets).

    For each ``(cls, num)`` of ``plan`` in order: idx = np.where(labels == cls)[0];
    np.random.shuffle(idx); keep idx[:num] (all of them when the class has fewer). The caller
    seeds the RNG. Returns the kept indices concatenated class by class (int64).
    """
    kept = []
    for cls, num in plan:
        idx = np.where(labels == cls)[0]
        np.random.shuffle(idx)
        kept.append(idx[:num])
    return np.concatenate(kept).astype(np.int64)


def long_tail_indices(labels: np.ndarray, class_order: Iterable[int], counts: Sequence[int],
                      rand_number: int) -> np.ndarray:
    """``np.random.seed(rand_number)`` then ``select_per_class(labels, zip(class_order, counts))``.

    Leaves the global RNG advanced: the unlabeled draw of the semi-supervised set continues on
    the same stream (docs/protocols.md#unlabeled-set), which is what makes it match upstream.
    """
    np.random.seed(rand_number)
    return select_per_class(labels, zip(class_order, counts))


def unlabeled_num_per_cls(num_labeled: int, cls_num: int, imb_factor_unlabel: float,
                          unlabel_size_factor: float = 5) -> list[int]:
    """Upstream unlabeled size rule (Yang & Xu 2020; docs/protocols.md#unlabeled-set), index = rank (0 = head).

    T = unlabel_size_factor * num_labeled; b = T // C; u_i = int(b * f_U**(i/(C-1)));
    r = T / sum(u); u_i = int(u_i * r) (sums to T or a few less). f_U = imb_factor_unlabel.
    """
    total = unlabel_size_factor * num_labeled
    base = get_img_num_per_cls(total // cls_num, cls_num, "exp", imb_factor_unlabel)
    ratio = total / sum(base)
    return [int(num * ratio) for num in base]


def unlabeled_counts(num_labeled: int, cls_num: int, imb_factor_unlabel: float, unlabel_size_factor: float = 5,
                     unlabeled_max: int | None = None) -> list[int]:
    """|D_U| per class rank: the upstream 5x rule (``unlabeled_num_per_cls``, T = unlabel_size_factor times the
    labeled set's size) or, with ``unlabeled_max``, the DARP/CReST rule u_i = int(unlabeled_max * f_U**(i/(C-1)))."""
    if unlabeled_max is None:
        return unlabeled_num_per_cls(num_labeled, cls_num, imb_factor_unlabel, unlabel_size_factor)
    return get_img_num_per_cls(unlabeled_max, cls_num, "exp", imb_factor_unlabel)


def select_unlabeled(pool_labels: np.ndarray, plan: Iterable[tuple[int, int]]) -> np.ndarray:
    """``select_per_class`` on the pool's reference labels, after checking that every class of
    ``plan`` has enough candidates (label -1 marks pool images that are never candidates)."""
    plan = list(plan)
    short = [(cls, num, int(np.count_nonzero(pool_labels == cls))) for cls, num in plan]
    short = [(cls, num, have) for cls, num, have in short if num > have]
    if short:
        detail = "; ".join(f"class {c}: asked {n}, available {h}" for c, n, h in short)
        raise ValueError(
            f"the unlabeled pool is too small ({detail}). Fix: a smaller --unlabeled_max or "
            "--imb_factor_unlabel (u_i = unlabeled_max * imb_factor_unlabel**(i/(C-1))), "
            "a smaller --labeled_max when the pool is the labeled split's leftovers, "
            "or a larger pool")
    return select_per_class(pool_labels, plan)
