"""The compiled training step (--compile) against the eager one: same loss, logits and gradients for every batch
shape, one static graph per shape, and class weights changed in place between epochs (DRW) reach the compiled
step without a recompilation. Runs inductor on the CPU (a C++ compiler is needed)."""
import copy
import shutil

import pytest
import torch
import torch._dynamo
import torch.nn as nn
from torch._dynamo.utils import counters

import losses
from engine.methods import Classification

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="torch.compile on the CPU needs a C++ compiler (g++)")


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def run(method, model, x, y):
    model.zero_grad(set_to_none=True)
    loss, logits = method._loss(x, y)
    loss.backward()
    return loss.detach(), logits.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("loss_type", ["LDAM", "LADE"])
def test_compiled_step_matches_eager_across_shapes_and_weight_changes(loss_type, one_thread):
    counts = [40, 20, 8, 2]
    torch._dynamo.reset()
    counters.clear()
    eager_model, compiled_model = tiny_model(), tiny_model()
    eager = Classification(eager_model, losses.build_loss(loss_type, counts))
    compiled = Classification(compiled_model, losses.build_loss(loss_type, counts), compile_mode="default")
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)) for n in (16, 6, 10)]
    drw = losses.effective_number_weights(counts, 0.9999)
    for weights in (None, drw):  # the DRW switch: weights copied into the loss buffers between epochs
        if weights is not None:
            eager.criterion.set_class_weights(weights)
            compiled.criterion.set_class_weights(weights)
        for x, y in batches:
            ref, out = run(eager, eager_model, x, y), run(compiled, compiled_model, x, y)
            torch.testing.assert_close(out[0], ref[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out[1], ref[1], rtol=1e-4, atol=1e-5)
            for a, b in zip(out[2], ref[2]):
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)  # conv bias before BN: grad ~ 0
    # static shapes: one graph per batch size (no symbolic-shape graph), none added by the weight change
    assert counters["stats"]["unique_graphs"] == 3
    # the weighted loss differs from the unweighted one, so the comparison above saw the new weights
    plain = Classification(copy.deepcopy(eager_model), losses.build_loss(loss_type, counts))
    assert not torch.allclose(plain.forward(*batches[0])[0], eager.forward(*batches[0])[0])
