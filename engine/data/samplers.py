"""Samplers for ``TorchLoader``: one global order of the N indices per epoch, seeded with (seed, epoch) and
identical on every process; rank r keeps positions r, r + W, r + 2W, ... (W processes). With a per-process
batch b = B / W the union of the processes' k-th batches is the k-th batch of size B of a single-process
run, and a resumed run draws exactly the batches of an unbroken one.

* ``InstanceSampler``: a uniform permutation (instance-balanced).
* ``WeightedSampler``: N draws with replacement by per-sample weights (Resample's class-balanced weights;
  square-root sampling of Kang et al. 2020, Sec. 3, via ``sqrt_sampler``).
* ``ClassAwareSampler``: class-balanced sampling of Shen et al. 2016 as in classifier-balancing / OLTR
  (docs/protocols.md#imagenet-lt-and-inaturalist): walk a shuffled list of classes; at each visited class take ``samples_per_class``
  (4) consecutive indices of that class's shuffled index cycle; a class's cycle reshuffles when exhausted,
  the class list reshuffles after each pass. Each class gets about N / C draws per epoch. (The reference's
  iterators carried over from epoch to epoch; here every epoch restarts from (seed, epoch).)
* ``ShardSampler``: evaluation, dataset order, sharded, nothing dropped.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from torch.utils.data import Sampler

from engine.train import distributed


def epoch_seeds(count: int, seed: int, epoch: int, *more: int) -> np.ndarray:
    """``count`` 63-bit seeds for (seed, epoch, *more) (uint64): distinct tuples give unrelated streams, and the
    first k of ``count`` seeds do not depend on ``count``."""
    return np.random.SeedSequence([seed, epoch, *more]).generate_state(count, dtype=np.uint64) >> np.uint64(1)


def epoch_seed(seed: int, epoch: int, *more: int) -> int:
    """The first of ``epoch_seeds`` for (seed, epoch, *more), a Python int."""
    return int(epoch_seeds(1, seed, epoch, *more)[0])


class EpochSampler(Sampler):
    """Base: ``global_order(rng)`` gives the epoch's N indices; this rank iterates over its shard."""

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def epoch_order(self) -> np.ndarray:
        return self.global_order(np.random.default_rng(epoch_seed(self.seed, self.epoch)))

    def __iter__(self):
        n, world = self.num_samples, distributed.world_size()
        return iter(self.epoch_order()[distributed.rank():n - n % world:world].tolist())

    def __len__(self) -> int:
        return self.num_samples // distributed.world_size()


class InstanceSampler(EpochSampler):
    """Instance-balanced: a uniform random permutation of the training set."""

    def global_order(self, rng):
        return rng.permutation(self.num_samples)


class ClassAwareSampler(EpochSampler):
    """Class-balanced: ``samples_per_class`` consecutive draws from each class in a shuffled class cycle."""

    def __init__(self, labels: Sequence[int], seed: int = 0, samples_per_class: int = 4):
        super().__init__(len(labels), seed)
        self.labels = np.asarray(labels, dtype=np.int64)
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


class WeightedSampler(EpochSampler):
    """N draws with replacement, sample i with probability w_i / sum(w) (class-balanced Resample, square-root)."""

    def __init__(self, weights: Sequence[float], seed: int = 0):
        super().__init__(len(weights), seed)
        w = np.asarray(weights, dtype=np.float64)
        self.p = w / w.sum()

    def global_order(self, rng):
        return rng.choice(self.num_samples, size=self.num_samples, replace=True, p=self.p)


def sqrt_sampler(labels: Sequence[int], seed: int = 0) -> WeightedSampler:
    """Square-root sampling: P(class c) proportional to sqrt(n_c), uniform within a class, with replacement."""
    labels = np.asarray(labels, dtype=np.int64)
    return WeightedSampler(1.0 / np.sqrt(np.bincount(labels)[labels]), seed)  # per sample: sqrt(n_c) / n_c


class ShardSampler(Sampler):
    """Evaluation order: every world_size-th sample from this process's rank, nothing dropped."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        return iter(range(distributed.rank(), self.n, distributed.world_size()))

    def __len__(self) -> int:
        return len(range(distributed.rank(), self.n, distributed.world_size()))


def default_sampler(n: int, train: bool, sample_weights: Sequence[float] | None, seed: int) -> Sampler:
    """Training: a seeded permutation, or weighted draws when ``sample_weights`` is given; evaluation: shards."""
    if not train:
        return ShardSampler(n)
    return InstanceSampler(n, seed) if sample_weights is None else WeightedSampler(sample_weights, seed)
