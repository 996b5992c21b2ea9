"""MoCo v2 (engine/methods/moco.py, pretrain_moco.py): hand-computed momentum, queue and InfoNCE values; the forward's
wiring; the two views; flags and errors; the upstream checkpoint layout, resume and loading into train.py's
model; and two processes under torchrun (Gloo) staying identical."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import models
import pretrain_moco
from conftest import REPO_ROOT
from engine.train.checkpoint import load_checkpoint, load_pretrained_backbone, strip_prefix
from engine.methods.moco import (MoCo, TwoCropsTransform, batch_shuffle, batch_unshuffle, build_moco, enqueue_,
                         info_nce_logits, moco_v1_augmentation, moco_v2_augmentation, momentum_update_)


pytestmark = pytest.mark.usefixtures("one_thread")


def moco_args(root, tmp_path, *extra):
    return ["--dataset", "cifar10", "--data", root, "--imb_type", "none", "-a", "resnet20", "--device", "cpu",
            "--seed", "0", "-j", "0", "--root_path", str(tmp_path / "moco"), "--root_log", str(tmp_path / "log"),
            *extra]


def test_momentum_update_is_the_ema_formula():
    key, query = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])], [torch.tensor([3.0, -2.0]), torch.tensor([[10.0]])]
    momentum_update_(key, query, 0.9)
    # 0.9 * 1 + 0.1 * 3 = 1.2; 0.9 * 2 + 0.1 * (-2) = 1.6; 0.9 * 0 + 0.1 * 10 = 1
    torch.testing.assert_close(key[0], torch.tensor([1.2, 1.6]))
    torch.testing.assert_close(key[1], torch.tensor([[1.0]]))
    torch.testing.assert_close(query[0], torch.tensor([3.0, -2.0]))  # the query side is untouched


def test_moco_momentum_update_moves_parameters_not_batchnorm_statistics():
    encoder = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    moco = MoCo(encoder, dim=3, K=4, m=0.5)
    with torch.no_grad():
        for p in moco.encoder_q.parameters():
            p.add_(1.0)
        moco.encoder_q[1].running_mean.fill_(7.0)
    before = {k: v.clone() for k, v in moco.encoder_k.state_dict().items()}
    moco.momentum_update()
    for (name, pk), pq in zip(moco.encoder_k.named_parameters(), moco.encoder_q.parameters()):
        torch.testing.assert_close(pk, 0.5 * before[name] + 0.5 * pq)
    torch.testing.assert_close(moco.encoder_k[1].running_mean, before["1.running_mean"])


def test_queue_pointer_arithmetic_wraps_around():
    queue, ptr = torch.zeros(2, 5), torch.zeros(1, dtype=torch.long)
    keys = [torch.tensor([[1.0, 1.0], [2.0, 2.0]]), torch.tensor([[3.0, 3.0], [4.0, 4.0]]),
            torch.tensor([[5.0, 5.0], [6.0, 6.0]])]
    enqueue_(queue, ptr, keys[0])
    enqueue_(queue, ptr, keys[1])
    assert ptr.item() == 4 and queue[0].tolist() == [1, 2, 3, 4, 0]
    enqueue_(queue, ptr, keys[2])  # columns 4, then 0 (the oldest key is replaced)
    assert ptr.item() == 1 and queue[0].tolist() == [6, 2, 3, 4, 5] and queue[1].tolist() == [6, 2, 3, 4, 5]
    queue, ptr = torch.zeros(2, 4), torch.zeros(1, dtype=torch.long)
    for k in keys:  # K a multiple of the batch (the validated case): the pointer cycles 2, 0, 2
        enqueue_(queue, ptr, k)
    assert ptr.item() == 2 and queue[0].tolist() == [5, 6, 3, 4]


def test_info_nce_against_a_hand_computed_value():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[0.6, 0.8]])
    queue = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # negatives e1 and e2 as columns
    logits, targets = info_nce_logits(q, k, queue, t=0.5)
    torch.testing.assert_close(logits, torch.tensor([[1.2, 2.0, 0.0]]))  # [0.6, 1, 0] / 0.5
    assert targets.tolist() == [0]
    expected = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(2.0) + math.exp(0.0)))
    assert F.cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_batch_shuffle_round_trip_in_one_process():
    torch.manual_seed(0)
    x = torch.arange(12.0).view(6, 2)
    shuffled, unshuffle = batch_shuffle(x)
    assert sorted(shuffled[:, 0].tolist()) == x[:, 0].tolist()
    torch.testing.assert_close(batch_unshuffle(shuffled * 3, unshuffle), x * 3)


def test_build_moco_v2_head_identical_encoders_and_unit_queue():
    moco = build_moco("resnet20", dim=16, K=32, m=0.999, t=0.2, mlp=True)
    fc = moco.encoder_q.fc
    assert isinstance(fc, nn.Sequential) and [type(m) for m in fc] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (fc[0].in_features, fc[0].out_features, fc[2].out_features) == (64, 64, 16)
    for pq, pk in zip(moco.encoder_q.parameters(), moco.encoder_k.parameters()):
        assert torch.equal(pq, pk) and pq.requires_grad and not pk.requires_grad
    assert moco.queue.shape == (16, 32) and moco.queue_ptr.tolist() == [0]
    torch.testing.assert_close(moco.queue.norm(dim=0), torch.ones(32))
    assert isinstance(build_moco("resnet20", 16, 32, 0.999, 0.2, mlp=False).encoder_q.fc, nn.Linear)


def test_forward_scores_the_momentum_keys_and_enqueues_them():
    torch.manual_seed(0)
    moco = build_moco("resnet20", dim=8, K=12, m=0.9, t=0.2, mlp=True)
    with torch.no_grad():
        for p in moco.encoder_q.parameters():
            p.add_(0.01)
    queue_before = moco.queue.clone()
    im_q, im_k = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    logits, targets = moco(im_q, im_k)
    with torch.no_grad():  # train-mode BN: a batch's statistics do not depend on its order
        q = F.normalize(moco.encoder_q(im_q), dim=1)
        k = F.normalize(moco.encoder_k(im_k), dim=1)  # keys come from the updated key encoder
    torch.testing.assert_close(moco.queue[:, :4], k.T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(moco.queue[:, 4:], queue_before[:, 4:])
    assert moco.queue_ptr.item() == 4 and logits.shape == (4, 13) and targets.tolist() == [0] * 4
    torch.testing.assert_close(logits[:, 0], (q * k).sum(1) / 0.2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[:, 1:], q @ queue_before / 0.2, rtol=1e-4, atol=1e-4)
    assert not torch.equal(moco.encoder_k.conv1.weight, moco.encoder_q.conv1.weight)


@pytest.mark.parametrize("augmentation", [moco_v2_augmentation, moco_v1_augmentation])
def test_two_crops_are_two_independent_views(augmentation):
    torch.manual_seed(0)
    img = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    views = TwoCropsTransform(augmentation(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))(img)
    assert views.shape == (2, 3, 32, 32) and views.dtype == torch.float32
    assert not torch.equal(views[0], views[1])


def test_parser_upstream_defaults_and_real_switches():
    p = pretrain_moco.build_parser()
    a = p.parse_args([])
    assert (a.dataset, a.arch, a.epochs, a.batch_size, a.lr, a.weight_decay, a.momentum) == \
        ("imagenet", None, 200, 128, 0.015, 1e-4, 0.9)
    assert (a.moco_dim, a.moco_k, a.moco_m, a.moco_t, a.mlp, a.aug_plus, a.lr_schedule) == \
        (128, 65536, 0.999, 0.2, True, True, "cosine")
    assert (a.print_freq, a.workers, a.gpu, a.root_path, a.milestones, a.lr_factors) == \
        (50, 32, None, "./data", [120, 160], [0.1, 0.01])
    b = p.parse_args(["--no-mlp", "--no-aug-plus", "--no-cos", "--schedule", "30", "40", "--data", "/img"])
    assert (b.mlp, b.aug_plus, b.lr_schedule, b.milestones, b.data_path) == (False, False, "step", [30, 40], "/img")
    assert p.parse_args(["--no-cos", "--cos"]).lr_schedule == "cosine"
    c = p.parse_args(["--no-cos", "--schedule", "100", "150", "180"])  # any number of x0.1 steps, as upstream
    assert c.milestones == [100, 150, 180] and c.lr_factors == pytest.approx([0.1, 0.01, 0.001])


@pytest.mark.parametrize("extra,message", [
    (["-b", "48"], "--moco-k 65536 must be a multiple of the total batch size -b 48"),
    (["--moco-m", "1"], "--moco-m must be in"),
    (["--moco-t", "0"], "--moco-t must be positive"),
    (["-e", "--resume", __file__], "no classifier"),
    (["--root_model", "x"], "--root_path"),
    (["--dataset", "imagenet", "--list_file", "/nonexistent/train.txt"], "--list_file: no split file"),
    (["--list_file", __file__], "--list_file is for the image-list data sets"),
])
def test_bad_flags_are_refused_before_any_work(extra, message, capsys):
    with pytest.raises(SystemExit):
        pretrain_moco.main(["--dataset", "cifar10", *extra])
    assert message in capsys.readouterr().err


def test_imagenet_default_list_file_missing_is_explained(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        pretrain_moco.main(["--dataset", "inat"])
    assert "iNaturalist18_train.txt" in capsys.readouterr().err


def test_image_list_data_gives_two_224_views_per_listed_image(tmp_path):
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (300, 260), colour).save(tmp_path / f"img{i}.jpg")
    (tmp_path / "train.txt").write_text("img0.jpg 3\nimg1.jpg 0\n")
    args = pretrain_moco.build_parser().parse_args(["--data", str(tmp_path), "--list_file",
                                                    str(tmp_path / "train.txt")])
    spec = pretrain_moco.DATASETS["imagenet"]
    dataset = pretrain_moco.train_set(args, spec, TwoCropsTransform(moco_v2_augmentation(spec.image_size, spec.mean,
                                                                                         spec.std)))
    views, label = dataset[0]
    assert len(dataset) == 2 and label == 3 and views.shape == (2, 3, 224, 224)


def test_checkpoints_in_upstream_layout_resume_and_initialise_train_model(tiny_cifar10, tmp_path):
    """3 epochs, -p 2: moco_ckpt_0002 and the final moco_ckpt_0003; resume to epoch 4; train.py's model loads
    encoder_q without its MLP head."""
    moco = pretrain_moco.main(moco_args(tiny_cifar10, tmp_path, "--epochs", "3", "-p", "2", "-b", "20",
                                        "--moco-k", "80", "--moco-dim", "16"))
    folder = tmp_path / "moco" / "cifar10" / "checkpoint"
    assert sorted(os.listdir(folder)) == [".lock", "moco_ckpt_0002.pth.tar", "moco_ckpt_0003.pth.tar"]
    ckpt = load_checkpoint(str(folder / "moco_ckpt_0003.pth.tar"))
    assert ckpt["epoch"] == 3 and ckpt["arch"] == "resnet20" and "optimizer" in ckpt
    sd = ckpt["state_dict"]
    assert {"module.queue", "module.queue_ptr", "module.encoder_q.conv1.weight", "module.encoder_k.conv1.weight",
            "module.encoder_q.fc.2.weight"} <= set(sd) and all(k.startswith("module.") for k in sd)
    for k, v in moco.state_dict().items():
        assert torch.equal(sd["module." + k], v)
    assert sd["module.queue_ptr"].item() == (3 * 2 * 20) % 80  # 2 full batches of 20 per epoch

    pretrain_moco.main(moco_args(tiny_cifar10, tmp_path, "--epochs", "4", "-p", "2", "-b", "20", "--moco-k", "80",
                                 "--moco-dim", "16", "--resume", str(folder / "moco_ckpt_0003.pth.tar")))
    resumed = load_checkpoint(str(folder / "moco_ckpt_0004.pth.tar"))
    assert resumed["epoch"] == 4 and resumed["state_dict"]["module.queue_ptr"].item() == (4 * 2 * 20) % 80
    assert resumed["optimizer"]["state"]  # SGD momentum buffers carried over and updated
    records = (tmp_path / "log" / "cifar10_resnet20_none_0.01_pretrain_moco" / "metrics.jsonl").read_text()
    assert [json.loads(line)["epoch"] for line in records.splitlines()] == [0, 1, 2, 3]

    model = models.build_model("resnet20", 10)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained_backbone(model, str(folder / "moco_ckpt_0004.pth.tar"))
    assert report["missing"] == ["fc.weight", "fc.bias"]
    query = strip_prefix(strip_prefix(resumed["state_dict"], "module."), "encoder_q.")
    for k, v in model.state_dict().items():
        if k.startswith("fc."):
            assert torch.equal(v, fresh[k])
        else:
            assert torch.equal(v, query[k])
    assert not torch.equal(model.conv1.weight, fresh["conv1.weight"])
    with pytest.raises(ValueError, match="another architecture"):
        load_pretrained_backbone(models.build_model("resnet10", 10), str(folder / "moco_ckpt_0004.pth.tar"))


WORKER = """
import sys
import torch
sys.path.insert(0, {repo!r})
import pretrain_moco
from engine.train import distributed
from engine.methods.moco import batch_shuffle, batch_unshuffle

moco = pretrain_moco.main(sys.argv[2:])
x = torch.arange(8.0).view(4, 2) + 100 * distributed.rank()
shuffled, unshuffle = batch_shuffle(x)
back = batch_unshuffle(shuffled * 2, unshuffle)
state = {{"params": dict(moco.named_parameters()), "queue": moco.queue, "queue_ptr": moco.queue_ptr,
          "x": x, "shuffled": shuffled, "back": back}}
torch.save(state, sys.argv[1] + "/rank%d.pt" % distributed.rank())
distributed.shutdown()
"""


def test_two_processes_under_torchrun_stay_identical(tiny_cifar10, tmp_path):
    """torchrun --nproc_per_node 2 on the CPU (Gloo): each process trains on its half of every batch; the
    gradient all-reduce, the all-gathered keys and the shared shuffle keep both replicas and queues equal."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(repo=str(REPO_ROOT)))
    args = moco_args(tiny_cifar10, tmp_path, "--epochs", "1", "-b", "8", "--moco-k", "16", "--moco-dim", "8")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(worker), str(tmp_path), *args], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name
    assert torch.equal(r0["queue"], r1["queue"])
    assert r0["queue_ptr"].item() == r1["queue_ptr"].item() == (5 * 8) % 16  # 20 images per process, 4 per step
    ckpt = load_checkpoint(str(tmp_path / "moco" / "cifar10" / "checkpoint" / "moco_ckpt_0001.pth.tar"))
    assert torch.equal(ckpt["state_dict"]["module.queue"], r0["queue"])
    assert torch.equal(ckpt["state_dict"]["module.encoder_q.conv1.weight"], r0["params"]["encoder_q.conv1.weight"])
    for r in (r0, r1):  # shuffle across processes, then back: each process gets f(its own samples), in order
        torch.testing.assert_close(r["back"], 2 * r["x"])
    rows = sorted(torch.cat([r0["shuffled"], r1["shuffled"]])[:, 0].tolist())
    assert rows == sorted(torch.cat([r0["x"], r1["x"]])[:, 0].tolist())


# -- Split-BN (shuffle-BN in one process) -------------------------------------------------------------------
def test_split_batchnorm_normalises_each_interleaved_group_on_its_own():
    from engine.methods.moco import SplitBatchNorm2d
    torch.manual_seed(0)
    bn = SplitBatchNorm2d(3, num_splits=2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 1.0]))
    x = torch.randn(8, 3, 4, 4) * torch.tensor([1.0, 3.0, 0.2]).view(1, 3, 1, 1)
    out = bn(x)
    for j in range(2):  # group j = samples j, j + 2, ...: BatchNorm on that group alone
        group = x[j::2]
        mean, var = group.mean((0, 2, 3)), group.var((0, 2, 3), unbiased=False)
        expect = (group - mean.view(1, 3, 1, 1)) / torch.sqrt(var.view(1, 3, 1, 1) + bn.eps)
        expect = expect * bn.weight.view(1, 3, 1, 1) + bn.bias.view(1, 3, 1, 1)
        torch.testing.assert_close(out[j::2], expect, rtol=1e-4, atol=1e-5)
    # running statistics: 0.9 * initial + 0.1 * the mean over groups of (mean, unbiased variance)
    means = torch.stack([x[j::2].mean((0, 2, 3)) for j in range(2)]).mean(0)
    variances = torch.stack([x[j::2].var((0, 2, 3), unbiased=True) for j in range(2)]).mean(0)
    torch.testing.assert_close(bn.running_mean, 0.1 * means, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * variances, rtol=1e-4, atol=1e-6)
    # evaluation uses the running statistics, exactly as BatchNorm2d
    plain = torch.nn.BatchNorm2d(3)
    plain.load_state_dict(bn.state_dict())
    torch.testing.assert_close(bn.eval()(x), plain.eval()(x))


def test_split_batchnorm_cumulative_average_and_no_running_stats():
    from engine.methods.moco import SplitBatchNorm2d, split_batchnorm_
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    bn = SplitBatchNorm2d(3, num_splits=2, momentum=None)  # running stats = plain average over batches
    bn(x)
    bn(2 * x)
    group_mean = lambda t: torch.stack([t[j::2].mean((0, 2, 3)) for j in range(2)]).mean(0)  # noqa: E731
    torch.testing.assert_close(bn.running_mean, (group_mean(x) + group_mean(2 * x)) / 2, rtol=1e-5, atol=1e-6)
    assert bn.num_batches_tracked.item() == 2
    plain = split_batchnorm_(nn.Sequential(nn.BatchNorm2d(3, affine=False, track_running_stats=False)), 2)[0]
    assert isinstance(plain, SplitBatchNorm2d) and plain.running_mean is None
    out = plain(x)
    expect = (x[1::2] - x[1::2].mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        x[1::2].var((0, 2, 3), unbiased=False, keepdim=True) + plain.eps)
    torch.testing.assert_close(out[1::2], expect, rtol=1e-4, atol=1e-5)


def test_split_batchnorm_makes_the_key_permutation_matter():
    from engine.methods.moco import SplitBatchNorm2d, split_batchnorm_
    model = split_batchnorm_(models.build_model("resnet20", 10), 4)
    assert sum(isinstance(m, SplitBatchNorm2d) for m in model.modules()) == \
        sum(isinstance(m, torch.nn.BatchNorm2d) for m in models.build_model("resnet20", 10).modules())
    assert set(model.state_dict()) == set(models.build_model("resnet20", 10).state_dict())
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    model.train()
    direct, permuted = model(x), model(x[perm])[torch.argsort(perm)]
    assert not torch.allclose(direct, permuted, atol=1e-4)  # other groups, other statistics
    plain = models.build_model("resnet20", 10).train()
    torch.testing.assert_close(plain(x), plain(x[perm])[torch.argsort(perm)], rtol=1e-4, atol=1e-4)


def test_bn_splits_flag_trains_and_checks_the_batch(tiny_cifar10, tmp_path, capsys):
    with pytest.raises(SystemExit):
        pretrain_moco.main(moco_args(tiny_cifar10, tmp_path, "-b", "20", "--moco-k", "80", "--bn-splits", "3"))
    assert "--bn-splits 3 must be positive and divide each process's batch (20)" in capsys.readouterr().err
    moco = pretrain_moco.main(moco_args(tiny_cifar10, tmp_path, "--epochs", "1", "-b", "20", "--moco-k", "80",
                                        "--moco-dim", "16", "--bn-splits", "4"))
    assert moco.encoder_k.bn1.num_splits == 4 and moco.encoder_q.bn1.num_batches_tracked.item() == 2
    assert "shuffle-BN has nothing to shuffle" not in capsys.readouterr().out
