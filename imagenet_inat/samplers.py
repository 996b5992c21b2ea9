"""Training samplers for the two-stage recipe, seeded per epoch and sharded across DistributedDataParallel ranks.

Every sampler draws one *global* order of ``N = len(labels)`` indices per epoch from a generator seeded with
(seed, epoch), identical on every rank; rank r keeps positions r, r + W, r + 2W, ... (W ranks). With a
per-rank batch b = B / W, the union of the ranks' k-th batches is exactly the k-th batch of size B of a
single-process run, so a DDP run sees the same samples per step as one process (only BatchNorm statistics
are per rank). With ``drop_last`` an epoch is floor(N / B) steps, as the reference loop (which ran
int(N / batch) steps whatever the sampler's nominal length).

* ``instance``: a uniform permutation (class c drawn with probability n_c / N).
* ``class_aware``: class-balanced sampling of Shen et al. 2016 as in classifier-balancing / OLTR
  (SPEC section 1.11): walk a shuffled list of classes; at each visited class take ``samples_per_class``
  (4) consecutive indices of that class's shuffled index cycle; a class's cycle reshuffles when exhausted,
  the class list reshuffles after each pass. Each class gets about N / C draws per epoch.
* ``sqrt``: square-root sampling (Kang et al. 2020, Sec. 3, q = 1/2): class c with probability
  sqrt(n_c) / sum_j sqrt(n_j), uniform within the class, with replacement.

Difference from the reference: its class-aware iterators carried over from epoch to epoch; here every
epoch restarts from (seed, epoch), so a resumed run draws exactly the batches of an unbroken one.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from torch.utils.data import Sampler

from engine import distributed
from engine.loaders import epoch_seed


class EpochSampler(Sampler):
    """Base: ``global_order(rng)`` gives the epoch's N indices; this rank iterates over its shard."""

    def __init__(self, labels: Sequence[int], seed: int = 0):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def epoch_order(self) -> np.ndarray:
        return self.global_order(np.random.default_rng(epoch_seed(self.seed, self.epoch)))

    def __iter__(self):
        n, world = len(self.labels), distributed.world_size()
        return iter(self.epoch_order()[distributed.rank():n - n % world:world].tolist())

    def __len__(self) -> int:
        return len(self.labels) // distributed.world_size()


class InstanceSampler(EpochSampler):
    """Instance-balanced: a uniform random permutation of the training set."""

    def global_order(self, rng):
        return rng.permutation(len(self.labels))


class ClassAwareSampler(EpochSampler):
    """Class-balanced: ``samples_per_class`` consecutive draws from each class in a shuffled class cycle."""

    def __init__(self, labels: Sequence[int], seed: int = 0, samples_per_class: int = 4):
        super().__init__(labels, seed)
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
        self.samples_per_class = samples_per_class
        self.by_class = [idx for idx in (np.flatnonzero(self.labels == c) for c in range(self.labels.max() + 1))
                         if len(idx)]

    def global_order(self, rng):
        n, k = len(self.labels), self.samples_per_class
        cycles = [rng.permutation(idx) for idx in self.by_class]
        positions = [0] * len(cycles)
        out: list[np.ndarray] = []
        drawn = 0
        while drawn < n:
            for c in rng.permutation(len(cycles)):
                take = self._take(cycles, positions, int(c), k, rng)
                out.append(take)
                drawn += k
                if drawn >= n:
                    break
        return np.concatenate(out)[:n]

    @staticmethod
    def _take(cycles, positions, c, k, rng) -> np.ndarray:
        """Next ``k`` indices of class ``c``'s cycle, reshuffling the class whenever its list runs out."""
        got = []
        while len(got) < k:
            if positions[c] == len(cycles[c]):
                cycles[c], positions[c] = rng.permutation(cycles[c]), 0
            step = min(k - len(got), len(cycles[c]) - positions[c])
            got.extend(cycles[c][positions[c]:positions[c] + step])
            positions[c] += step
        return np.asarray(got, dtype=np.int64)


class SqrtSampler(EpochSampler):
    """Square-root sampling: P(class c) proportional to sqrt(n_c), uniform within a class, with replacement."""

    def global_order(self, rng):
        counts = np.bincount(self.labels)
        p = 1.0 / np.sqrt(counts[self.labels])  # per sample: sqrt(n_c) / n_c
        return rng.choice(len(self.labels), size=len(self.labels), replace=True, p=p / p.sum())


SAMPLERS: dict[str, Callable[..., EpochSampler]] = {
    "instance": lambda labels, seed, samples_per_class: InstanceSampler(labels, seed),
    "class_aware": ClassAwareSampler,
    "sqrt": lambda labels, seed, samples_per_class: SqrtSampler(labels, seed),
}


def build_sampler(name: str, labels: Sequence[int], seed: int, samples_per_class: int = 4) -> EpochSampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name](labels, seed, samples_per_class)


def shard_union(shards: Sequence[np.ndarray]) -> np.ndarray:
    """Undo the rank::world interleaving: shards[r] holds items r, r + W, ... of the full sequence."""
    world = len(shards)
    out = np.empty((sum(len(s) for s in shards),) + shards[0].shape[1:], dtype=shards[0].dtype)
    for r, s in enumerate(shards):
        out[r::world] = s
    return out
