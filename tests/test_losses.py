"""Losses and re-balancing rules against hand-derived values."""
import math

import numpy as np
import pytest
import torch

import losses

CIFAR10_RHO100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_ldam_margins_match_spec_example():
    # SPEC section 1.6: CIFAR-10 rho=100 margins.
    expected = [0.158, 0.180, 0.204, 0.232, 0.264, 0.300, 0.341, 0.387, 0.441, 0.500]
    np.testing.assert_allclose(losses.ldam_margins(CIFAR10_RHO100, 0.5), expected, atol=6e-4)  # SPEC rounds to 3 decimals


def test_ldam_margins_hand_derived():
    # n = [16, 1]: 1/n^(1/4) = [1/2, 1], scaled so the largest is max_m = 0.5.
    np.testing.assert_allclose(losses.ldam_margins([16, 1], 0.5), [0.25, 0.5])


def test_ldam_loss_value():
    # z = [0.5, 0.2], y = 0, margins [0.25, 0.5], s = 30: CE([7.5, 6.0], 0) = log(1 + e^-1.5).
    crit = losses.build_loss("LDAM", [16, 1])
    loss = crit(torch.tensor([[0.5, 0.2]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.5)), rel=1e-6)
    # Only the target logit is shifted: for y = 1, CE([15, 30*(0.2-0.5)]) = CE([15, -9], 1) = log(1 + e^24).
    loss = crit(torch.tensor([[0.5, 0.2]]), torch.tensor([1]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(24.0)), rel=1e-6)


def test_ldam_uses_normed_head_and_ce_does_not():
    assert losses.LOSSES["LDAM"].use_norm is True
    assert not getattr(losses.LOSSES["CE"], "use_norm", False)


def test_focal_gamma_one_value():
    # z = [0, 0], y = 0: l = log 2, p = 1/2, (1 - p)^1 * l = log(2) / 2.
    crit = losses.build_loss("Focal", [10, 10])
    assert crit(torch.zeros(1, 2), torch.tensor([0])).item() == pytest.approx(math.log(2) / 2, rel=1e-6)


def test_focal_gamma_zero_is_ce():
    args = losses.default_loss_args()
    args.focal_gamma = 0.0
    z, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert losses.build_loss("Focal", [5, 5, 5], args)(z, y).item() == pytest.approx(
        torch.nn.functional.cross_entropy(z, y).item(), rel=1e-6)


def test_effective_number_weights_hand_derived():
    # beta = 0.5, n = [1, 2]: (1-b)/(1-b^n) = [1, 2/3]; normalised to sum 2: [1.2, 0.8].
    np.testing.assert_allclose(losses.effective_number_weights([1, 2], 0.5), [1.2, 0.8])


def test_effective_number_weights_spec_example():
    expected = [0.0506, 0.0769, 0.1211, 0.195, 0.3188, 0.5246, 0.8683, 1.4426, 2.4092, 3.9927]
    w = losses.effective_number_weights(CIFAR10_RHO100, 0.9999)
    np.testing.assert_allclose(w, expected, atol=6e-4)
    assert w.sum() == pytest.approx(10.0)


def test_drw_switches_at_epoch_160():
    rule = losses.build_train_rule("DRW", CIFAR10_RHO100)
    np.testing.assert_allclose(rule.class_weights(0), np.ones(10))
    np.testing.assert_allclose(rule.class_weights(159), np.ones(10))
    np.testing.assert_allclose(rule.class_weights(160), losses.effective_number_weights(CIFAR10_RHO100, 0.9999))
    # The reference indexed [0, 0.9999] by epoch // 160 and crashed from epoch 320 on; this does not.
    np.testing.assert_allclose(rule.class_weights(400), rule.class_weights(160))
    assert rule.sample_weights(np.arange(10)) is None


def test_reweight_and_resample_rules():
    counts = [4, 1]
    rw = losses.build_train_rule("Reweight", counts)
    np.testing.assert_allclose(rw.class_weights(0), losses.effective_number_weights(counts, 0.9999))
    rs = losses.build_train_rule("Resample", counts)
    assert rs.resample and np.allclose(rs.class_weights(0), 1.0)
    labels = np.array([0, 0, 0, 0, 1])
    w = rs.sample_weights(labels)
    cw = losses.effective_number_weights(counts, 0.9999)
    np.testing.assert_allclose(w, cw[labels])
    # Expected draws per class are balanced up to the effective-number correction.
    per_class = np.bincount(labels, weights=w)
    assert per_class[0] == pytest.approx(per_class[1], rel=1e-3)


def test_weighted_ce_is_weighted_mean_and_updates_in_place():
    crit = losses.build_loss("CE", [3, 1])
    buf = crit.weight
    crit.set_class_weights([1.0, 3.0])
    assert crit.weight is buf  # same tensor: a captured graph keeps seeing it
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    l0 = math.log1p(math.exp(-2.0))
    l1 = math.log1p(math.exp(-1.0))
    assert crit(z, y).item() == pytest.approx((1 * l0 + 3 * l1) / 4, rel=1e-6)


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="--loss_type 'Bogus'"):
        losses.build_loss("Bogus", [1, 2])
    with pytest.raises(ValueError, match="--train_rule 'Bogus'"):
        losses.build_train_rule("Bogus", [1, 2])


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_every_loss_has_finite_gradients(name):
    z = torch.randn(16, 10, requires_grad=True)
    y = torch.randint(0, 10, (16,))
    crit = losses.build_loss(name, CIFAR10_RHO100)
    crit(torch.tanh(z), y).backward()
    assert torch.isfinite(z.grad).all()
