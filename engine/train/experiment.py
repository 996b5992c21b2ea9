"""The one experiment runner, and the classification run that train.py, train_semi.py and pretrain_rot.py share.

``Experiment`` is what every script's run has in common: the device (and the process group under torchrun), the
seed, the checkpoint to resume, the run log, and the training loop of a method (``engine.methods``).
``run_classification`` takes a ``ClassifierRun`` (explicit settings, built from the flags by
``engine.config.classifier_run``) and the train/test datasets and does the rest: model and loss from their
registries, optional self-supervised initialisation, loaders, ``evaluate`` (with post-hoc logit corrections and
the shifted-prior protocol), resume, the training loop, and the final report.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

import losses
import models
from engine.train import distributed
from engine.train.checkpoint import load_checkpoint, load_model_weights, load_pretrained_backbone
from engine.data.datasets import DatasetSpec, make_loader
from engine.eval.metrics import evaluate, format_metrics
from engine.data import subsets
from engine.train.runlog import RunLog, write_json
from engine.eval.shifted import run_shifted_eval
from engine.methods import Classification, Method
from engine.train.schedules import LRSchedule
from engine.train.trainer import LoopConfig, Trainer


def choose_seed(seed: int | None, resume_ckpt: dict | None) -> int:
    """``seed`` (--seed), else the resumed run's seed, else a fresh random one (recorded, so a resume can
    continue)."""
    if seed is not None:
        return seed
    if resume_ckpt is not None and resume_ckpt.get("seed") is not None:
        return int(resume_ckpt["seed"])
    return random.SystemRandom().randrange(2 ** 31)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python and torch (NumPy is seeded by --rand_number inside the dataset builders, as upstream)."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def start_process(device: torch.device, dist_timeout: float = distributed.DEFAULT_TIMEOUT) -> torch.device:
    """This process's device; under torchrun it first joins the process group (NCCL on GPUs, Gloo on CPUs),
    where a process that stops answering for ``dist_timeout`` seconds ends the job."""
    return distributed.init(device.type, timeout=dist_timeout) or device


def seed_run(seed: int | None, resume: dict | None, device: torch.device) -> int:
    """The run seed (``choose_seed``), rank 0's on every process, and seed the generators with it.

    Loaders and samplers draw their orders and augmentations from the returned seed itself; torch's global
    generator (model init) gets seed + rank (DDP copies rank 0's initial weights to every process), and the
    Trainer reseeds it every epoch. A given seed also makes cuDNN deterministic.
    """
    chosen = distributed.shared_seed(choose_seed(seed, resume), device)
    seed_everything(chosen + distributed.rank(), deterministic=seed is not None)
    return chosen


class Experiment:
    """The one experiment runner: device, seed, resume, run log, and the training loop of a method.

    ``Experiment(log_dir=..., record=flags)`` joins the process group under torchrun, loads the ``resume``
    checkpoint, seeds every generator (``seed_run``) and opens the run log (writing ``args.yaml`` from
    ``record`` plus the seed; ``record=None`` for an evaluation, which writes no configuration). Build the
    model after it, so that its initial weights follow the seed; then ``fit`` runs a method and ``close``
    ends the log.
    """

    def __init__(self, *, log_dir: str, record: dict | None, device: torch.device, seed: int | None = None,
                 resume: str = "", tensorboard: bool = True, dist_timeout: float = distributed.DEFAULT_TIMEOUT,
                 figures: bool = True):
        self.device = start_process(device, dist_timeout)
        self.resume_path = resume
        self.resume = load_checkpoint(resume) if resume else None
        self.seed = seed_run(seed, self.resume, self.device)
        self.run = RunLog(log_dir, None if record is None else dict(record, seed=self.seed), tensorboard=tensorboard,
                          figures=figures)

    def fit(self, method: Method, optimizer: torch.optim.Optimizer, loader, schedule: Callable[[int], float],
            loop: LoopConfig, ckpt_dir: str | None, meta: dict, evaluate: Callable[[], dict | None] | None = None,
            final: dict | None = None) -> dict:
        """Train ``method`` (continuing the resumed run; its weights are loaded by the caller) and return the
        summary: last and best epoch (plus ``final``'s entries, which final.json records too)."""
        trainer = Trainer(method, optimizer, loader, schedule, loop, self.run, ckpt_dir, dict(meta, seed=self.seed),
                          evaluate=evaluate, final=final)
        if self.resume is not None:
            trainer.restore(self.resume, self.resume_path)
            self.run.print(f"=> resumed {self.resume_path} at epoch {trainer.state.epoch} "
                           f"(best Prec@1 {trainer.state.best_acc1:.3f})")
        return trainer.fit()

    def close(self) -> None:
        self.run.close()


def uses_normed_head(loss_type: str) -> bool:
    return getattr(losses.LOSSES[loss_type], "use_norm", False)


def build_classifier(arch: str, num_classes: int, loss_type: str, device: torch.device,
                     channels_last: bool = False) -> torch.nn.Module:
    """``models.build_model(arch)`` with the head ``loss_type`` needs (cosine for LDAM), on ``device``."""
    model = models.build_model(arch, num_classes, use_norm=uses_normed_head(loss_type)).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def print_report(run: RunLog, title: str, metrics: dict) -> None:
    run.print(f"{title}: {format_metrics(metrics)}")
    run.print("  Class Accuracy: " + np.array2string(np.array([np.nan if a is None else a / 100.0
                                                              for a in metrics["per_class"]]), precision=3))


@dataclass(frozen=True)
class ClassifierRun:
    """What ``run_classification`` trains and how (``engine.config.classifier_run`` builds it from the flags).

    ``record``: the resolved configuration, written to args.yaml and into every checkpoint. ``loss_kwargs`` /
    ``rule_kwargs``: the hyper-parameters of ``loss_type`` / ``train_rule``; ``tau`` is also the post-hoc
    correction's. ``loader``: the keywords of ``engine.data.datasets.make_loader``. ``evaluate``: evaluate the ``resume``
    checkpoint instead of training (with the ``posthoc`` correction, or the shifted-prior protocol).
    """
    name: str
    log_dir: str
    ckpt_dir: str
    record: dict
    device: torch.device
    arch: str
    loss_type: str
    train_rule: str
    schedule: LRSchedule
    loop: LoopConfig
    loader: dict
    loss_kwargs: dict = field(default_factory=dict)
    rule_kwargs: dict = field(default_factory=dict)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    seed: int | None = None
    resume: str = ""
    dist_timeout: float = distributed.DEFAULT_TIMEOUT
    evaluate: bool = False
    pretrained_model: str = ""
    figures: bool = True
    amp: bool = False
    channels_last: bool = False
    compile_mode: str | None = None
    posthoc: str = "none"
    tau: float = 1.0
    target_prior: tuple = ()
    shifted_eval: bool = False
    shifted_seed: int = 0


def check_trained_loss(cfg: ClassifierRun, ckpt: dict) -> None:
    """With -e and a target-prior correction (--posthoc, --shifted_eval), the correction depends on the loss the
    model was trained with (how much of log pi_s it absorbed): refuse flags that disagree with the checkpoint's."""
    trained = ckpt.get("args") or {}
    if "loss_type" not in trained or (cfg.posthoc == "none" and not cfg.shifted_eval):
        return
    mine = losses.trained_prior_scale(cfg.loss_type, cfg.tau)
    theirs = losses.trained_prior_scale(trained["loss_type"], float(trained.get("tau", 1.0)))
    if mine != theirs:
        raise ValueError(f"--resume {cfg.resume!r} was trained with --loss_type {trained['loss_type']} --tau "
                         f"{trained.get('tau', 1.0)}; the prior correction needs the same flags (given: --loss_type "
                         f"{cfg.loss_type} --tau {cfg.tau})")


def evaluate_checkpoint(cfg: ClassifierRun, exp: Experiment, model, test_loader, cls_num_list, evaluate_fn) -> dict:
    """-e: the ``resume`` checkpoint's metrics (and the shifted-prior table with ``shifted_eval``)."""
    load_model_weights(model, exp.resume)
    metrics = evaluate_fn()
    print_report(exp.run, f"Evaluation of {cfg.resume}", metrics)
    if cfg.shifted_eval:
        metrics["shifted"] = run_shifted_eval(model, test_loader, cls_num_list, cfg.loss_type, cfg.tau,
                                              cfg.shifted_seed, exp.run, amp=cfg.amp)
        exp.run.figures()  # shifted.png
    return metrics


CONFUSION_CLASSES = 100  # up to this many classes, final.json keeps the confusion matrices (the figures draw them)


def subset_parts(train_set, test_set, val_set, num_classes: int) -> dict:
    """The provenance records (``engine.data.subsets.part_record``) of a run's subsets whose indices are known:
    the training subset (for a semi-supervised set, its labeled part, and its unlabeled draw from the pool with
    the pseudo-label counts), the test part and the validation part."""
    def record(indices, targets):
        return subsets.part_record(indices, targets, num_classes)

    parts = {}
    targets = np.asarray(train_set.targets)
    if getattr(train_set, "labeled_indices", None) is not None:
        n = train_set.num_labeled
        parts["train"] = record(train_set.labeled_indices, targets[:n])
        parts["unlabeled"] = record(train_set.unlabeled_indices, targets[n:])
    elif getattr(train_set, "indices", None) is not None:
        parts["train"] = record(train_set.indices, targets)
    for name, dataset in (("test", test_set), ("val", val_set)):
        if getattr(dataset, "indices", None) is not None:
            parts[name] = record(dataset.indices, dataset.targets)
    return parts


def write_subsets(run: RunLog, dataset: str, parts: dict) -> None:
    """``subsets.json`` in the run's log folder (engine/data/subsets.py), when any part's indices are known."""
    if parts and run.enabled:
        write_json(os.path.join(run.dir, subsets.FILE), {"format": subsets.FORMAT, "dataset": dataset,
                                                         "parts": parts})


def run_classification(cfg: ClassifierRun, spec: DatasetSpec, train_set, test_set,
                       method_class: type[Classification] = Classification, val_set=None) -> dict:
    """Train (or with ``cfg.evaluate`` evaluate) a classifier of ``train_set``; returns the summary or the
    evaluation.

    ``method_class``: ``Classification`` or a subclass (``RotationPrediction`` replaces the batches; a method
    with ``views`` > 1 gets that many views of each image). ``val_set``: a validation part, evaluated every epoch
    beside ``test_set`` for model selection (the summary's ``val_selected``). Under torchrun every process uses
    rank 0's seed and the model is wrapped in DistributedDataParallel. A training run writes its subsets'
    indices to ``subsets.json`` in its log folder, their SHA-256 in args.yaml and final.json.
    """
    parts = subset_parts(train_set, test_set, val_set, spec.num_classes)
    hashes = {name: part["sha256"] for name, part in parts.items()}
    exp = Experiment(log_dir=cfg.log_dir, record=None if cfg.evaluate else dict(cfg.record, subset_sha256=hashes),
                     device=cfg.device, seed=cfg.seed, resume=cfg.resume, tensorboard=not cfg.evaluate,
                     dist_timeout=cfg.dist_timeout, figures=cfg.figures)
    device, run = exp.device, exp.run
    if not cfg.evaluate:
        write_subsets(run, spec.name, parts)
    if cfg.evaluate:
        check_trained_loss(cfg, exp.resume)
    cls_num_list = train_set.get_cls_num_list()
    model = build_classifier(cfg.arch, spec.num_classes, cfg.loss_type, device, cfg.channels_last)
    test_loader = make_loader(test_set, spec, device, train=False, **cfg.loader)
    adjustment = losses.posthoc_adjustment(cfg.posthoc, cls_num_list, cfg.tau, list(cfg.target_prior),
                                           losses.trained_prior_scale(cfg.loss_type, cfg.tau))
    adjustment = None if adjustment is None else adjustment.to(device)
    val_loader = None if val_set is None else make_loader(val_set, spec, device, train=False, **cfg.loader)

    def evaluate_fn() -> dict:
        test = evaluate(model, test_loader, spec.num_classes, cls_num_list, logit_adjustment=adjustment, amp=cfg.amp,
                        confusion=spec.num_classes <= CONFUSION_CLASSES)
        if val_loader is not None:
            test["val"] = evaluate(model, val_loader, spec.num_classes, cls_num_list, logit_adjustment=adjustment,
                                   amp=cfg.amp)
        return test

    if cfg.evaluate:
        return evaluate_checkpoint(cfg, exp, model, test_loader, cls_num_list, evaluate_fn)

    if cfg.pretrained_model and exp.resume is None:
        report = load_pretrained_backbone(model, cfg.pretrained_model)
        run.print(f"=> self-supervised init from {cfg.pretrained_model}: loaded {len(report['loaded'])} tensors, "
                  f"fresh: {report['missing']}")
    rule = losses.build_train_rule(cfg.train_rule, cls_num_list, **cfg.rule_kwargs)
    criterion = losses.build_loss(cfg.loss_type, cls_num_list, **cfg.loss_kwargs).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    train_loader = make_loader(train_set, spec, device, train=True, seed=exp.seed,
                               sample_weights=rule.sample_weights(np.asarray(train_set.targets)),
                               views=method_class.views, **cfg.loader)
    method = method_class(model, criterion, rule, net=distributed.wrap_ddp(model, device), amp=cfg.amp,
                          compile_mode=cfg.compile_mode)
    meta = {"arch": cfg.arch, "num_classes": spec.num_classes, "use_norm": uses_normed_head(cfg.loss_type),
            "cls_num_list": list(cls_num_list), "args": cfg.record}
    if exp.resume is not None:
        load_model_weights(model, exp.resume)
    run.print(f"=> {cfg.name}: {len(train_set)} training images, classes {list(cls_num_list)}, seed {exp.seed}, "
              f"device {device}")
    summary = exp.fit(method, optimizer, train_loader, cfg.schedule, cfg.loop, cfg.ckpt_dir, meta,
                      evaluate=evaluate_fn, final={"subset_sha256": hashes, "cls_num_list": list(cls_num_list),
                                                   "class_names": list(getattr(train_set, "classes", []))})
    if summary["last"]:
        print_report(run, f"Last epoch ({summary['epochs']})", summary["last"])
        if "val_selected" in summary:
            print_report(run, f"Epoch selected on the validation part ({summary['val_selected']['epoch'] + 1}; "
                              f"val Prec@1 {summary['val_selected']['val_top1']:.3f}), on the test part",
                         summary["val_selected"])
        print_report(run, f"Best epoch ({summary['best_epoch'] + 1}, selected on the test set as in the papers)",
                     summary["best"])
    exp.close()
    return summary
