"""Two ways to feed batches, one interface: iterate to get ``(x, y)`` on the device; ``set_epoch(e)``; ``len()``.

* ``DeviceLoader``: the whole uint8 dataset lives on the device (CIFAR, SVHN and their unlabeled sets are
  a few hundred MB at most). Each epoch draws its order (a permutation, or class-balanced sampling with
  replacement), crop offsets and flips on the device in three kernels and crops the whole epoch in one gather
  (uint8, 3 KB per CIFAR image); each batch is a slice plus the normalisation. No worker processes, no
  host-to-device copies, no per-batch host synchronisation.
* ``TorchLoader``: a ``torch.utils.data.DataLoader`` over a torchvision-style dataset (PIL transforms in
  worker processes), for data that does not fit on the device (ImageNet-LT, iNaturalist) and as the
  reference pipeline of the seed repository.

Randomness is drawn from a generator re-seeded from (seed, epoch) at every epoch, so an epoch's batches
do not depend on what ran before it: a resumed run sees exactly the batches of an unbroken one. The torch
loader's transforms draw from the global generators of whichever worker runs them, so each sample comes with
its own seed, drawn from (seed, epoch) for its position in the epoch's global order, and the generators are
seeded with it before the sample is transformed: its augmentation depends neither on the past, nor on the
number of workers, nor on the number of processes.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from engine.train import distributed
from engine.data.augment import crop_flip, draw_crop_flip, normalization, normalize
from engine.data.samplers import default_sampler, epoch_seed, epoch_seeds

AUGMENTATION_STREAM = 0x617567  # (seed, epoch, this): the samples' seeds, a stream apart from the epoch order's


class DeviceLoader:
    """Batches drawn from uint8 images (N, H, W, C) and labels stored once on ``device``.

    train=True: shuffled (or drawn with ``sample_weights``, with replacement, N per epoch) and augmented
    with random crop (zero padding ``pad``) + horizontal flip. train=False: dataset order, no augmentation.
    ``views`` > 1 (training): each image comes as that many independently cropped and flipped views, batches
    x of shape (B, views, C, H, W); the first view is drawn exactly as with ``views=1``.
    Under DistributedDataParallel each process takes every world_size-th sample of the epoch's order.
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int], *, batch_size: int, device: torch.device,
                 mean: Sequence[float], std: Sequence[float], train: bool, pad: int = 4,
                 sample_weights: np.ndarray | None = None, seed: int = 0, drop_last: bool = False,
                 channels_last: bool = False, views: int = 1):
        if views < 1 or (views > 1 and not train):
            raise ValueError(f"DeviceLoader: views must be 1, or more for training, got {views} (train={train})")
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"DeviceLoader needs uint8 images shaped (N, H, W, C), got {images.dtype} {images.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        self.size = x.shape[-1]
        self.pad = pad if train else 0
        self.images = F.pad(x, (self.pad,) * 4).to(device) if self.pad else x.to(device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device)
        self.weights = None if sample_weights is None else torch.as_tensor(sample_weights, dtype=torch.float).to(device)
        self.batch_size, self.device, self.train = batch_size, device, train
        self.mean255, self.std255 = normalization(mean, std, device)
        self.seed, self.drop_last, self.views = seed, drop_last, views
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Samples this process sees per epoch (training drops the remainder; evaluation covers every sample)."""
        n, world, rank = len(self.labels), distributed.world_size(), distributed.rank()
        return n // world if self.train else len(range(rank, n, world))

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_plan(self):
        n = len(self.labels)
        if not self.train:
            return torch.arange(distributed.rank(), n, distributed.world_size(), device=self.device), []
        g = torch.Generator(device=self.device)
        g.manual_seed(epoch_seed(self.seed, self.epoch))
        if self.weights is None:
            order = torch.randperm(n, generator=g, device=self.device)
        else:
            order = torch.multinomial(self.weights, n, replacement=True, generator=g)
        # Augmentation is drawn for the whole epoch before sharding, so processes never crop alike and a
        # DDP run sees the draws of a single-process one.
        draws = [draw_crop_flip(n, self.pad, g, self.device) for _ in range(self.views)]
        shard = slice(distributed.rank(), n - n % distributed.world_size(), distributed.world_size())
        return order[shard], [(offsets[shard], flips[shard]) for offsets, flips in draws]

    def _epoch_images(self, order: torch.Tensor, draws) -> torch.Tensor:
        if not self.train:
            return self.images[order]
        views = [crop_flip(self.images, order, offsets, flips, self.size) for offsets, flips in draws]
        return views[0] if self.views == 1 else torch.stack(views, dim=1)

    def __iter__(self):
        # The epoch's images are cropped and flipped (or, for evaluation, gathered) in one kernel per view, uint8,
        # before the first step; a step then only slices it and normalises the slice.
        order, draws = self._epoch_plan()
        images = self._epoch_images(order, draws)
        labels = self.labels[order]
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            x = normalize(images[sl], self.mean255, self.std255)
            if self.views == 1:
                x = x.contiguous(memory_format=self.memory_format)
            yield x, labels[sl]


class SeededSampler(Sampler):
    """``sampler``'s indices, each paired with its augmentation seed: ``(index, seed)``.

    The seed of the sample at position p of the epoch's global order is the p-th of ``epoch_seeds(.., seed, epoch,
    AUGMENTATION_STREAM)``; rank r of W processes holds positions r, r + W, ... (the samplers' sharding), so a
    sample is augmented alike whatever the number of processes.
    """

    def __init__(self, sampler: Sampler, seed: int):
        self.sampler, self.seed, self.epoch = sampler, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        rank, world = distributed.rank(), distributed.world_size()
        seeds = epoch_seeds(world * len(self.sampler), self.seed, self.epoch, AUGMENTATION_STREAM)[rank::world]
        return zip(self.sampler, seeds.tolist())


class SeededDataset(Dataset):
    """``dataset`` indexed by ``(index, seed)``: torch's CPU generator and Python's ``random`` are seeded with
    ``seed`` before ``dataset[index]`` (torchvision's random transforms draw from the former, MoCo's blur from
    the latter), so an item depends on its seed alone, whichever worker process makes it."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        return self.dataset[index]

    def __getitems__(self, items):
        # A batch at a time (DataLoader calls this when defined), so that the caller's generator states are
        # restored once per batch: with workers=0 the training loop's own draws (MoCo's batch shuffle) are then
        # those of a run with worker processes.
        torch_state, python_state = torch.default_generator.get_state(), random.getstate()
        try:
            return [self[item] for item in items]
        finally:
            torch.default_generator.set_state(torch_state)
            random.setstate(python_state)


class TorchLoader:
    """A DataLoader over ``dataset`` that yields ``(x, y)`` moved to ``device`` (pinned, non-blocking).

    ``sampler``: any sampler with ``set_epoch`` (e.g. a class-aware one); by default a seeded shuffle, or
    weighted drawing when ``sample_weights`` is given; train=False keeps the dataset order (sharded across
    processes under torchrun, nothing dropped). ``seed``: the default order's and the augmentation's
    (``SeededSampler``): an epoch's batches depend on (seed, epoch) alone, for any number of ``workers``.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, device: torch.device, train: bool, workers: int = 4,
                 sample_weights: np.ndarray | None = None, seed: int = 0, drop_last: bool = False,
                 sampler: Sampler | None = None, channels_last: bool = False):
        if sampler is None:
            sampler = default_sampler(len(dataset), train, sample_weights, seed)
        self.sampler, self.device = SeededSampler(sampler, seed), device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # A generator of its own for the workers' base seed (unused: every item is seeded), which DataLoader
        # would otherwise draw from the global one whenever it starts its workers.
        self.loader = DataLoader(SeededDataset(dataset), batch_size=batch_size, sampler=self.sampler,
                                 shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
                                 drop_last=drop_last, persistent_workers=workers > 0, generator=torch.Generator())

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            yield x, y.to(self.device, non_blocking=True)
