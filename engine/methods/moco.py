"""MoCo v2: momentum contrast (He et al. 2020) with the v2 head and augmentation (Chen et al. 2020).

Notation: f_q is the query encoder (parameters theta_q, trained by SGD), f_k the key encoder (theta_k, no
gradient), Q in R^{dim x K} a FIFO queue of the K most recent keys, t the temperature.

* Momentum update (He et al. 2020, eq. 2): theta_k <- m * theta_k + (1 - m) * theta_q, before the keys of a step
  are computed (parameters only; f_k's BatchNorm statistics come from its own forward passes).
* InfoNCE (He et al. 2020, eq. 1): with q = f_q(x_q) / ||.||, k+ = f_k(x_k) / ||.|| for two views of one
  image, loss = -log exp(q.k+ / t) / (exp(q.k+ / t) + sum_j exp(q.Q_j / t)), i.e. cross-entropy over the
  logits [q.k+, q.Q_1, ..., q.Q_K] / t with target 0.
* Queue: after the step, the keys of the whole (all-process) batch replace the oldest K columns' worth.
* Shuffle-BN (He et al. 2020, sec. 3.3): under DistributedDataParallel the key batch is permuted across
  processes before f_k and un-permuted after, so a process's BatchNorm statistics for keys come from other
  samples than its queries. In a single process a permutation leaves batch statistics unchanged, so it is
  an identity there.
* Split-BN (``bn_splits`` S > 1, for one process; the MoCo authors' single-GPU CIFAR demo does the same):
  every BatchNorm computes its training statistics on S interleaved groups of the batch (sample i in group
  i mod S) as S processes would, so with the key batch permuted the key groups hold other samples than the
  query groups: shuffle-BN without a second GPU. Running statistics are the mean of the groups' updates.
* Head (Chen et al. 2020): with ``mlp`` the encoder's fc becomes Linear(d, d) - ReLU - Linear(d, dim).

The checkpoint layout is the reference's: ``{dir}/moco_ckpt_{epoch:04d}.pth.tar`` with keys
``module.encoder_q.*``, ``module.encoder_k.*``, ``module.queue``, ``module.queue_ptr``, so
``engine.train.checkpoint.load_pretrained_backbone`` (train.py ``--pretrained_model``) and the ImageNet-LT/iNat
loader take ``encoder_q`` without its head.
"""
from __future__ import annotations

import copy
import random
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import ImageFilter

import models
from engine.train import distributed
from engine.methods.base import Method


# -- the pieces, as functions ----------------------------------------------------------------------
@torch.no_grad()
def momentum_update_(key_params: Sequence[torch.Tensor], query_params: Sequence[torch.Tensor], m: float) -> None:
    """theta_k <- m * theta_k + (1 - m) * theta_q, in place (one fused kernel per dtype/device group)."""
    torch._foreach_lerp_(list(key_params), list(query_params), 1.0 - m)


def info_nce_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float):
    """Logits [q.k+, q.Q] / t of shape (B, 1 + K) and the targets (all 0: the positive comes first).

    q, k: (B, dim) L2-normalised; queue: (dim, K) of L2-normalised keys.
    """
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue
    logits = torch.cat([positive, negative], dim=1) / t
    return logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device)


@torch.no_grad()
def enqueue_(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Write ``keys`` (B, dim) into the columns ptr, ptr+1, ... (mod K) of ``queue`` (dim, K); ptr <- (ptr+B) mod K.

    The pointer stays a device tensor, so a step never waits for the host. B <= K.
    """
    size = queue.shape[1]
    index = (ptr + torch.arange(keys.shape[0], device=queue.device)) % size
    queue[:, index] = keys.T.to(queue.dtype)
    ptr.copy_((ptr + keys.shape[0]) % size)


@torch.no_grad()
def gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenation over processes (rank order) of each process's ``t``; ``t`` itself when not distributed."""
    if not distributed.is_initialized():
        return t
    parts = [torch.empty_like(t) for _ in range(distributed.world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of a random permutation of the global batch, and the index that undoes it.

    The permutation is drawn on rank 0 and broadcast, so every process agrees on it.
    """
    full = gather(x)
    perm = torch.randperm(full.shape[0], device=x.device)
    if distributed.is_initialized():
        dist.broadcast(perm, src=0)
    mine = perm.view(distributed.world_size(), -1)[distributed.rank()]
    return full[mine], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """Inverse of ``batch_shuffle``: this process's original samples, in their original order."""
    full = gather(x)
    return full[unshuffle.view(distributed.world_size(), -1)[distributed.rank()]]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises each of ``num_splits`` interleaved groups of the batch with its
    own statistics (group j = samples j, j + S, j + 2S, ...); running statistics move by the mean of the groups'
    updates. Evaluation and the state_dict are BatchNorm2d's, so checkpoints load into plain models."""

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.num_splits
        tracking = self.running_mean is not None
        momentum = self.momentum
        if tracking:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative average, as BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        # (n, c, h, w) -> (n / s, s * c, h, w): channel j * c + k holds channel k of the samples of group j.
        mean = self.running_mean.repeat(s) if tracking else None
        var = self.running_var.repeat(s) if tracking else None
        weight = None if self.weight is None else self.weight.repeat(s)
        bias = None if self.bias is None else self.bias.repeat(s)
        out = F.batch_norm(x.reshape(n // s, s * c, h, w), mean, var, weight, bias, True, momentum or 0.0, self.eps)
        if tracking:
            with torch.no_grad():
                self.running_mean.copy_(mean.view(s, c).mean(0))
                self.running_var.copy_(var.view(s, c).mean(0))
        return out.view(n, c, h, w)


def split_batchnorm_(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d inside ``module`` by a ``SplitBatchNorm2d`` with the same parameters and statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            split = SplitBatchNorm2d(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                     affine=child.affine, track_running_stats=child.track_running_stats)
            tensors = [*child.parameters(), *child.buffers()]
            if tensors:
                split = split.to(tensors[0].device)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            split_batchnorm_(child, num_splits)
    return module


def add_mlp_head(encoder: nn.Module) -> nn.Module:
    """MoCo v2 projection head: fc := Linear(d, d) - ReLU - fc, with d = encoder.feat_dim."""
    d = encoder.feat_dim
    encoder.fc = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), encoder.fc)
    return encoder


# -- the module ------------------------------------------------------------------------------------
class MoCo(nn.Module):
    """Query encoder, momentum key encoder and queue. ``forward(im_q, im_k) -> (logits, targets)``.

    ``encoder`` maps images to ``dim`` outputs (its fc); the key encoder starts as an exact copy. Buffers:
    ``queue`` (dim, K), random unit columns at the start, and ``queue_ptr`` (1,) int64.
    """

    def __init__(self, encoder: nn.Module, dim: int = 128, K: int = 65536, m: float = 0.999, t: float = 0.2):
        super().__init__()
        self.K, self.m, self.t = K, m, t
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def momentum_update(self) -> None:
        momentum_update_(list(self.encoder_k.parameters()), list(self.encoder_q.parameters()), self.m)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self.momentum_update()
            shuffled, unshuffle = batch_shuffle(im_k)
            k = batch_unshuffle(F.normalize(self.encoder_k(shuffled), dim=1), unshuffle)
        logits, targets = info_nce_logits(q, k, self.queue.clone().detach(), self.t)
        enqueue_(self.queue, self.queue_ptr, gather(k))
        return logits, targets


def build_moco(arch: str, dim: int, K: int, m: float, t: float, mlp: bool, bn_splits: int = 1) -> MoCo:
    """MoCo around ``models.build_model(arch, dim)`` (with the v2 MLP head when ``mlp``, Split-BN when
    ``bn_splits`` > 1)."""
    encoder = models.build_model(arch, dim)
    if bn_splits > 1:
        split_batchnorm_(encoder, bn_splits)
    return MoCo(add_mlp_head(encoder) if mlp else encoder, dim, K, m, t)


# -- the two views ---------------------------------------------------------------------------------
class GaussianBlur:
    """PIL Gaussian blur with sigma ~ U[sigma_min, sigma_max] drawn per image (SimCLR; MoCo v2 uses [0.1, 2])."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def moco_v2_augmentation(size: int, mean, std) -> T.Compose:
    """Chen et al. 2020 ('aug-plus'): RandomResizedCrop(size, scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1)
    with p 0.8, RandomGrayscale 0.2, GaussianBlur sigma U[0.1, 2] with p 0.5, horizontal flip, Normalize."""
    return T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0)),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                      T.RandomGrayscale(p=0.2),
                      T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def moco_v1_augmentation(size: int, mean, std) -> T.Compose:
    """He et al. 2020 (``--no-aug-plus``): RandomResizedCrop(size, scale 0.2-1), RandomGrayscale 0.2,
    ColorJitter(0.4, 0.4, 0.4, 0.4), horizontal flip, Normalize."""
    return T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0)), T.RandomGrayscale(p=0.2),
                      T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(mean, std)])


AUGMENTATIONS = {True: moco_v2_augmentation, False: moco_v1_augmentation}  # keyed by --aug-plus


class TwoCropsTransform:
    """Two independent draws of ``transform`` of one image, stacked: a (2, C, H, W) tensor.

    One tensor per sample, so a standard DataLoader batch is (B, 2, C, H, W) and ``MoCoMethod`` splits it.
    """

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img) -> torch.Tensor:
        return torch.stack([self.transform(img), self.transform(img)])


# -- the training method ---------------------------------------------------------------------
class MoCoMethod(Method):
    """InfoNCE of the query view against its key view and the queue (``MoCo`` holds the encoders and the queue).

    ``x`` is (B, 2, C, H, W), the two views of each image; class labels are unused. Training metrics: the loss
    and ``top1``, the share of queries whose positive key scores above every negative (the reference's Acc@1).
    The momentum update of the key encoder and the enqueueing of the keys happen inside ``MoCo.forward``.
    Checkpoints are the reference's: ``moco_ckpt_{epoch:04d}.pth.tar`` with ``module.``-prefixed keys (its
    DistributedDataParallel layout, with or without DDP here).
    """

    views = 2

    def forward(self, x, y):
        im_q, im_k = x.unbind(dim=1)
        logits, targets = self.net(im_q, im_k)
        return F.cross_entropy(logits.float(), targets), [(logits.detach().argmax(1) == targets).sum()]

    def checkpoint_file(self, epochs_done: int) -> str:
        return f"moco_ckpt_{epochs_done:04d}.pth.tar"

    def state_dict(self) -> dict:
        return {"module." + k: v for k, v in self.model.state_dict().items()}
