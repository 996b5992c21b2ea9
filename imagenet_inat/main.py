"""ImageNet-LT / iNaturalist 2018: the decoupled two-stage recipe driven by YAML configs.

    python -m imagenet_inat.main --cfg imagenet_inat/config/ImageNet_LT/feat_uniform.yaml --model_dir MOCO.pth.tar
    python -m imagenet_inat.main --cfg imagenet_inat/config/ImageNet_LT/cls_crt.yaml       # cRT on stage 1
    python -m imagenet_inat.main --cfg imagenet_inat/config/ImageNet_LT/cls_crt.yaml --test
    torchrun --nproc_per_node 8 -m imagenet_inat.main --cfg imagenet_inat/config/ImageNet_LT/feat_balance.yaml

Config keys are this script's flag names (``python -m imagenet_inat.main --help``); command-line flags win
over the config, an unknown key is an error. ``--model_dir`` is the reference's flag: when training it replaces
``init`` (the checkpoint or stage-1 folder to start from); with ``--test`` it names the checkpoint to evaluate
(default: the config's own ``log_dir``). Stages, samplers and heads: imagenet_inat/heads.py, samplers.py.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.distributed as dist

import losses
import models
from engine import config
from engine.train import distributed
from engine.train.checkpoint import (atomic_write, load_checkpoint, load_model_weights, load_pretrained_backbone,
                               save_checkpoint)
from engine.config import args_to_dict
from engine.train.experiment import Experiment, build_classifier, print_report, uses_normed_head
from engine.data.loaders import TorchLoader
from engine.data.samplers import ShardSampler
from engine.eval.metrics import collect_features, collect_logits, evaluate
from engine.train.runlog import RunLog, write_json
from engine.methods import Classification
from engine.train.runspec import RunSpec
from engine.train.trainer import LoopConfig
from imagenet_inat import reference_config
from imagenet_inat.datasets import LT_DATASETS, ListDataset, read_split_file
from imagenet_inat.heads import STAGES, freeze_backbone, tau_normalized
from imagenet_inat.samplers import SAMPLERS, build_sampler, shard_union

IMAGENET_ARCHS = [name for name in models.resnet.__all__ if name in models.ARCHS]
SPLITS = ("train", "val", "test")
FEATURE_SPLITS = ("train_plain", "val", "test")
BEST, LAST = "ckpt.best.pth.tar", "ckpt.pth.tar"
REFERENCE_BEST = "final_model_checkpoint.pth"  # what the reference code's run folders hold
# A stage's logs, checkpoints and final.json all go to --log_dir, as in the reference code.
RUN = RunSpec(outputs={"final": "{log_dir}/final.json", "checkpoint": "{log_dir}/" + LAST,
                       "best_checkpoint": "{log_dir}/" + BEST, "log_dir": "{log_dir}"},
              folders={"log_dir": "{run}/log"}, subset_seed=False, exp_str=False, translate=reference_config.translate)


def build_parser() -> argparse.ArgumentParser:
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="ImageNet_LT", choices=sorted(LT_DATASETS),
                   help="normalisation, colour jitter, class count and split-file names")
    g.add_argument("--data_path", "--data_root", default="./data",
                   help="folder the split files' image paths are relative to (--data_root: the reference's name)")
    for split in SPLITS:
        g.add_argument(f"--{split}_split", default=None,
                       help=f"{split} split file (default: the dataset's file name inside --data_root)")
    g.add_argument("--num_classes", type=int, default=None, help="default: the dataset's (1000, 8142)")
    g.add_argument("--crop_size", type=int, default=224, help="training crop and evaluation centre crop")
    g.add_argument("--resize_size", type=int, default=256, help="evaluation: shorter side before the centre crop")

    g = p.add_argument_group("model and loss")
    g.add_argument("-a", "--arch", default="resnet50", choices=IMAGENET_ARCHS, help="backbone + linear head fc")
    g.add_argument("--loss_type", default="CE", choices=sorted(losses.LOSSES), help="loss (the reference: CE)")
    g.add_argument("--train_rule", default="None", choices=sorted(n for n, r in losses.TRAIN_RULES.items()
                                                                   if not r.resample),
                   help="loss re-weighting rule (re-sampling is --sampler)")
    config.add_loss_args(p)

    g = p.add_argument_group("stage")
    g.add_argument("--stage", default="feature", choices=sorted(STAGES),
                   help="feature: joint training; crt: new head on the frozen backbone; tau_norm: rescale the head")
    g.add_argument("--init", default=None,
                   help="start from: a MoCo/rotation checkpoint (backbone only), a stage-1 checkpoint or run folder")
    g.add_argument("--sampler", default="instance", choices=sorted(SAMPLERS), help="training sampler")
    g.add_argument("--samples_per_class", type=int, default=4, help="class_aware: consecutive draws per class")
    g.add_argument("--freeze_bn", action=argparse.BooleanOptionalAction, default=False,
                   help="crt: keep the frozen backbone's BatchNorm statistics (the reference re-estimates them)")
    g.add_argument("--tau_grid", type=float, nargs="+", default=[round(0.1 * i, 1) for i in range(11)],
                   help="tau_norm: values of tau tried on the validation split")

    config.add_optim_args(p, epochs=90, batch_size=128, lr=0.2, weight_decay=5e-4, schedule="cosine",
                          warmup_epochs=0)
    p.add_argument("--batch_size", dest="batch_size", type=int, default=argparse.SUPPRESS,
                   help="total batch size over all processes (same as -b)")
    config.add_speed_args(p)
    p.set_defaults(loader="torch", eval_batch_size=256)

    g = p.add_argument_group("run")
    config.add_process_args(g, gpu=0, print_freq=50, workers=8, config_flags=("--cfg",),
                            config_required=True)
    g.add_argument("--test", action="store_true", help="evaluate a checkpoint (--model_dir, else log_dir's best)")
    g.add_argument("--model_dir", default=None,
                   help="training: replaces init; --test: the checkpoint file or run folder to evaluate")
    g.add_argument("--log_dir", default="./log/imagenet_inat", help="this stage's logs and checkpoints")
    g.add_argument("--output_logits", nargs="?", const=True, default=False, type=config.boolean,
                   help="also save logits_{split}.npz of the final split (also --output_logits True/False)")
    g.add_argument("--save_feat", default="", choices=["", *FEATURE_SPLITS],
                   help="with --test: instead of evaluating, save the head's input features of this split (train_plain: "
                        "the training images with the evaluation transform) to {log_dir}/{split}feat_all.npz")
    return p


# -- validation ---------------------------------------------------------------------------------------------
def checkpoint_path(path: str, flag: str) -> str:
    """A checkpoint file, or the best checkpoint of a run folder (ours, else the reference code's)."""
    if os.path.isdir(path):
        ours, reference = os.path.join(path, BEST), os.path.join(path, REFERENCE_BEST)
        path = reference if not os.path.isfile(ours) and os.path.isfile(reference) else ours
    if not os.path.isfile(path):
        raise ValueError(f"{flag}: no checkpoint at {path!r} (give a checkpoint file, or a run folder holding {BEST} "
                         f"or the reference code's {REFERENCE_BEST})")
    return path


def resolve_splits(args: argparse.Namespace) -> None:
    """Fill in default split paths and check them against num_classes and the data root."""
    spec = LT_DATASETS[args.dataset]
    args.num_classes = args.num_classes or spec.num_classes
    if not os.path.isdir(args.data_path):
        raise ValueError(f"--data_root: no folder {args.data_path!r}")
    for split in SPLITS:
        key = f"{split}_split"
        if getattr(args, key) is None and split in spec.list_files:
            setattr(args, key, os.path.join(args.data_path, spec.list_files[split]))
        path = getattr(args, key)
        if path is None:
            continue
        paths, labels = read_split_file(path)
        if labels.max() >= args.num_classes:
            raise ValueError(f"--{key} {path!r} has label {int(labels.max())} but num_classes is {args.num_classes}")
        if not os.path.isfile(os.path.join(args.data_path, paths[0])):
            raise ValueError(f"--{key} {path!r}: its first image {paths[0]!r} is not under --data_root "
                             f"{args.data_path!r}: is the data root right?")
        if split == "train":
            empty = np.flatnonzero(np.bincount(labels, minlength=args.num_classes) == 0)
            if len(empty):
                raise ValueError(f"--{key} {path!r} has no image of classes {empty[:10].tolist()} "
                                 f"({len(empty)} of num_classes={args.num_classes}): set num_classes")
            if len(labels) < args.batch_size:
                raise ValueError(f"--batch_size {args.batch_size} exceeds the {len(labels)} training images of "
                                 f"{path!r}: an epoch would have no step")


def validate(args: argparse.Namespace) -> None:
    stage = STAGES[args.stage]
    config.validate_run(args)
    for flag, value in (("--eval_batch_size", args.eval_batch_size), ("--crop_size", args.crop_size),
                        ("--samples_per_class", args.samples_per_class)):
        if value <= 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    if args.resize_size < args.crop_size:
        raise ValueError(f"--resize_size ({args.resize_size}) must be >= --crop_size ({args.crop_size})")
    if args.loader != "torch":
        raise ValueError("--loader must be torch here: images are decoded by DataLoader workers "
                         "(--loader device holds CIFAR-size arrays on the device)")
    if args.freeze_bn and args.stage != "crt":
        raise ValueError(f"freeze_bn applies to stage crt (the frozen backbone), not stage {args.stage}")
    if args.stage == "tau_norm" and uses_normed_head(args.loss_type):
        raise ValueError(f"stage tau_norm rescales a dot-product head; --loss_type {args.loss_type} uses a cosine head")
    if args.save_feat and not args.test:
        raise ValueError("--save_feat saves the features of a trained model: add --test (and --model_dir)")
    if args.test:
        checkpoint_path(args.model_dir or args.log_dir, "--model_dir" if args.model_dir else "--test (log_dir)")
        if args.resume:
            raise ValueError("--resume continues training; with --test give the checkpoint as --model_dir")
    else:
        init = args.model_dir or args.init
        if stage.needs_init and not init:
            raise ValueError(f"stage {args.stage} starts from a trained model: set init (or --model_dir) to the "
                             "stage-1 run folder or checkpoint")
        if init and not args.resume:
            source = checkpoint_path(init, "--model_dir" if args.model_dir else "init")
            if os.path.realpath(os.path.dirname(source)) == os.path.realpath(args.log_dir):
                raise ValueError(f"log_dir {args.log_dir!r} is the folder of the checkpoint this stage starts from: "
                                 "give this stage its own log_dir, or it overwrites stage 1's checkpoints")
        if args.resume and not stage.trains:
            raise ValueError(f"--resume continues training; stage {args.stage} does not train")
        if args.resume and not os.path.isfile(args.resume):
            raise ValueError(f"--resume: no file {args.resume!r}")
    resolve_splits(args)
    if args.save_feat and args.save_feat != "train_plain" and getattr(args, f"{args.save_feat}_split") is None:
        raise ValueError(f"--save_feat {args.save_feat}: {args.dataset} has no {args.save_feat} split "
                         f"(set --{args.save_feat}_split)")
    check_checkpoints(args)


def check_checkpoints(args: argparse.Namespace) -> None:
    """The checkpoint this stage reads (--test's, --resume, or init's), loaded and checked against the model."""
    use_norm = uses_normed_head(args.loss_type)
    model = (args.arch, args.num_classes, use_norm, "--num_classes or --dataset")
    if args.test or args.resume:
        flag = "--resume" if args.resume else "--model_dir" if args.model_dir else "--test (log_dir)"
        path = args.resume or checkpoint_path(args.model_dir or args.log_dir, flag)
        config.check_classifier_checkpoint(path, flag, *model, resumable=bool(args.resume))
    elif args.model_dir or args.init:
        flag = "--model_dir" if args.model_dir else "init"
        path = checkpoint_path(args.model_dir or args.init, flag)
        if STAGES[args.stage].load == "model":
            config.check_classifier_checkpoint(path, flag, *model)
        else:
            config.check_backbone_checkpoint(path, flag, config.classifier_state(*model[:3]))


# -- data -------------------------------------------------------------------------------------------------
def build_splits(args: argparse.Namespace) -> dict[str, ListDataset]:
    """train/val/test as given; for --save_feat train_plain also the training list with the evaluation transform."""
    spec = LT_DATASETS[args.dataset]
    out = {}
    for split in (*SPLITS, "train_plain") if args.save_feat == "train_plain" else SPLITS:
        path = getattr(args, f"{split.removesuffix('_plain')}_split")
        if path is not None:
            out[split] = spec.build(split.removesuffix("_plain"), data_path=args.data_path, list_file=path,
                                    augment=split == "train", crop_size=args.crop_size,
                                    resize_size=args.resize_size, num_classes=args.num_classes)
    return out


def eval_loader(dataset: ListDataset, args, device: torch.device) -> TorchLoader:
    """Dataset order, each rank its shard (exact metrics once ``evaluate`` sums the ranks' confusions)."""
    return TorchLoader(dataset, batch_size=args.eval_batch_size, device=device, train=False, workers=args.workers,
                       sampler=ShardSampler(len(dataset)), channels_last=args.channels_last)


def train_loader(dataset: ListDataset, args, device: torch.device, seed: int) -> TorchLoader:
    """floor(N / batch) steps per epoch; each rank takes batch / world of every global batch."""
    sampler = build_sampler(args.sampler, dataset.targets, seed, args.samples_per_class)
    return TorchLoader(dataset, batch_size=distributed.per_process_batch(args.batch_size, "--batch_size"),
                       device=device, train=True, workers=args.workers, sampler=sampler, drop_last=True,
                       channels_last=args.channels_last, seed=seed)


# -- distributed helpers ------------------------------------------------------------------------------------
def gather_shards(array: np.ndarray) -> np.ndarray:
    """The full array from the ranks' ``ShardSampler`` shards."""
    if distributed.world_size() == 1:
        return array
    shards = [None] * distributed.world_size()
    dist.all_gather_object(shards, array)
    return shard_union(shards)


def replica_checksum(model: torch.nn.Module) -> float:
    """Sum of every parameter and buffer: identical on all ranks when DDP keeps the replicas in sync."""
    return float(sum(t.double().sum().item() for t in [*model.parameters(), *model.buffers()]))


# -- evaluation and outputs -----------------------------------------------------------------------------
def evaluate_split(model, loader, args, counts) -> dict:
    """Top-1/5, per-class and many/medium/few accuracy (rank 0's BatchNorm statistics on every rank)."""
    return evaluate(model, loader, args.num_classes, counts, amp=args.amp)


@torch.no_grad()
def final_report(model, splits, args, counts, run: RunLog, title: str) -> dict:
    """Evaluate on test (else val), print it, write {log_dir}/eval_{split}.json and optionally the logits."""
    split = "test" if "test" in splits else "val"
    loader = eval_loader(splits[split], args, next(model.parameters()).device)
    metrics = dict(evaluate_split(model, loader, args, counts), split=split)
    print_report(run, f"{title} on {split}", metrics)
    run.print(f"  Macro F1 (averaged F-measure): {metrics['macro_f1']:.3f}")
    if args.output_logits:
        logits, labels = (gather_shards(t.numpy()) for t in collect_logits(model, loader, args.amp))
        if distributed.is_main():
            atomic_write(os.path.join(args.log_dir, f"logits_{split}.npz"),
                         lambda f: np.savez(f, logits=logits, labels=labels, paths=splits[split].paths))
    if distributed.is_main():
        write_json(os.path.join(args.log_dir, f"eval_{split}.json"), metrics)
    return metrics


# -- stages -------------------------------------------------------------------------------------------------
def initialise(model, args, run: RunLog) -> None:
    """Load ``init`` (or --model_dir) as the stage asks: the backbone only, or the whole classifier."""
    init = args.model_dir or args.init
    if not init:
        return
    flag = "--model_dir" if args.model_dir else "init"
    path = checkpoint_path(init, flag)
    if STAGES[args.stage].load == "model":
        load_model_weights(model, load_checkpoint(path, flag), flag)
        run.print(f"=> whole classifier from {path}")
        return
    report = load_pretrained_backbone(model, path, flag)
    run.print(f"=> backbone from {path}: {len(report['loaded'])} tensors loaded, fresh: {report['missing']}")


def train(model, splits, args, exp: Experiment, meta: dict) -> dict:
    """Stages feature and crt: the core Trainer with model selection on val, then the final test."""
    device, run = exp.device, exp.run
    counts = splits["train"].get_cls_num_list()
    trainable = list(model.parameters()) if STAGES[args.stage].train_backbone else freeze_backbone(model)
    net = distributed.wrap_ddp(model, device)
    criterion = config.loss_from_args(args, counts).to(device)
    rule = config.train_rule_from_args(args, counts)
    method = Classification(model, criterion, rule, net=net, amp=args.amp, freeze_bn=args.freeze_bn,
                            compile_mode=args.compile_mode if args.compile else None)
    optimizer = torch.optim.SGD(trainable, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    val_loader = eval_loader(splits["val"], args, device)
    if exp.resume is not None:
        load_model_weights(model, exp.resume)
    summary = exp.fit(method, optimizer, train_loader(splits["train"], args, device, exp.seed),
                      config.schedule_from_args(args),
                      LoopConfig(args.epochs, args.start_epoch, args.print_freq), args.log_dir, meta,
                      evaluate=lambda: evaluate_split(model, val_loader, args, counts))
    if distributed.world_size() > 1:
        print(f"=> rank {distributed.rank()}/{distributed.world_size()}: replica checksum "
              f"{replica_checksum(model):.10e}", flush=True)
    print_report(run, f"Last epoch ({summary['epochs']}) on val", summary["last"])
    print_report(run, f"Best epoch ({summary['best_epoch'] + 1}) on val", summary["best"])
    distributed.barrier()
    best = os.path.join(args.log_dir, BEST)
    load_model_weights(model, load_checkpoint(best, "best checkpoint"), "best checkpoint")
    title = f"Best-on-val model (epoch {summary['best_epoch'] + 1})"
    summary["final"] = final_report(model, splits, args, counts, run, title)
    summary["selection"] = "best = highest val top-1 over epochs; final = that model on test (val if no test split)"
    run.final(summary)
    return summary


def tau_norm(model, splits, args, exp: Experiment, meta: dict) -> dict:
    """Stage tau_norm: choose tau on val, save the rescaled classifier, evaluate it on test."""
    device, run = exp.device, exp.run
    counts = splits["train"].get_cls_num_list()
    val_loader = eval_loader(splits["val"], args, device)
    fc = model.fc
    sweep = {}
    for tau in args.tau_grid:
        model.fc = tau_normalized(fc, tau)
        sweep[tau] = evaluate_split(model, val_loader, args, counts)["top1"]
        run.print(f"tau {tau:g}: val Prec@1 {sweep[tau]:.3f}")
    best_tau = max(sweep, key=sweep.get)
    model.fc = tau_normalized(fc, best_tau)
    run.print(f"=> tau = {best_tau:g} (best val Prec@1 {sweep[best_tau]:.3f})")
    if distributed.is_main():
        state = dict(meta, seed=exp.seed, epoch=0, state_dict=model.state_dict(), tau=best_tau,
                     best_acc1=sweep[best_tau])
        save_checkpoint(state, os.path.join(args.log_dir, LAST), os.path.join(args.log_dir, BEST))
    summary = {"tau": best_tau, "val_top1_by_tau": {str(t): a for t, a in sweep.items()},
               "final": final_report(model, splits, args, counts, run, f"tau-normalised (tau={best_tau:g})")}
    run.final(summary)
    return summary


STAGE_RUNNERS = {"feature": train, "crt": train, "tau_norm": tau_norm}


@torch.no_grad()
def save_features(model, splits, args, run: RunLog) -> dict:
    """--save_feat: {log_dir}/{split}feat_all.npz with feats (N, D), labels and paths, in the split file's order."""
    split = args.save_feat
    loader = eval_loader(splits[split], args, next(model.parameters()).device)
    feats, labels = (gather_shards(t.numpy()) for t in collect_features(model, loader, args.amp))
    path = os.path.join(args.log_dir, f"{split.removesuffix('_plain')}feat_all.npz")
    if distributed.is_main():
        atomic_write(path, lambda f: np.savez(f, feats=feats, labels=labels, paths=splits[split].paths))
        run.print(f"=> saved {feats.shape[0]} x {feats.shape[1]} features of {split} to {path}")
    return {"features": path, "split": split, "shape": list(feats.shape)}


def run_test(model, splits, args, run: RunLog) -> dict:
    flag = "--model_dir" if args.model_dir else "--test (log_dir)"
    path = checkpoint_path(args.model_dir or args.log_dir, flag)
    load_model_weights(model, load_checkpoint(path, flag), flag)
    if args.save_feat:
        return dict(save_features(model, splits, args, run), checkpoint=path)
    return dict(final_report(model, splits, args, splits["train"].get_cls_num_list(), run, f"Evaluation of {path}"),
                checkpoint=path)


def run(args: argparse.Namespace) -> dict:
    distributed.per_process_batch(args.batch_size, "--batch_size")  # checked before any work
    trains = STAGES[args.stage].trains and not args.test
    exp = Experiment(log_dir=args.log_dir, record=None if args.test else args_to_dict(args),
                     device=config.resolve_device(args), seed=args.seed,
                     resume="" if args.test else args.resume, tensorboard=trains,
                     dist_timeout=args.dist_timeout, figures=args.figures)
    splits = build_splits(args)
    model = build_classifier(args.arch, args.num_classes, args.loss_type, exp.device, args.channels_last)
    exp.run.print(f"=> {args.dataset} stage {args.stage}: " + ", ".join(f"{s} {len(d)}" for s, d in splits.items())
                  + f" images, {args.num_classes} classes, {args.arch}, {distributed.world_size()} process(es), "
                  f"seed {exp.seed}, {exp.device}")
    try:
        if args.test:
            return run_test(model, splits, args, exp.run)
        if exp.resume is None:
            initialise(model, args, exp.run)
        meta = {"arch": args.arch, "num_classes": args.num_classes, "use_norm": uses_normed_head(args.loss_type),
                "stage": args.stage, "cls_num_list": splits["train"].get_cls_num_list(), "args": args_to_dict(args)}
        return STAGE_RUNNERS[args.stage](model, splits, args, exp, meta)
    finally:
        exp.close()


def main(argv=None) -> dict:
    args = config.parse(build_parser(), argv, validate, reference_config.translate)
    try:
        return run(args)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    config.run_cli(main)
