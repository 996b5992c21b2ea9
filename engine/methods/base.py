"""The ``Method`` base class: the interface between a training method and the loop."""
from __future__ import annotations

import torch
import torch.nn as nn


class Method:
    """One training method: a module to train, its update and its per-epoch training metrics.

    Subclasses implement ``forward(x, y) -> (loss, metric_sums)``: ``metric_sums`` holds, for the batch, the
    sum over samples of each training metric after the first (``metric_names[0]`` is the loss, whose sum
    the base class forms as loss * batch size). The epoch reports each metric's per-sample mean, as
    ``train_<name>`` (``top1`` in percent). A method that needs its own update (several passes, a projection
    after the optimizer step) overrides ``train_step``.

    ``model`` is the module whose weights are checkpointed; ``net`` the one called in the step (the same,
    or its DistributedDataParallel wrapper). ``views``: augmented views of each image the loader must hand
    over (then ``x`` is (B, views, C, H, W)). ``amp``: bf16 autocast of the forward on CUDA.
    """

    views: int = 1
    metric_names: tuple[str, ...] = ("loss", "top1")
    percent_metrics: frozenset[str] = frozenset({"top1"})

    def __init__(self, model: nn.Module, net: nn.Module | None = None, amp: bool = False):
        self.model = model
        self.net = model if net is None else net
        self.amp = amp

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def start_epoch(self, epoch: int) -> None:
        """Called after ``train()`` mode is set and before the epoch's first step (per-epoch class weights...)."""

    def train(self) -> None:
        self.net.train()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError

    def train_step(self, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer
                   ) -> tuple[torch.Tensor, int]:
        """One update; returns the batch's metric sums (float64, on the device, one per ``metric_names``) and its
        number of samples, so the loop never reads a value back per step."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp and self.device.type == "cuda"):
            loss, sums = self.forward(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = y.shape[0]
        return torch.stack([(loss.detach() * n).double(), *(s.double() for s in sums)]), n

    # -- checkpoints -----------------------------------------------------------------------------------------
    def checkpoint_file(self, epochs_done: int) -> str:
        """File name of the checkpoint after ``epochs_done`` epochs (upstream: one file, overwritten)."""
        return "ckpt.pth.tar"

    def state_dict(self) -> dict:
        return self.model.state_dict()
