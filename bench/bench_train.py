"""Side-by-side training speed: the seed repository's DataLoader pipeline vs the device-resident fast path.

Runs ``train.py`` twice on the same data, model and seed, for a few epochs each:
  (a) baseline: ``--loader torch`` (torchvision DataLoader, PIL RandomCrop/Flip, worker processes, fp32);
  (b) fast:     ``--loader device`` (data and augmentation on the device) plus the speed flags given here.
and prints, for each, training images/s (epochs after the first, which pays start-up and compilation),
the wall time of one epoch with evaluation, its projection to 200 epochs, and the ratio fast / baseline.

    python bench/bench_train.py --data_path ./data                                  # GPU, full size
    python bench/bench_train.py --data_path ./data --amp --channels_last --compile   # CUDA graphs (reduce-overhead)
    python bench/bench_train.py --data_path DIR --epochs 2 --device cpu --arch resnet20   # CPU smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import train  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", required=True)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--imb_factor", default="0.01")
    p.add_argument("-a", "--arch", default="resnet32")
    p.add_argument("--epochs", type=int, default=4, help="epochs per path (the first is not timed)")
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("-j", "--workers", type=int, default=4, help="DataLoader workers of the baseline")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile_mode", default="reduce-overhead", help="with --compile (reduce-overhead: CUDA graphs)")
    p.add_argument("--target_epochs", type=int, default=200, help="epochs of the projected full run")
    p.add_argument("--seed", type=int, default=None,
                   help="training seed of both runs; it also makes cuDNN deterministic (slower), so by default none "
                        "is set and cuDNN autotunes, as in the seed repository's default runs")
    return p.parse_args(argv)


def run(args, loader: str, extra: list[str], out_dir: str) -> dict:
    """Train with ``--loader loader``; returns the per-epoch records of metrics.jsonl and the train size."""
    argv = ["--dataset", args.dataset, "--data_path", args.data_path, "--imb_factor", args.imb_factor,
            "-a", args.arch, "--epochs", str(args.epochs), "-b", str(args.batch_size), "-j", str(args.workers),
            *(["--seed", str(args.seed)] if args.seed is not None else []), "--loader", loader, "--root_log", out_dir, "--root_model", out_dir, "--exp_str", loader,
            *(["--device", args.device] if args.device else []), *extra]
    parsed = train.config.parse(train.build_parser(), argv)
    n_train = len(train.DATASETS[parsed.dataset].build("train", **train.config.dataset_kwargs(parsed)))
    train.main(argv)
    log = os.path.join(out_dir, train.RUN.run_name(vars(parsed)), "metrics.jsonl")
    return {"records": [json.loads(line) for line in open(log)], "n_train": n_train}


def speed(result: dict, target_epochs: int) -> dict:
    timed = result["records"][1:] or result["records"]
    train_time = sum(r["time_train"] for r in timed) / len(timed)
    epoch_time = sum(r["time_epoch"] for r in timed) / len(timed)
    first = result["records"][0]["time_epoch"]
    return {"images_per_s": result["n_train"] / train_time, "epoch_s": epoch_time,
            "projected_s": first + epoch_time * (target_epochs - 1),
            "best_top1": max(r["test"]["top1"] for r in result["records"])}


def main(argv=None) -> dict:
    args = parse_args(argv)
    fast_flags = [f for f, on in (("--amp", args.amp), ("--channels_last", args.channels_last),
                                  ("--compile", args.compile)) if on]
    fast_flags += ["--compile_mode", args.compile_mode] if args.compile else []
    with tempfile.TemporaryDirectory() as tmp:
        base = speed(run(args, "torch", [], os.path.join(tmp, "a")), args.target_epochs)
        fast = speed(run(args, "device", fast_flags, os.path.join(tmp, "b")), args.target_epochs)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    print(f"\n{args.arch} on {args.dataset}-LT (imb_factor {args.imb_factor}), batch {args.batch_size}, "
          f"{args.epochs} epochs per path, device: {device}, torch {torch.__version__}")
    print(f"{'path':<44}{'train img/s':>12}{'epoch s':>10}{f'{args.target_epochs} ep. s':>12}")
    for name, r in (("(a) DataLoader + PIL, fp32 (seed repo)", base),
                    (f"(b) device-resident {' '.join(fast_flags)}", fast)):
        print(f"{name:<44}{r['images_per_s']:>12.0f}{r['epoch_s']:>10.2f}{r['projected_s']:>12.1f}")
    ratio = fast["images_per_s"] / base["images_per_s"]
    print(f"ratio (b)/(a): {ratio:.2f}x images/s, {base['projected_s'] / fast['projected_s']:.2f}x wall time")
    return {"baseline": base, "fast": fast, "ratio": ratio}


if __name__ == "__main__":
    main()
