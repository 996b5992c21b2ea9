"""LADE, logit-adjusted loss, Balanced Softmax and post-hoc corrections against hand-derived values."""
import math
import os

import numpy as np
import pytest
import torch

import losses
import train
from engine import config
from engine.train.checkpoint import load_checkpoint

CONFIG_DIRS = [os.path.join(os.path.dirname(__file__), "..", "configs", d) for d in ("lade", "logit_adjustment")]


def ce(z, y):
    """-log softmax(z)_y for a list z."""
    return -(z[y] - math.log(sum(math.exp(v) for v in z)))


# -- LA and Balanced Softmax --------------------------------------------------------------------------------------

def test_la_loss_hand_values():
    # counts [3, 1]: pi = [3/4, 1/4]. z = 0, y = 1: softmax(log pi) = pi, so the loss is -log(1/4) = log 4.
    z, y = torch.zeros(1, 2), torch.tensor([1])
    assert losses.build_loss("LA", [3, 1], tau=1.0)(z, y).item() == pytest.approx(math.log(4), rel=1e-6)
    # tau = 2: z + 2 log pi = log([9/16, 1/16]), p_1 = (1/16) / (10/16) = 1/10, loss log 10.
    assert losses.build_loss("LA", [3, 1], tau=2.0)(z, y).item() == pytest.approx(math.log(10), rel=1e-6)
    # tau = 0 is plain cross-entropy: log 2.
    assert losses.build_loss("LA", [3, 1], tau=0.0)(z, y).item() == pytest.approx(math.log(2), rel=1e-6)


def test_balanced_softmax_hand_value():
    # counts [1, 1, 2]: pi = [1/4, 1/4, 1/2]. z = [1, 0, 0], y = 0: CE([1 + log 1/4, log 1/4, log 1/2], 0).
    z = [1 + math.log(0.25), math.log(0.25), math.log(0.5)]
    loss = losses.build_loss("BalancedSoftmax", [1, 1, 2])(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(ce(z, 0), rel=1e-6)
    assert ce(z, 0) == pytest.approx(-math.log(math.e / (math.e + 1 + 2)))  # = -log(e n_0 / (e n_0 + n_1 + n_2))


def test_balanced_softmax_refuses_an_empty_class():
    with pytest.raises(ValueError, match="--loss_type LA"):
        losses.build_loss("BalancedSoftmax", [5, 0, 1])


def test_la_tau1_equals_balanced_softmax_equals_lade_ce():
    counts = [int(500 * 0.01 ** (i / 99)) for i in range(100)]  # CIFAR-100-LT rho=100, min 5
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(64, 100, generator=g) * 3, torch.randint(0, 100, (64,), generator=g)
    la = losses.build_loss("LA", counts, tau=1.0)
    bs = losses.build_loss("BalancedSoftmax", counts)
    lade_ce = losses.build_loss("LADE", counts, alpha=0.0)
    for crit in (la, bs, lade_ce):  # also with class weights (the CE part honours train rules)
        crit.set_class_weights(np.linspace(0.5, 2.0, 100))
    values = [crit(z, y).item() for crit in (la, bs, lade_ce)]
    assert values[0] == pytest.approx(values[1], rel=1e-6) and values[1] == pytest.approx(values[2], rel=1e-6)


def test_prior_adjusted_flags():
    assert all(losses.is_prior_adjusted(n) for n in ("LA", "BalancedSoftmax", "LADE"))
    assert not any(losses.is_prior_adjusted(n) for n in ("CE", "Focal", "LDAM"))


# -- LADE ----------------------------------------------------------------------------------------------------------

def lade_by_hand(z, y, counts, alpha, lam):
    """The LADE loss of docs/protocols.md#lade, written out with math: LADE-CE + alpha * LADER."""
    n_classes, n_b = len(counts), len(z)
    pi = [n / sum(counts) for n in counts]
    ce_part = sum(ce([z[i][c] + math.log(pi[c] + 1e-9) for c in range(n_classes)], y[i]) for i in range(n_b)) / n_b
    lader = 0.0
    for c in range(n_classes):
        members = [i for i in range(n_b) if y[i] == c]
        t1 = sum(z[i][c] for i in members) / (len(members) + 1e-8)
        t2 = math.log(sum(math.exp(z[i][c] - math.log(pi[c] + 1e-9) + math.log(1 / n_classes + 1e-9))
                          for i in range(n_b)) / n_b)
        lader -= pi[c] * (t1 - t2 - lam * t2 ** 2)
    return ce_part + alpha * lader, lader


def test_lader_closed_form_with_an_absent_class():
    # z = 0, pi = [3/4, 1/4], batch of two class-0 samples. T1 = 0 for both classes (class 1 is absent:
    # 0 / 1e-8); T2_c = log(exp(-log pi_c + log 1/2)) = log(1 / (2 pi_c)): log(2/3) and log 2.
    # LADER = 3/4 (log(2/3) + lam log(2/3)^2) + 1/4 (log 2 + lam log(2)^2); LADE-CE = -log(3/4).
    lam = 0.01
    lader = 0.75 * (math.log(2 / 3) + lam * math.log(2 / 3) ** 2) + 0.25 * (math.log(2) + lam * math.log(2) ** 2)
    crit = losses.build_loss("LADE", [3, 1], alpha=1.0, remine_lambda=lam)
    z, y = torch.zeros(2, 2), torch.tensor([0, 0])
    assert crit.regulariser(z, y).item() == pytest.approx(lader, rel=1e-5)
    assert crit(z, y).item() == pytest.approx(-math.log(0.75) + lader, rel=1e-5)


@pytest.mark.parametrize("counts", [[3, 1], [6, 3, 1]])
def test_lade_matches_hand_arithmetic(counts):
    rows = [[1.0, 0.0, -0.5], [0.5, 2.0, 0.3], [0.0, -1.0, 1.5], [-0.7, 0.2, 0.9]]
    z = [r[:len(counts)] for r in rows]
    y = [0, 1, 0, len(counts) - 1]
    expected, lader = lade_by_hand(z, y, counts, alpha=0.1, lam=0.01)
    crit = losses.build_loss("LADE", counts)  # defaults: alpha 0.1, lambda 0.01
    assert (crit.alpha, crit.lam) == (0.1, 0.01)
    zt, yt = torch.tensor(z), torch.tensor(y)
    assert crit.regulariser(zt, yt).item() == pytest.approx(lader, rel=1e-5)
    assert crit(zt, yt).item() == pytest.approx(expected, rel=1e-5)


def test_lade_prior_buffers_follow_the_module():
    crit = losses.build_loss("LADE", [3, 1])
    assert {name for name, _ in crit.named_buffers()} >= {"prior", "offset", "weight"}
    torch.testing.assert_close(crit.prior, torch.tensor([0.75, 0.25]))
    assert crit.to(torch.float64).prior.dtype == torch.float64  # moves with .to(), like the logits' device


@pytest.mark.parametrize("name", ["LA", "BalancedSoftmax", "LADE"])
def test_gradients_are_finite(name):
    counts = [500, 50, 5]
    z = torch.tensor([[80.0, -60.0, 0.0], [0.1, 0.2, 0.3], [-90.0, 40.0, 10.0], [0.0, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 0])  # class 2 absent from the batch
    loss = losses.build_loss(name, counts)(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


# -- post-hoc corrections -----------------------------------------------------------------------------------------

def test_posthoc_la_hand_values():
    a = losses.posthoc_adjustment("la", [3, 1], tau=2.0)
    torch.testing.assert_close(a, torch.tensor([-2 * math.log(0.75), -2 * math.log(0.25)]))
    assert losses.posthoc_adjustment("none", [3, 1]) is None


def test_posthoc_pc_identity_when_target_equals_source():
    counts = [500, 120, 30, 5]
    assert torch.equal(losses.posthoc_adjustment("pc", counts, target_prior=counts), torch.zeros(4))
    # probabilities and counts of the same distribution are the same target
    probs = (np.asarray(counts) / sum(counts)).tolist()
    torch.testing.assert_close(losses.posthoc_adjustment("pc", counts, target_prior=probs), torch.zeros(4),
                               rtol=0, atol=1e-6)


def test_posthoc_pc_uniform_and_prior_adjusted():
    # CE model, uniform target: log(1/2) - log pi_s = [log(2/3), log 2] (la at tau 1 up to a constant).
    pc = losses.posthoc_adjustment("pc", [3, 1])
    torch.testing.assert_close(pc, torch.tensor([math.log(2 / 3), math.log(2.0)]))
    la = losses.posthoc_adjustment("la", [3, 1], tau=1.0)
    torch.testing.assert_close(pc - la, torch.full((2,), math.log(0.5)))
    # A prior-adjusted model only adds log pi_t.
    adj = losses.posthoc_adjustment("pc", [3, 1], target_prior=[1, 4], prior_scale=1.0)
    torch.testing.assert_close(adj, torch.tensor([math.log(0.2), math.log(0.8)]))


@pytest.mark.parametrize("kwargs,message", [
    (dict(kind="la", prior_scale=1.0), "--posthoc la"),
    (dict(kind="la", target_prior=[1, 1]), "only used by --posthoc pc"),
    (dict(kind="pc", target_prior=[1, 1, 1]), "--target_prior has 3 values"),
    (dict(kind="pc", target_prior=[1, -1]), "non-negative"),
])
def test_posthoc_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        losses.posthoc_adjustment(cls_num_list=[3, 1], **kwargs)


@pytest.mark.parametrize("extra,message", [
    (["--loss_type", "LADE", "--posthoc", "la"], "--posthoc la"),
    (["--target_prior", "1", "2"], "--posthoc pc"),
    (["--shifted_eval"], "-e --resume"),
    (["--posthoc", "xx"], "--posthoc"),
])
def test_eval_flags_are_validated_at_parse_time(extra, message, capsys):
    with pytest.raises(SystemExit):
        config.parse(train.build_parser(), ["--device", "cpu", *extra])
    assert message in capsys.readouterr().err


# -- configs and end to end ---------------------------------------------------------------------------------------

def test_every_lade_and_logit_adjustment_config_parses():
    files = sorted(os.path.join(d, f) for d in CONFIG_DIRS for f in os.listdir(d))
    assert len(files) == 18
    parsed = {os.path.basename(f): config.parse(train.build_parser(), ["--config", f, "--device", "cpu"])
              for f in files}
    for rho, f in (("100", 0.01), ("50", 0.02), ("10", 0.1)):
        lade = parsed[f"cifar100_exp{rho}_LADE.yaml"]
        assert (lade.arch, lade.batch_size, lade.lr, lade.weight_decay, lade.warmup_epochs) == \
               ("resnet32_bbn", 256, 0.2, 5e-4, 5)
        # LADE's milestones 120/160, stepped at each epoch's start, are 0-indexed epochs 119/159 here
        assert (lade.milestones, lade.lr_factors, lade.epochs) == ([119, 159], [0.01, 0.0001], 200)
        assert lade.warmup_factor == pytest.approx(1 / 3)
        assert (lade.loss_type, lade.lade_alpha, lade.remine_lambda, lade.imb_factor) == ("LADE", 0.1, 0.01, f)
        ours = parsed[f"cifar100_exp{rho}_LADE_resnet32.yaml"]
        assert (ours.arch, ours.batch_size, ours.lr, ours.milestones, ours.loss_type) == \
               ("resnet32", 128, 0.1, [160, 180], "LADE")
        assert parsed[f"cifar100_exp{rho}_PCSoftmax.yaml"].posthoc == "pc"
    for ds in ("cifar10", "cifar100"):
        assert parsed[f"{ds}_exp100_LA.yaml"].loss_type == "LA"
        assert parsed[f"{ds}_exp100_BalancedSoftmax.yaml"].loss_type == "BalancedSoftmax"
        posthoc = parsed[f"{ds}_exp100_CE_posthoc.yaml"]
        assert (posthoc.loss_type, posthoc.posthoc, posthoc.tau) == ("CE", "la", 1.0)


def run_args(root, tmp_path, *extra):
    return ["--data_path", str(root), "--epochs", "1", "-b", "32", "--root_log", str(tmp_path / "log"),
            "--root_model", str(tmp_path / "ckpt"), "--device", "cpu", "--seed", "0", *extra]


def test_lade_trains_end_to_end_on_cifar100(cifar100_root, tmp_path):
    summary = train.main(run_args(cifar100_root, tmp_path, "--dataset", "cifar100", "--imb_factor", "0.01",
                                  "--loss_type", "LADE", "--arch", "resnet20"))
    assert summary["epochs"] == 1 and 0.0 <= summary["last"]["top1"] <= 100.0
    assert (tmp_path / "ckpt" / "cifar100_resnet20_LADE_None_exp_0.01_ss_pretrained" / "ckpt.pth.tar").exists()


def config_path(name):
    return os.path.join(os.path.dirname(__file__), "..", "configs", name)


@pytest.mark.parametrize("cfg", ["lade/cifar100_exp100_LADE.yaml", "logit_adjustment/cifar10_exp100_LA.yaml",
                                 "logit_adjustment/cifar10_exp100_BalancedSoftmax.yaml"])
def test_shipped_configs_run_one_epoch(cfg, cifar10_root, cifar100_root, tmp_path):
    root, arch = (cifar100_root, []) if "cifar100" in cfg else (cifar10_root, ["--arch", "resnet20"])
    summary = train.main(run_args(root, tmp_path, "--config", config_path(cfg), *arch))
    assert summary["epochs"] == 1 and np.isfinite(summary["last"]["loss"])


def test_posthoc_config_and_flags_change_the_evaluation(cifar10_root, tmp_path):
    cfg = ["--config", config_path("logit_adjustment/cifar10_exp100_CE_posthoc.yaml"), "--arch", "resnet20"]
    trained = train.main(run_args(cifar10_root, tmp_path, *cfg))
    ckpt = str(tmp_path / "ckpt" / "cifar10_resnet20_CE_None_exp_0.01_la_posthoc" / "ckpt.pth.tar")
    base = run_args(cifar10_root, tmp_path, *cfg, "-e", "--resume", ckpt)
    la, plain = train.main(base), train.main(base + ["--posthoc", "none"])
    assert la["per_class"] == trained["last"]["per_class"]  # the config's post-hoc LA is used while training too
    counts = load_checkpoint(ckpt)["cls_num_list"]
    pc_source = train.main(base + ["--posthoc", "pc", "--target_prior", *[str(n) for n in counts]])
    assert pc_source["per_class"] == plain["per_class"]  # pi_t = pi_s: no correction
    assert la["loss"] == plain["loss"]  # the reported loss is the raw logits' CE
    # -tau log pi is largest for the tail class, so its recall cannot drop.
    assert la["per_class"][-1] >= plain["per_class"][-1]
