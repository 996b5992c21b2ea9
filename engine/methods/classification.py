"""Supervised classification: logits = model(x), loss = criterion(logits, y), with a class re-balancing rule."""
from __future__ import annotations

import torch
import torch.nn as nn

from engine.methods.base import Method

HEAD = "fc"


def backbone_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers outside the classifier head ``fc``."""
    return [m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and name.split(".")[0] != HEAD]


class Classification(Method):
    """Cross-entropy-style training of a classifier; training metrics: loss and top-1 on the trained labels.

    ``rule`` (a ``losses.TrainRule``) sets the criterion's class weights at the start of every epoch (DRW...).
    ``compile_mode`` compiles model and loss together with torch.compile (``reduce-overhead`` adds CUDA graphs).
    Shapes are compiled static (``dynamic=False``): an epoch has at most two batch shapes (full and the last
    partial one, the same every epoch), so two specialised graphs cover a run and no image is dropped or padded.
    The class weights live in a buffer updated in place, so the compiled step stays valid when they change.
    ``freeze_bn``: keep the backbone's BatchNorm layers in eval mode during training (classifier re-training on
    frozen features, Kang et al. 2020, with the stage-1 statistics kept).
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, rule=None, *, net: nn.Module | None = None,
                 amp: bool = False, compile_mode: str | None = None, freeze_bn: bool = False):
        super().__init__(model, net, amp)
        self.criterion, self.rule = criterion, rule
        self.frozen_batchnorms = backbone_batchnorms(model) if freeze_bn else []
        self._loss = torch.compile(self._forward, mode=compile_mode, dynamic=False) if compile_mode else self._forward

    def _forward(self, x, y):
        logits = self.net(x)
        return self.criterion(logits, y), logits

    def start_epoch(self, epoch: int) -> None:
        if self.rule is not None:
            self.criterion.set_class_weights(self.rule.class_weights(epoch))

    def train(self) -> None:
        super().train()
        for bn in self.frozen_batchnorms:
            bn.eval()

    def targets(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch and labels actually trained on (a pretext task replaces them)."""
        return x, y

    def forward(self, x, y):
        x, y = self.targets(x, y)
        loss, logits = self._loss(x, y)
        return loss, [(logits.detach().argmax(1) == y).sum()]
