"""Side-by-side training speed: the seed repository's DataLoader pipeline vs the device-resident fast path.

Runs ``train.py`` on the same data, model and seed, for a few epochs each:
  (a) baseline: ``--loader torch`` (torchvision DataLoader, PIL RandomCrop/Flip, worker processes, fp32);
  (b) fast:     ``--loader device`` (data and augmentation on the device) plus the speed flags given here;
      with ``--variants``, one such run per variant, (b), (c), ... in one process.
and prints, for each, training images/s (epochs after the first, which pays start-up and compilation),
the wall time of one epoch with evaluation, its projection to 200 epochs, and the ratio fast / baseline.

    python bench/bench_train.py --data_path ./data                                  # GPU, full size
    python bench/bench_train.py --data_path ./data --amp --channels_last --compile   # CUDA graphs (reduce-overhead)
    python bench/bench_train.py --data_path ./data --variants eager compiled graphs  # the three fast paths at once
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
from engine.train.runlog import METRICS, read_records  # noqa: E402

# Named sets of train.py flags for --variants (all with --loader device): fp32 eager, the compiled step without
# and with CUDA graphs.
VARIANTS = {
    "eager": [],
    "compiled": ["--amp", "--channels_last", "--compile", "--compile_mode", "default"],
    "graphs": ["--amp", "--channels_last", "--compile", "--compile_mode", "reduce-overhead"],
}


def variant(text: str) -> tuple[str, list[str]]:
    """A --variants entry: a name of VARIANTS, or NAME=FLAG,FLAG,... (train.py flags, comma-separated)."""
    name, given, flags = text.partition("=")
    if given:
        if not name:
            raise argparse.ArgumentTypeError(f"{text!r}: the variant needs a name before '='")
        return name, [f for f in flags.split(",") if f]
    if name not in VARIANTS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(VARIANTS)}; "
                                         "or write NAME=FLAG,FLAG,... with train.py flags")
    return name, list(VARIANTS[name])


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
    p.add_argument("--variants", nargs="+", type=variant, default=None, metavar="VARIANT",
                   help=f"several device-loader runs after the baseline, in one process: {', '.join(VARIANTS)} or "
                        "NAME=FLAG,FLAG,... (replaces --amp/--channels_last/--compile)")
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
    train.main(argv)
    run_dir = os.path.join(out_dir, train.RUN.run_name(vars(parsed)))
    with open(os.path.join(run_dir, "final.json")) as f:
        n_train = sum(json.load(f)["cls_num_list"])
    return {"records": read_records(os.path.join(run_dir, METRICS)), "n_train": n_train}


def speed(result: dict, target_epochs: int) -> dict:
    """Training images/s and epoch time (with evaluation) over the epochs after the first; the projection of a
    ``target_epochs`` run counts the first epoch (start-up, compilation) once."""
    timed = result["records"][1:] or result["records"]
    train_time = sum(r["time_train"] for r in timed) / len(timed)
    epoch_time = sum(r["time_epoch"] for r in timed) / len(timed)
    first = result["records"][0]["time_epoch"]
    return {"images_per_s": result["n_train"] / train_time, "epoch_s": epoch_time,
            "first_epoch_s": first, "projected_s": first + epoch_time * (target_epochs - 1),
            "train_images": result["n_train"], "epochs": len(result["records"]),
            "best_top1": max(r["test"]["top1"] for r in result["records"])}


def fast_flags(args) -> list[str]:
    """The single fast variant of --amp/--channels_last/--compile/--compile_mode (without --variants)."""
    flags = [f for f, on in (("--amp", args.amp), ("--channels_last", args.channels_last),
                             ("--compile", args.compile)) if on]
    return flags + (["--compile_mode", args.compile_mode] if args.compile else [])


def compare(args, variants: list[tuple[str, list[str]]], on_result=None, on_error=None) -> dict:
    """The baseline, then each (name, train.py flags) variant with ``--loader device``; returns {name: speed}
    with the ratios to the baseline. ``on_result(name, result)`` is called after each run (partial reports);
    with ``on_error(name, exception)`` a variant that raises is reported there and the next one still runs."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, loader, flags) in enumerate([("baseline", "torch", []),
                                                    *((n, "device", f) for n, f in variants)]):
            if i > 0 and hasattr(torch, "_dynamo"):
                # a fresh dynamo cache per variant: no guard or recompile count carried over from the last model
                # (inductor's on-disk cache may still shorten a later variant's compilation)
                torch._dynamo.reset()
            try:
                r = speed(run(args, loader, flags, os.path.join(tmp, str(i))), args.target_epochs)
            except Exception as e:  # one broken variant (a compiler error, say) must not hide the others' numbers
                if i == 0 or on_error is None:
                    raise
                on_error(name, e)
                continue
            r["flags"] = flags
            if i > 0:
                base = results["baseline"]
                r["ratio"] = r["images_per_s"] / base["images_per_s"]
                r["wall_ratio"] = base["projected_s"] / r["projected_s"]
            results[name] = r
            if on_result is not None:
                on_result(name, r)
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    variants = args.variants or [("fast", fast_flags(args))]
    results = compare(args, variants)
    base = results["baseline"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    print(f"\n{args.arch} on {args.dataset}-LT (imb_factor {args.imb_factor}), batch {args.batch_size}, "
          f"{args.epochs} epochs per path, device: {device}, torch {torch.__version__}")
    print(f"{'path':<60}{'train img/s':>12}{'epoch s':>10}{f'{args.target_epochs} ep. s':>12}")
    rows = [("(a) DataLoader + PIL, fp32 (seed repo)", base)]
    rows += [(f"({chr(ord('b') + i)}) device-resident {'' if name == 'fast' else name + ': '}"
              f"{' '.join(results[name]['flags']) or 'fp32 eager'}", results[name])
             for i, (name, _) in enumerate(variants)]
    for label, r in rows:
        print(f"{label:<60}{r['images_per_s']:>12.0f}{r['epoch_s']:>10.2f}{r['projected_s']:>12.1f}")
    for i, (name, _) in enumerate(variants):
        r = results[name]
        print(f"ratio ({chr(ord('b') + i)})/(a): {r['ratio']:.2f}x images/s, {r['wall_ratio']:.2f}x wall time")
    fastest = max((name for name, _ in variants), key=lambda n: results[n]["images_per_s"])
    return {"baseline": base, "fast": results[fastest], "ratio": results[fastest]["ratio"],
            "variants": {name: results[name] for name, _ in variants}}


if __name__ == "__main__":
    main()
