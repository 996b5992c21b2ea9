"""Shifted-target-prior evaluation (engine/eval/shifted.py): subsets, hand-computed scores, files, train.py -e."""
import csv
import json

import numpy as np
import pytest
import torch

import losses
import train
from engine.eval import metrics, shifted

ORDER = ["forward_50", "forward_25", "forward_10", "forward_5", "forward_2", "uniform",
         "backward_2", "backward_5", "backward_10", "backward_25", "backward_50"]


def test_profiles_hand_values():
    profiles = {name: (direction, ratio, counts) for name, direction, ratio, counts in shifted.shifted_profiles(3, 100)}
    assert list(profiles) == ORDER
    # n_c = int(100 * (1/r)^(c/2)): r = 50 -> [100, int(100 / sqrt(50)) = int(14.14) = 14, 2]
    assert profiles["forward_50"] == ("forward", 50, [100, 14, 2])
    assert profiles["backward_50"] == ("backward", 50, [2, 14, 100])
    assert profiles["forward_2"][2] == [100, 70, 50]  # int(100 / sqrt 2) = int(70.7)
    assert profiles["forward_10"][2] == [100, 31, 10]  # int(100 / sqrt 10) = int(31.6)
    assert profiles["uniform"] == ("uniform", 1, [100, 100, 100])


def test_profiles_cifar100_ends():
    for name, _, ratio, counts in shifted.shifted_profiles(100, 100):
        head, tail = (counts[0], counts[-1]) if not name.startswith("backward") else (counts[-1], counts[0])
        assert head == 100 and tail == int(100 / ratio)  # (1/r)^1 at the last class: 2, 4, 10, 20, 50
        assert max(counts) == 100


def balanced_labels(num_classes, per_class, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def test_subsample_exact_counts_and_deterministic():
    labels = balanced_labels(3, 100)
    for _, _, _, counts in shifted.shifted_profiles(3, 100):
        idx = shifted.subsample(labels, counts, seed=7)
        assert np.bincount(labels[idx], minlength=3).tolist() == list(counts)
        assert len(np.unique(idx)) == len(idx) and np.all(np.diff(idx) > 0)
        np.testing.assert_array_equal(idx, shifted.subsample(labels, counts, seed=7))
    small, large = [100, 14, 2], [100, 70, 50]
    a, b = shifted.subsample(labels, large, seed=1), shifted.subsample(labels, large, seed=2)
    assert not np.array_equal(a, b)  # another seed draws other images
    assert set(shifted.subsample(labels, small, seed=1)) <= set(a)  # nested: each class keeps a prefix
    np.testing.assert_array_equal(shifted.subsample(labels, [100] * 3, seed=3), np.arange(300))  # uniform = all


def test_subsample_never_asks_more_than_exist():
    with pytest.raises(ValueError, match="asks 101 test images of class 1, only 100 exist"):
        shifted.subsample(balanced_labels(3, 100), [100, 101, 1], seed=0)


def test_scores_hand_computed_for_a_ce_model():
    # Two classes, 100 test images each; the model always prefers class 1 a little: z = [0, 0.1].
    # pi_s uniform (counts [1, 1]). forward_50 keeps [100, 2]: plain top1 = 2/102; the target prior adds
    # log(100/102) - log(2/102) = log 50 > 0.1 to class 0, so all are predicted 0: 100/102.
    labels = torch.as_tensor(balanced_labels(2, 100))
    logits = torch.tensor([[0.0, 0.1]]).repeat(200, 1)
    rows = {r["distribution"]: r for r in shifted.shifted_evaluation(logits, labels, [1, 1], prior_scale=0.0)}
    assert [r for r in rows] == ORDER
    assert rows["forward_50"]["images"] == 102
    assert rows["forward_50"]["top1"] == pytest.approx(200 / 102)
    assert rows["forward_50"]["top1_prior"] == pytest.approx(10000 / 102)
    assert rows["backward_50"]["top1"] == pytest.approx(10000 / 102)
    assert rows["backward_50"]["top1_prior"] == pytest.approx(10000 / 102)
    assert rows["uniform"]["images"] == 200 and rows["uniform"]["top1"] == rows["uniform"]["top1_prior"] == 50.0
    assert rows["forward_50"]["mean_class_acc"] == pytest.approx(50.0)  # class 0: 0 %, class 1: 100 %
    assert all(r["top5"] == 100.0 for r in rows.values())  # two classes


def test_prior_adjusted_models_do_not_subtract_the_source_prior():
    # Perfect logits z = 2 e_y - 1 with pi_s = [0.9, 0.1]. On the uniform subset, a CE model's correction adds
    # log 9 = 2.2 > 2 to class 1, so every image is predicted 1 (50 %); a prior-adjusted model adds
    # only log(1/2) to both classes and stays at 100 %.
    labels = torch.as_tensor(balanced_labels(2, 50))
    logits = torch.nn.functional.one_hot(labels, 2).float() * 2 - 1
    ce = {r["distribution"]: r for r in shifted.shifted_evaluation(logits, labels, [9, 1], prior_scale=0.0)}
    adj = {r["distribution"]: r for r in shifted.shifted_evaluation(logits, labels, [9, 1], prior_scale=1.0)}
    assert ce["uniform"]["top1"] == adj["uniform"]["top1"] == 100.0
    assert ce["uniform"]["top1_prior"] == 50.0 and adj["uniform"]["top1_prior"] == 100.0


def test_collect_logits_is_one_pass_and_restores_mode():
    model = torch.nn.Linear(4, 3)
    model.train()
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    batches = [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])), (torch.randn(2, 4), torch.tensor([2, 2]))]
    logits, labels = metrics.collect_logits(model, batches)
    assert calls == [5, 2] and logits.shape == (7, 3) and labels.tolist() == [0, 1, 2, 0, 1, 2, 2]
    torch.testing.assert_close(logits[5:], model(batches[1][0]).detach())
    assert model.training


def test_write_rows_round_trip(tmp_path):
    labels = torch.as_tensor(balanced_labels(3, 20))
    logits = torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
    rows = shifted.shifted_evaluation(logits, labels, [5, 3, 1], prior_scale=0.0, seed=4)
    csv_path, json_path = shifted.write_rows(rows, str(tmp_path))
    assert json.load(open(json_path)) == rows
    read = list(csv.DictReader(open(csv_path)))
    assert [r["distribution"] for r in read] == ORDER and list(read[0]) == list(shifted.COLUMNS)
    for r, original in zip(read, rows):
        assert int(r["images"]) == original["images"]
        assert float(r["top1_prior"]) == pytest.approx(original["top1_prior"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_train_then_shifted_eval_writes_csv_and_json(cifar100_root, tmp_path):
    common = ["--dataset", "cifar100", "--data_path", str(cifar100_root), "--imb_factor", "0.01",
              "--loss_type", "LADE", "--arch", "resnet20", "--epochs", "1", "-b", "32", "--device", "cpu",
              "--seed", "0", "--root_log", str(tmp_path / "log"), "--root_model", str(tmp_path / "ckpt")]
    train.main(common)
    name = "cifar100_resnet20_LADE_None_exp_0.01_ss_pretrained"
    ckpt = tmp_path / "ckpt" / name / "ckpt.pth.tar"
    metrics = train.main(common + ["-e", "--resume", str(ckpt), "--shifted_eval", "--shifted_seed", "3"])
    rows = metrics["shifted"]
    # The synthetic CIFAR-100 test set has 2 images per class: n_c = int(2 * (1/r)^(c/99)).
    expected_images = {f"{d}_{r}": sum(int(2 * (1 / r) ** (c / 99)) for c in range(100))
                       for d in ("forward", "backward") for r in (50, 25, 10, 5, 2)}
    expected_images["uniform"] = 200
    assert [r["distribution"] for r in rows] == ORDER
    assert {r["distribution"]: r["images"] for r in rows} == expected_images
    uniform = rows[ORDER.index("uniform")]
    assert uniform["top1"] == pytest.approx(metrics["top1"])  # uniform = the full test set, argmax z
    assert uniform["top1_prior"] == pytest.approx(metrics["top1"])  # LADE + uniform pi_t: a constant shift
    log_dir = tmp_path / "log" / name
    assert json.load(open(log_dir / "shifted_eval.json")) == json.loads(json.dumps(rows))
    assert [r["distribution"] for r in csv.DictReader(open(log_dir / "shifted_eval.csv"))] == ORDER
    again = train.main(common + ["-e", "--resume", str(ckpt), "--shifted_eval", "--shifted_seed", "3"])["shifted"]
    assert again == rows  # deterministic for a seed
    # The correction depends on the training loss: flags that disagree with the checkpoint are refused.
    ce = [a if a != "LADE" else "CE" for a in common]
    with pytest.raises(ValueError, match="was trained with --loss_type LADE"):
        train.main(ce + ["-e", "--resume", str(ckpt), "--shifted_eval"])


def test_shifted_eval_refuses_posthoc():
    import train
    from engine import config

    with pytest.raises(SystemExit):
        config.parse(train.build_parser(), ["-e", "--resume", __file__, "--shifted_eval", "--posthoc", "pc"])


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_target_prior_correction_of_an_la_model_matches_bayes_rule_for_any_tau(tau):
    # An ideal LA model satisfies z + tau*log(pi_s) = log p_s(y|x) + const; Bayes' rule for the target prior
    # gives log p_t(y|x) = log p_s(y|x) - log pi_s + log pi_t + const, so z + a must equal it up to a per-row constant.
    counts, target = [30, 10, 2], [1, 2, 7]
    log_s = torch.log(torch.tensor(counts, dtype=torch.float64) / 42)
    log_t = torch.log(torch.tensor(target, dtype=torch.float64) / 10)
    log_post = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).log_softmax(1)
    z = log_post - tau * log_s
    scale = losses.trained_prior_scale("LA", tau)
    a = losses.posthoc_adjustment("pc", counts, target_prior=target, prior_scale=scale).double()
    diff = (z + a) - (log_post - log_s + log_t)
    torch.testing.assert_close(diff - diff[:, :1], torch.zeros_like(diff), rtol=0, atol=1e-5)


def test_trained_prior_scale_by_loss():
    assert [losses.trained_prior_scale(n, 0.5) for n in ("CE", "LDAM", "LA", "BalancedSoftmax", "LADE")] == \
        [0.0, 0.0, 0.5, 1.0, 1.0]


def test_target_prior_correction_accepts_la_with_any_tau():
    from engine import config

    args = config.parse(train.build_parser(), ["--loss_type", "LA", "--tau", "2", "--posthoc", "pc"])
    assert args.tau == 2.0
