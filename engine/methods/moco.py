"""MoCo v2 pre-training (He et al. 2020; Chen et al. 2020) as a method: two views, InfoNCE, a key queue."""
from __future__ import annotations

import torch.nn.functional as F

from engine.methods.base import Method


class MoCoMethod(Method):
    """InfoNCE of the query view against its key view and the queue (``engine.moco.MoCo`` holds encoders, queue).

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
