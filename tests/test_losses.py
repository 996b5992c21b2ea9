"""Losses and re-balancing rules against hand-derived values."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import losses
import registry

CIFAR10_RHO100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_ldam_margins_match_spec_example():
    # LDAM margins for CIFAR-10 rho=100 (Cao et al. 2019; docs/protocols.md#ldam).
    expected = [0.158, 0.180, 0.204, 0.232, 0.264, 0.300, 0.341, 0.387, 0.441, 0.500]
    np.testing.assert_allclose(losses.ldam_margins(CIFAR10_RHO100, 0.5), expected, atol=6e-4)  # rounded to 3 decimals


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
    z, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert losses.build_loss("Focal", [5, 5, 5], gamma=0.0)(z, y).item() == pytest.approx(
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


# -- explicit constructors (upstream signatures) ------------------------------------------------------------------

def ldam_by_hand(z, y, counts, max_m, s):
    """Cao et al. 2019, eqs. 12-13 written out: Delta_c = K / n_c^(1/4) with max Delta = max_m; CE(s (z - Delta_y e_y))."""
    raw = [n ** -0.25 for n in counts]
    margins = [max_m * m / max(raw) for m in raw]
    total = 0.0
    for row, label in zip(z, y):
        shifted = [s * (v - (margins[c] if c == label else 0.0)) for c, v in enumerate(row)]
        total += -(shifted[label] - math.log(sum(math.exp(v) for v in shifted)))
    return total / len(z)


def test_ldam_keyword_and_upstream_positional_signatures_match_the_formula():
    counts, z, y = [81, 16, 1], [[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]], [1, 2]
    expected = ldam_by_hand(z, y, counts, max_m=0.5, s=30)
    by_keyword = losses.LDAMLoss(cls_num_list=counts, max_m=0.5, s=30)
    positional = losses.LDAMLoss(counts, 0.5, None, 30)  # upstream LDAM-DRW order: cls_num_list, max_m, weight, s
    for crit in (by_keyword, positional):
        assert crit(torch.tensor(z), torch.tensor(y)).item() == pytest.approx(expected, rel=1e-6)
    assert losses.LDAMLoss(counts, max_m=0.3, s=10)(torch.tensor(z), torch.tensor(y)).item() == \
        pytest.approx(ldam_by_hand(z, y, counts, max_m=0.3, s=10), rel=1e-6)


def test_focal_without_class_counts_is_unweighted_focal_by_hand():
    z, y = torch.tensor([[1.0, -0.5, 0.2], [0.3, 0.3, 2.0]]), torch.tensor([0, 1])
    crit = losses.FocalLoss(gamma=1.0)  # upstream FocalLoss(weight=None, gamma): no class counts needed
    assert crit.weight is None
    ce = [-math.log(math.exp(row[t]) / sum(math.exp(v) for v in row)) for row, t in zip(z.tolist(), y.tolist())]
    by_hand = sum((1 - math.exp(-l)) ** 1.0 * l for l in ce) / len(ce)  # (1 - p)^gamma * CE, p = exp(-CE)
    assert crit(z, y).item() == pytest.approx(by_hand, rel=1e-6)
    with pytest.raises(ValueError, match="weight=torch.ones"):
        crit.set_class_weights([1.0, 1.0, 1.0])


def test_a_given_weight_initialises_the_buffer_updated_in_place():
    weight = torch.tensor([1.0, 3.0])
    crit = losses.FocalLoss(weight, gamma=0.0)
    torch.testing.assert_close(crit.weight, weight)
    buf = crit.weight
    crit.set_class_weights([2.0, 1.0])
    assert crit.weight is buf and crit.weight.tolist() == [2.0, 1.0]
    # build_loss starts every loss at ones(C), so a train rule can update it from the first epoch on
    assert losses.build_loss("Focal", [4, 1]).weight.tolist() == [1.0, 1.0]


def test_build_ignores_keywords_the_entry_does_not_take():
    hparams = dict(max_m=0.3, s=10.0, gamma=2.0, tau=1.5, alpha=0.5, beta=0.5, start_epoch=3, unrelated="x")
    assert losses.build_loss("Focal", [4, 1], **hparams).gamma == 2.0
    ldam = losses.build_loss("LDAM", [16, 1], **hparams)
    assert ldam.s == 10.0 and ldam.margins.tolist() == pytest.approx([0.15, 0.3])
    assert isinstance(losses.build_loss("CE", [4, 1], **hparams), losses.CrossEntropy)
    drw = losses.build_train_rule("DRW", [4, 1], **hparams)
    assert (drw.beta, drw.start_epoch) == (0.5, 3)
    assert type(losses.build_train_rule("None", [4, 1], **hparams)) is losses.TrainRule


# -- flags derived from the declarations --------------------------------------------------------------------------

def test_loss_flags_keep_their_names_defaults_and_reach_the_constructors():
    import train
    from engine import config

    args = config.parse(train.build_parser(), ["--device", "cpu"])
    assert (args.focal_gamma, args.max_m, args.ldam_s, args.beta, args.drw_epoch, args.tau, args.lade_alpha,
            args.remine_lambda) == (1.0, 0.5, 30.0, 0.9999, 160, 1.0, 0.1, 0.01)
    assert isinstance(args.ldam_s, float) and isinstance(args.drw_epoch, int)
    args = config.parse(train.build_parser(), ["--device", "cpu", "--loss_type", "LDAM", "--ldam_s", "10",
                                               "--max_m", "0.3", "--train_rule", "DRW", "--drw_epoch", "7"])
    assert config.registry_kwargs(losses.LOSSES, "LDAM", args) == {"max_m": 0.3, "s": 10.0}
    ldam = config.loss_from_args(args, [16, 1])
    assert ldam.s == 10.0 and ldam.margins.tolist() == pytest.approx([0.15, 0.3])
    assert config.train_rule_from_args(args, [16, 1]).start_epoch == 7


@pytest.fixture
def scratch_losses(monkeypatch):
    """A copy of LOSSES in place of the real one for one test (registrations do not leak into other tests)."""
    scratch = registry.Registry(losses.LOSSES.kind, losses.LOSSES.flag, losses.LOSSES.context)
    for name, target in losses.LOSSES.items():
        scratch.register(name, target)
    monkeypatch.setattr(losses, "LOSSES", scratch)
    return scratch


def test_a_new_loss_keyword_becomes_a_flag_by_itself(scratch_losses):
    import train
    from engine import config

    @scratch_losses.register("Toy")
    class ToyLoss(losses.WeightedLoss):
        flag_names = {"k": "toy_k"}
        flag_help = {"k": "toy exponent"}

        def __init__(self, cls_num_list, k=3, weight=None):
            super().__init__(weight, len(cls_num_list))
            self.k = k

    parser = train.build_parser()
    action = next(a for a in parser._actions if a.dest == "toy_k")
    assert (action.option_strings, action.default, action.type, action.help) == (["--toy_k"], 3, int, "toy exponent")
    args = config.parse(parser, ["--device", "cpu", "--loss_type", "Toy", "--toy_k", "7"])
    crit = config.loss_from_args(args, [4, 1])
    assert isinstance(crit, ToyLoss) and crit.k == 7 and crit.weight.tolist() == [1.0, 1.0]


def test_losses_is_a_leaf_module():
    # imports nothing from engine/ (the import graph is a DAG: engine builds on losses, not the reverse)
    code = "import sys, losses; print(sorted(m for m in sys.modules if m.split('.')[0] in ('engine', 'train')))"
    done = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)),
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
