"""The training samplers a config names (``sampler: instance | class_aware | sqrt``), from engine.data.samplers.

Epoch length: with ``drop_last`` an epoch is floor(N / B) steps, as the reference loop (which ran
int(N / batch) steps whatever the sampler's nominal length).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from registry import Registry
from engine.data.samplers import ClassAwareSampler, EpochSampler, InstanceSampler, sqrt_sampler


SAMPLERS = Registry("sampler", flag="--sampler")
SAMPLERS.register("instance", lambda labels, seed, samples_per_class: InstanceSampler(len(labels), seed))
SAMPLERS.register("class_aware", ClassAwareSampler)
SAMPLERS.register("sqrt", lambda labels, seed, samples_per_class: sqrt_sampler(labels, seed))


def build_sampler(name: str, labels: Sequence[int], seed: int, samples_per_class: int = 4) -> EpochSampler:
    return SAMPLERS[name](labels, seed, samples_per_class)


def shard_union(shards: Sequence[np.ndarray]) -> np.ndarray:
    """Undo the rank::world interleaving: shards[r] holds items r, r + W, ... of the full sequence."""
    world = len(shards)
    out = np.empty((sum(len(s) for s in shards),) + shards[0].shape[1:], dtype=shards[0].dtype)
    for r, s in enumerate(shards):
        out[r::world] = s
    return out
