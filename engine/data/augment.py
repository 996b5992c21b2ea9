"""Batched augmentation on the device, for data held as uint8 tensors.

``crop_flip`` draws the same distribution as torchvision's ``RandomCrop(size, padding=pad)`` followed by
``RandomHorizontalFlip()``: a crop offset uniform in 0..2*pad on each axis of the zero-padded image and a
flip with probability 1/2, independently per image. Crop and flip are a single gather: the flip is folded
into the column index, so a whole batch costs one indexing kernel.
"""
from __future__ import annotations

from typing import Sequence

import torch


def draw_crop_flip(n: int, pad: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (y, x) crop offsets in [0, 2*pad] of shape (n, 2) and flip flags (n,) for ``n`` images."""
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=device)
    flips = torch.randint(0, 2, (n,), generator=generator, device=device, dtype=torch.bool)
    return offsets, flips


def crop_flip(padded: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
              size: int) -> torch.Tensor:
    """Crop ``size`` x ``size`` windows at ``offsets`` from ``padded[index]`` (N, C, H+2p, W+2p), flipping where asked.

    Output (B, C, size, size), same dtype as ``padded``. Equivalent, image for image, to torchvision's
    ``hflip(crop(pad(img), top=offsets[:, 0], left=offsets[:, 1], size, size))`` when the flag is set.
    """
    ar = torch.arange(size, device=padded.device)
    rows = offsets[:, :1] + ar                                        # (B, size)
    cols = offsets[:, 1:] + torch.where(flips[:, None], size - 1 - ar, ar)
    channels = torch.arange(padded.shape[1], device=padded.device)
    return padded[index[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None],
                  cols[:, None, None, :]]


def normalization(mean: Sequence[float], std: Sequence[float], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (255 * mean, 255 * std) as (1, C, 1, 1) device tensors, built once per loader: creating
    them per batch would copy from the host (and wait for the device) at every step."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0,
            torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0)


def normalize(x_uint8: torch.Tensor, mean255: torch.Tensor, std255: torch.Tensor) -> torch.Tensor:
    """(x / 255 - mean) / std per channel, as ``ToTensor`` then ``Normalize``, with constants from
    ``normalization``; returns float32."""
    return (x_uint8.float() - mean255) / std255


def rotate_batch(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate image i of (B, C, H, W) ``x`` by k_i * 90 degrees counter-clockwise (``torch.rot90`` on H, W).

    Square images only. All four rotations are stacked and indexed, so no host synchronisation happens.
    """
    stack = torch.stack([torch.rot90(x, q, dims=(2, 3)) for q in range(4)])
    return stack[k, torch.arange(x.shape[0], device=x.device)]
