"""Wiring shared by the CIFAR/SVHN scripts (train.py, train_semi.py, pretrain_rot.py).

``run_classification`` takes parsed arguments and the train/test datasets and does the rest: device and
seeds, model and loss from their registries, optional self-supervised initialisation, loaders,
``-e/--evaluate`` (with ``--posthoc`` logit corrections and ``--shifted_eval``), ``--resume``, the training
loop, and the final report.
"""
from __future__ import annotations

import argparse
import os
import random
from typing import Callable

import numpy as np
import torch

import losses
import models
from engine import distributed
from engine.checkpoint import load_checkpoint, load_model_weights, load_pretrained_backbone
from engine.config import args_to_dict, resolve_device
from engine.data import DatasetSpec, make_loader
from engine.metrics import evaluate, format_metrics
from engine.runlog import RunLog
from engine.shifted import run_shifted_eval
from engine.trainer import ClassificationStep, Trainer


def choose_seed(args: argparse.Namespace, resume_ckpt: dict | None) -> int:
    """--seed, else the resumed run's seed, else a fresh random one (recorded, so a resume can continue)."""
    if args.seed is not None:
        return args.seed
    if resume_ckpt is not None and resume_ckpt.get("seed") is not None:
        return int(resume_ckpt["seed"])
    return random.SystemRandom().randrange(2 ** 31)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python and torch (NumPy is seeded by --rand_number inside the dataset builders, as upstream)."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def start_process(args: argparse.Namespace) -> torch.device:
    """This process's device; under torchrun it first joins the process group (NCCL on GPUs, Gloo on CPUs)."""
    return distributed.init(resolve_device(args).type) or resolve_device(args)


def seed_run(args: argparse.Namespace, resume: dict | None, device: torch.device) -> int:
    """The run seed (``choose_seed``), rank 0's on every process, and seed the generators with it.

    Loaders and samplers draw their orders from the returned seed itself; torch's global generator (model
    init, DataLoader workers' augmentation) gets seed + rank so processes do not augment alike (DDP copies
    rank 0's initial weights to every process).
    """
    seed = distributed.shared_seed(choose_seed(args, resume), device)
    seed_everything(seed + distributed.rank(), deterministic=args.seed is not None)
    return seed


def uses_normed_head(loss_type: str) -> bool:
    return getattr(losses.LOSSES[loss_type], "use_norm", False)


def build_classifier(args: argparse.Namespace, num_classes: int, device: torch.device) -> torch.nn.Module:
    model = models.build_model(args.arch, num_classes, use_norm=uses_normed_head(args.loss_type)).to(device)
    if getattr(args, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    return model


def print_report(run: RunLog, title: str, metrics: dict) -> None:
    run.print(f"{title}: {format_metrics(metrics)}")
    run.print("  Class Accuracy: " + np.array2string(np.array([np.nan if a is None else a / 100.0
                                                              for a in metrics["per_class"]]), precision=3))


def check_trained_loss(args: argparse.Namespace, ckpt: dict) -> None:
    """With -e and a target-prior correction (--posthoc, --shifted_eval), the correction depends on the loss the
    model was trained with (how much of log pi_s it absorbed): refuse flags that disagree with the checkpoint's."""
    trained = ckpt.get("args") or {}
    if "loss_type" not in trained or (getattr(args, "posthoc", "none") == "none"
                                      and not getattr(args, "shifted_eval", False)):
        return
    mine = losses.trained_prior_scale(args.loss_type, args.tau)
    theirs = losses.trained_prior_scale(trained["loss_type"], float(trained.get("tau", 1.0)))
    if mine != theirs:
        raise ValueError(f"--resume {args.resume!r} was trained with --loss_type {trained['loss_type']} --tau "
                         f"{trained.get('tau', 1.0)}; the prior correction needs the same flags (given: --loss_type "
                         f"{args.loss_type} --tau {args.tau})")


def run_classification(args: argparse.Namespace, spec: DatasetSpec, train_set, test_set, name: str,
                       batch_transform: Callable | None = None) -> dict:
    """Train (or with -e evaluate) a classifier of ``train_set``; returns the summary or the evaluation.

    ``batch_transform(x, y) -> (x, y)`` lets a pretext task (rotation prediction) replace the batches.
    Under torchrun every process uses rank 0's seed and the model is wrapped in DistributedDataParallel.
    """
    device = start_process(args)
    resume = load_checkpoint(args.resume) if args.resume else None
    seed = seed_run(args, resume, device)
    if args.evaluate:
        check_trained_loss(args, resume)
    cls_num_list = train_set.get_cls_num_list()
    model = build_classifier(args, spec.num_classes, device)
    test_loader = make_loader(test_set, spec, args, device, train=False)
    run = RunLog(os.path.join(args.root_log, name), None if args.evaluate else dict(args_to_dict(args), seed=seed),
                 tensorboard=not args.evaluate)
    adjustment = losses.posthoc_adjustment(getattr(args, "posthoc", "none"), cls_num_list,
                                           getattr(args, "tau", 1.0), getattr(args, "target_prior", None),
                                           losses.trained_prior_scale(args.loss_type, getattr(args, "tau", 1.0)))
    adjustment = None if adjustment is None else adjustment.to(device)
    evaluate_fn = lambda: evaluate(model, test_loader, spec.num_classes, cls_num_list,  # noqa: E731
                                   logit_adjustment=adjustment, amp=args.amp)

    if args.evaluate:
        load_model_weights(model, resume)
        metrics = evaluate_fn()
        print_report(run, f"Evaluation of {args.resume}", metrics)
        if getattr(args, "shifted_eval", False):
            metrics["shifted"] = run_shifted_eval(model, test_loader, cls_num_list, args.loss_type, args.tau,
                                                  args.shifted_seed, run, amp=args.amp)
        return metrics

    if args.pretrained_model and resume is None:
        report = load_pretrained_backbone(model, args.pretrained_model)
        run.print(f"=> self-supervised init from {args.pretrained_model}: loaded {len(report['loaded'])} tensors, "
                  f"fresh: {report['missing']}")
    rule = losses.build_train_rule(args.train_rule, cls_num_list, args)
    criterion = losses.build_loss(args.loss_type, cls_num_list, args).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    train_loader = make_loader(train_set, spec, args, device, train=True, seed=seed,
                               sample_weights=rule.sample_weights(np.asarray(train_set.targets)))
    step = ClassificationStep(distributed.wrap_ddp(model, device), criterion, rule, batch_transform,
                              compile_mode=args.compile_mode if args.compile else None)
    meta = {"arch": args.arch, "num_classes": spec.num_classes,
            "use_norm": uses_normed_head(args.loss_type), "seed": seed, "cls_num_list": list(cls_num_list),
            "args": args_to_dict(args)}
    trainer = Trainer(model, optimizer, train_loader, step, args, run, os.path.join(args.root_model, name), meta,
                      evaluate=evaluate_fn)
    if resume is not None:
        load_model_weights(model, resume)
        trainer.restore(resume)
        run.print(f"=> resumed {args.resume} at epoch {trainer.state.epoch} (best Prec@1 {trainer.state.best_acc1:.3f})")
    run.print(f"=> {name}: {len(train_set)} training images, classes {list(cls_num_list)}, seed {seed}, "
              f"device {device}")
    summary = trainer.fit()
    if summary["last"]:
        print_report(run, f"Last epoch ({summary['epochs']})", summary["last"])
        print_report(run, f"Best epoch ({summary['best_epoch'] + 1}, selected on the test set as in the papers)",
                     summary["best"])
    run.close()
    return summary
