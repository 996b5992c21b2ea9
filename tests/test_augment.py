"""Device-side augmentation against torchvision's transforms, image for image, and loader invariants."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from engine.data import augment
from engine.data.loaders import DeviceLoader, TorchLoader
from engine.data.samplers import epoch_seed


def _images(n=6, size=8, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_crop_flip_equals_torchvision_for_the_same_offsets_and_flips():
    imgs = _images()
    pad, size = 4, 8
    padded = torch.nn.functional.pad(torch.from_numpy(imgs).permute(0, 3, 1, 2), (pad,) * 4)
    offsets = torch.tensor([[0, 0], [8, 8], [3, 5], [7, 1], [4, 4], [0, 8]])
    flips = torch.tensor([False, True, True, False, True, False])
    idx = torch.arange(6)
    ours = augment.crop_flip(padded, idx, offsets, flips, size)
    for i in range(6):
        pil = Image.fromarray(imgs[i])
        ref = TF.crop(TF.pad(pil, pad), int(offsets[i, 0]), int(offsets[i, 1]), size, size)
        if flips[i]:
            ref = TF.hflip(ref)
        expected = torch.from_numpy(np.array(ref)).permute(2, 0, 1)
        assert torch.equal(ours[i], expected), i


def test_normalize_equals_to_tensor_then_normalize():
    imgs = _images(2)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    ours = augment.normalize(torch.from_numpy(imgs).permute(0, 3, 1, 2), *augment.normalization(mean, std, 'cpu'))
    for i in range(2):
        ref = TF.normalize(TF.to_tensor(Image.fromarray(imgs[i])), mean, std)
        torch.testing.assert_close(ours[i], ref, rtol=1e-5, atol=1e-5)


def test_crop_offsets_cover_0_to_2pad_uniformly_and_flip_half():
    g = torch.Generator().manual_seed(0)
    offsets, flips = augment.draw_crop_flip(90000, 4, g, "cpu")
    counts = torch.bincount(offsets.flatten(), minlength=9).double() / offsets.numel()
    assert offsets.min() == 0 and offsets.max() == 8
    assert torch.allclose(counts, torch.full((9,), 1 / 9, dtype=torch.double), atol=0.005)
    assert abs(flips.double().mean().item() - 0.5) < 0.01


def test_rotate_batch_is_rot90_per_image():
    x = torch.arange(4 * 2 * 5 * 5).view(4, 2, 5, 5)
    k = torch.tensor([0, 1, 2, 3])
    out = augment.rotate_batch(x, k)
    for i in range(4):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))


def _loader(imgs, labels, **kw):
    kw.setdefault("train", True)
    return DeviceLoader(imgs, labels, batch_size=4, device=torch.device("cpu"), mean=(0.5,) * 3, std=(0.5,) * 3, **kw)


def test_device_loader_epoch_covers_each_image_once():
    imgs = _images(10)
    labels = np.arange(10)
    loader = _loader(imgs, labels)
    seen = torch.cat([y for _, y in loader])
    assert len(loader) == 3 and sorted(seen.tolist()) == list(range(10))
    shapes = [x.shape for x, _ in loader]
    assert shapes[0] == (4, 3, 8, 8) and shapes[-1] == (2, 3, 8, 8)


def test_device_loader_batches_are_the_epoch_plan_cropped_batch_by_batch():
    # The whole-epoch crop must give, batch for batch, crop_flip of that batch's share of the epoch's plan.
    imgs, labels = _images(10), np.arange(10)
    loader = _loader(imgs, labels, seed=7)
    loader.set_epoch(2)
    order, [(offsets, flips)] = loader._epoch_plan()
    mean255, std255 = augment.normalization((0.5,) * 3, (0.5,) * 3, "cpu")
    for b, (x, y) in enumerate(loader):
        sl = slice(4 * b, 4 * b + 4)
        expected = augment.normalize(augment.crop_flip(loader.images, order[sl], offsets[sl], flips[sl], 8),
                                     mean255, std255)
        assert torch.equal(x, expected) and torch.equal(y, torch.as_tensor(labels)[order[sl]])


def test_device_loader_is_deterministic_per_epoch_and_differs_across_epochs():
    imgs, labels = _images(10), np.arange(10)
    a, b = _loader(imgs, labels, seed=3), _loader(imgs, labels, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(6)
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in b]))


def test_device_loader_eval_is_in_order_and_unaugmented():
    imgs, labels = _images(5), np.arange(5)
    loader = _loader(imgs, labels, train=False)
    x = torch.cat([x for x, _ in loader])
    expected = augment.normalize(torch.from_numpy(imgs).permute(0, 3, 1, 2),
                                *augment.normalization((0.5,) * 3, (0.5,) * 3, 'cpu'))
    assert torch.equal(x, expected)


def test_device_loader_weighted_sampling_balances_classes():
    labels = np.array([0] * 90 + [1] * 10)
    weights = np.where(labels == 0, 1 / 90, 1 / 10)
    loader = _loader(np.zeros((100, 4, 4, 3), np.uint8), labels, sample_weights=weights)
    drawn = torch.cat([torch.cat([y for _, y in loader]) for loader.epoch in range(50)])
    assert abs(drawn.double().mean().item() - 0.5) < 0.03


def test_device_loader_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        _loader(np.zeros((2, 4, 4, 3), np.float32), [0, 1])


def test_torch_loader_seeded_order_matches_across_instances():
    ds = torch.utils.data.TensorDataset(torch.arange(20).float(), torch.arange(20))
    mk = lambda: TorchLoader(ds, batch_size=5, device=torch.device("cpu"), train=True, workers=0, seed=1)
    a, b = mk(), mk()
    assert [y.tolist() for _, y in a] == [y.tolist() for _, y in b]
    assert epoch_seed(1, 0) != epoch_seed(1, 1) != epoch_seed(2, 1)


def test_device_loader_views_are_independent_crops_and_the_first_is_the_single_view_draw():
    imgs, labels = _images(10), np.arange(10)
    single = _loader(imgs, labels, seed=7)
    multi = DeviceLoader(imgs, labels, batch_size=4, device=torch.device("cpu"), mean=(0.5,) * 3, std=(0.5,) * 3,
                         train=True, seed=7, views=3)
    single.set_epoch(1)
    multi.set_epoch(1)
    order, draws = multi._epoch_plan()
    mean255, std255 = augment.normalization((0.5,) * 3, (0.5,) * 3, "cpu")
    for b, ((x1, y1), (x3, y3)) in enumerate(zip(single, multi)):
        sl = slice(4 * b, 4 * b + 4)
        assert x3.shape == (x1.shape[0], 3, *x1.shape[1:]) and torch.equal(y1, y3)
        assert torch.equal(x3[:, 0], x1)  # view 0 = the one-view loader's batch: one-view runs are unchanged
        for v, (offsets, flips) in enumerate(draws):
            expected = augment.crop_flip(multi.images, order[sl], offsets[sl], flips[sl], 8)
            assert torch.equal(x3[:, v], augment.normalize(expected, mean255, std255))
    assert not all(torch.equal(draws[0][0], d[0]) for d in draws[1:])  # views are drawn independently
    with pytest.raises(ValueError, match="views must be 1"):
        DeviceLoader(imgs, labels, batch_size=4, device=torch.device("cpu"), mean=(0.5,) * 3, std=(0.5,) * 3,
                     train=False, views=2)
