"""Tests for models/: CIFAR ResNets, the BBN variant, ImageNet ResNets and the registry."""
import pytest
import torch
import torchvision

import models
from models.resnet_cifar import BasicBlock, ShortcutA

CIFAR_ARCHS = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202"]
IMAGENET_ARCHS = ["resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                  "resnext50_32x4d"]
FEAT_DIM = {**{a: 64 for a in CIFAR_ARCHS}, "resnet32_bbn": 128,
            "resnet10": 512, "resnet18": 512, "resnet34": 512, "resnet50": 2048,
            "resnet101": 2048, "resnet152": 2048, "resnext50_32x4d": 2048}


def input_for(arch, batch=2):
    size = 64 if arch in IMAGENET_ARCHS else 32
    return torch.randn(batch, 3, size, size)


def test_registry_lists_every_model_sorted():
    assert models.model_names() == sorted(FEAT_DIM)
    assert set(models.ARCHS) == set(FEAT_DIM)


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_cifar_depths_output_shape_and_block_counts(arch):
    model = models.__dict__[arch](num_classes=7).eval()
    # 6n+2 layers: n blocks per stage, n = (depth - 2) / 6.
    n = (int(arch[len("resnet"):]) - 2) // 6
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [n, n, n]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("arch", sorted(FEAT_DIM))
def test_return_features_gives_feat_dim(arch):
    model = models.build_model(arch, num_classes=5).eval()
    with torch.no_grad():
        logits, feat = model(input_for(arch), return_features=True)
    assert model.feat_dim == FEAT_DIM[arch]
    assert logits.shape == (2, 5)
    assert feat.shape == (2, FEAT_DIM[arch])


def test_resnet32_parameter_count():
    # Hand count for ResNet-32 (n=5), 10 classes; convs have no bias, BN has weight+bias.
    #   stem:   conv 3*16*9 = 432,          BN 2*16 = 32                      ->     464
    #   stage1: 5 blocks x (2 * 16*16*9 + 2 * 2*16) = 5 * 4672               ->  23,360
    #   stage2: first 16*32*9 + 32*32*9 + 2*2*32 = 13,952;
    #           4 more x (2 * 32*32*9 + 2*2*32) = 4 * 18,560 = 74,240         ->  88,192
    #   stage3: first 32*64*9 + 64*64*9 + 2*2*64 = 55,552;
    #           4 more x (2 * 64*64*9 + 2*2*64) = 4 * 73,984 = 295,936       -> 351,488
    #   option-A shortcuts: 0;  fc: 64*10 + 10 = 650
    #   total 464 + 23,360 + 88,192 + 351,488 + 650 = 464,154 (the "0.46M" of He et al.)
    model = models.resnet32(num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 464_154
    # The cosine head drops the 10 bias terms.
    normed = models.resnet32(num_classes=10, use_norm=True)
    assert sum(p.numel() for p in normed.parameters()) == 464_154 - 10


def test_resnet32_key_names_match_upstream():
    keys = list(models.resnet32(num_classes=10).state_dict())
    assert keys[0] == "conv1.weight"
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    for key in ["bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.bn1.weight",
                "layer1.0.conv2.weight", "layer1.0.bn2.bias", "layer2.0.conv1.weight",
                "layer3.4.bn2.running_var", "layer3.4.conv2.weight"]:
        assert key in keys
    assert not any(k.startswith("layer3.5") for k in keys)
    assert not any("linear" in k or "shortcut" in k for k in keys)


def test_resnet32_normed_head_keys():
    model = models.resnet32(num_classes=100, use_norm=True)
    state = model.state_dict()
    assert isinstance(model.fc, models.NormedLinear)
    assert state["fc.weight"].shape == (64, 100)
    assert "fc.bias" not in state
    assert list(state)[-1] == "fc.weight"


def test_linear_head_shape():
    assert models.resnet32(num_classes=100).state_dict()["fc.weight"].shape == (100, 64)


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.arange(1 * 16 * 4 * 4, dtype=torch.float32).reshape(1, 16, 4, 4)
    shortcut = ShortcutA(planes=32)
    out = shortcut(x)
    assert out.shape == (1, 32, 2, 2)
    assert list(shortcut.parameters()) == [] and shortcut.state_dict() == {}
    # planes // 4 = 8 zero channels each side; the middle 16 are every other pixel of x.
    assert torch.equal(out[:, :8], torch.zeros(1, 8, 2, 2))
    assert torch.equal(out[:, 24:], torch.zeros(1, 8, 2, 2))
    assert torch.equal(out[:, 8:24], x[:, :, 0::2, 0::2])
    assert out[0, 8, 1, 1].item() == x[0, 0, 2, 2].item()


def test_blocks_use_option_a_only_when_shape_changes():
    model = models.resnet32()
    assert isinstance(model.layer2[0].shortcut, ShortcutA)
    assert isinstance(model.layer3[0].shortcut, ShortcutA)
    assert isinstance(model.layer1[0].shortcut, torch.nn.Identity)
    assert isinstance(model.layer2[1].shortcut, torch.nn.Identity)


def test_basic_block_downsamples():
    block = BasicBlock(16, 32, stride=2).eval()
    with torch.no_grad():
        assert block(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)


def test_normed_linear_outputs_cosines():
    torch.manual_seed(0)
    head = models.NormedLinear(8, 5)
    assert torch.allclose(head.weight.norm(dim=0), torch.ones(5), atol=1e-6)
    assert list(dict(head.named_parameters())) == ["weight"]
    out = head(torch.randn(64, 8) * 10)
    assert out.shape == (64, 5)
    assert out.abs().max() <= 1 + 1e-6
    # An input along class column j (any positive scale) has cosine exactly 1 with it.
    x = head.weight.detach().t() * 3.0
    cos = head(x)
    assert torch.allclose(cos.diagonal(), torch.ones(5), atol=1e-6)
    assert torch.allclose(head(-x).diagonal(), -torch.ones(5), atol=1e-6)


def test_bbn_variant_structure():
    model = models.resnet32_bbn(num_classes=100).eval()
    keys = list(model.state_dict())
    assert any(k.startswith("cb_block.") for k in keys)
    assert any(k.startswith("rb_block.") for k in keys)
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [5, 5, 4]
    assert model.state_dict()["fc.weight"].shape == (100, 128)
    with torch.no_grad():
        logits, feat = model(torch.randn(2, 3, 32, 32), return_features=True)
    assert logits.shape == (2, 100) and feat.shape == (2, 128)


def test_bbn_variant_normed_head():
    model = models.build_model("resnet32_bbn", 100, use_norm=True)
    state = model.state_dict()
    assert state["fc.weight"].shape == (128, 100)
    assert "fc.bias" not in state


@pytest.mark.parametrize("arch", ["resnet10", "resnet50"])
def test_imagenet_resnet_output_shape(arch):
    model = models.build_model(arch, num_classes=13).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 13)


def test_imagenet_resnet_accepts_32x32():
    model = models.resnet18(num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_resnet50_keys_match_torchvision():
    ours = models.resnet50(num_classes=10).state_dict()
    ref = torchvision.models.resnet50().state_dict()
    body = {k: v.shape for k, v in ours.items() if not k.startswith("fc.")}
    assert body == {k: v.shape for k, v in ref.items() if not k.startswith("fc.")}
    assert ours["fc.weight"].shape == (10, 2048)


def test_resnet50_normed_head():
    model = models.resnet50(num_classes=10, use_norm=True)
    state = model.state_dict()
    assert state["fc.weight"].shape == (2048, 10)
    assert "fc.bias" not in state


def test_moco_checkpoint_keys_load_after_stripping_prefix():
    # MoCo v2 saves a DDP torchvision ResNet-50 with an MLP fc as module.encoder_q.*.
    encoder = torchvision.models.resnet50(num_classes=128)
    encoder.fc = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
                                     torch.nn.Linear(2048, 128))
    ckpt = {f"module.encoder_q.{k}": v for k, v in encoder.state_dict().items()}
    prefix = "module.encoder_q."
    state = {k[len(prefix):]: v for k, v in ckpt.items()
             if k.startswith(prefix) and not k.startswith(prefix + "fc")}
    model = models.resnet50(num_classes=1000)
    result = model.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    assert torch.equal(model.conv1.weight, encoder.conv1.weight)


def test_build_model_unknown_arch_names_it():
    with pytest.raises(ValueError, match="unknown --arch 'resnet33'") as err:
        models.build_model("resnet33", 10)
    assert "resnet32" in str(err.value)


@pytest.mark.parametrize("arch,use_norm", [("resnet32", False), ("resnet32", True),
                                           ("resnet32_bbn", False), ("resnet10", True)])
def test_state_dict_round_trip_gives_identical_logits(tmp_path, arch, use_norm):
    torch.manual_seed(0)
    src = models.build_model(arch, 10, use_norm=use_norm)
    # A train-mode pass moves BN running stats off their defaults so they are checked too.
    src(input_for(arch, batch=4))
    src.eval()
    path = tmp_path / "model.pth"
    torch.save(src.state_dict(), path)

    torch.manual_seed(1)
    dst = models.build_model(arch, 10, use_norm=use_norm)
    dst.load_state_dict(torch.load(path, weights_only=True), strict=True)
    dst.eval()
    x = input_for(arch)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
