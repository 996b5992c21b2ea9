"""Training throughput of the ImageNet-LT pipeline: JPEG loading included vs pure compute, in one run.

    python bench/bench_imagenet.py                                    # ResNet-50, batch 128, 224x224 JPEGs
    python bench/bench_imagenet.py --amp --channels_last --workers 16
    python bench/bench_imagenet.py --arch resnet10 --batch 8 --steps 3 --size 64 --device cpu   # smoke test

Both rates come from the project's training loop (``Trainer.train_epoch``: forward, loss, backward, SGD step;
one host sync at the end of the epoch), each after an untimed warm-up epoch of the same length:
* loading: synthetic JPEGs (imagenet_inat.synthetic) read and decoded by DataLoader workers
  (torchvision.io), RandomResizedCrop + flip + ColorJitter + Normalize, instance-balanced sampler;
* compute: the same model and step on one random batch already on the device.
The ratio loading / compute says how much of the GPU the input pipeline keeps busy (1.0 = not input-bound).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from engine.config import resolve_device  # noqa: E402
from engine.methods import Classification  # noqa: E402
from engine.train.trainer import LoopConfig, Trainer  # noqa: E402
from imagenet_inat.datasets import LT_DATASETS, ListDataset, list_transform  # noqa: E402
from imagenet_inat.main import train_loader  # noqa: E402
from imagenet_inat.synthetic import class_image  # noqa: E402
from PIL import Image  # noqa: E402

CLASSES = 1000


def write_images(folder: str, count: int, size: int, rows: int) -> str:
    """``count`` distinct JPEGs and a split file of ``rows`` lines cycling over them; returns the split file."""
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        name = f"img_{i:05d}.jpg"
        Image.fromarray(class_image(i % CLASSES, CLASSES, size, rng)).save(os.path.join(folder, name), quality=90)
        names.append(name)
    split = os.path.join(folder, "split.txt")
    with open(split, "w") as f:
        f.writelines(f"{names[i % count]} {i % CLASSES}\n" for i in range(rows))
    return split


class FixedBatches:
    """``steps`` times the same (x, y) on the device: the pure-compute input."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int):
        self.x, self.y, self.steps = x, y, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return iter([(self.x, self.y)] * self.steps)


def images_per_second(trainer: Trainer, batch: int) -> float:
    """One warm-up epoch, then a timed one."""
    trainer.train_epoch(0)
    start = time.perf_counter()
    trainer.train_epoch(1)
    return len(trainer.loader) * batch / (time.perf_counter() - start)


def run(args) -> dict:
    device = resolve_device(args)
    torch.backends.cudnn.benchmark = True
    model = models.build_model(args.arch, CLASSES).to(device)
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    method = Classification(model, torch.nn.CrossEntropyLoss(), amp=args.amp)
    loop = LoopConfig(epochs=2, print_freq=10 ** 9)
    with tempfile.TemporaryDirectory() as folder:
        split = write_images(folder, args.images, args.size, args.batch * args.steps)
        dataset = ListDataset(folder, split, list_transform(LT_DATASETS["ImageNet_LT"], True, args.size),
                              CLASSES, decode="tensor")
        cfg = SimpleNamespace(sampler="instance", samples_per_class=4, batch_size=args.batch, workers=args.workers,
                              channels_last=args.channels_last)
        loader = train_loader(dataset, cfg, device, seed=0)
        loading = images_per_second(Trainer(method, optimizer, loader, lambda epoch: 0.01, loop, None, None, {}),
                                    args.batch)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=memory)
    y = torch.randint(0, CLASSES, (args.batch,), device=device)
    compute = images_per_second(Trainer(method, optimizer, FixedBatches(x, y, args.steps), lambda epoch: 0.01, loop,
                                        None, None, {}), args.batch)
    result = {"arch": args.arch, "batch": args.batch, "size": args.size, "device": str(device),
              "workers": args.workers, "amp": args.amp, "channels_last": args.channels_last,
              "loading_img_s": loading, "compute_img_s": compute, "ratio": loading / compute}
    print(f"{args.arch} batch {args.batch} {args.size}x{args.size} on {device} (workers {args.workers}, "
          f"amp {args.amp}, channels_last {args.channels_last})")
    print(f"  training with JPEG loading : {loading:9.1f} images/s")
    print(f"  pure compute (device data) : {compute:9.1f} images/s")
    print(f"  ratio loading / compute    : {loading / compute:9.3f}")
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50", choices=sorted(models.ARCHS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps (after as many warm-up steps)")
    p.add_argument("--size", type=int, default=224, help="side of the JPEGs and of the training crop")
    p.add_argument("--images", type=int, default=512, help="distinct JPEG files (the split file cycles over them)")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--gpu", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.batch, args.steps, args.images, args.size) <= 0:
        p.error("--batch, --steps, --images and --size must be positive")
    return run(args)


if __name__ == "__main__":
    main()
