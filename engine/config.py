"""One argument builder for every script: the upstream flags and defaults, YAML configs, validation.

Precedence: argparse defaults (the upstream ones) < ``--config FILE.yaml`` (its ``_base_`` files first) < flags
on the command line. YAML keys are the flags' destination names (``imb_factor``, ``batch_size``,
``weight_decay``...) or their long option names (``data_root`` for ``--data_path``'s alias); dashes are accepted
for underscores. An unknown key, a value outside a flag's choices or a bad value is an error before anything
runs, naming the key and the file.
"""
from __future__ import annotations

import argparse
import difflib
import errno
import math
import os
import pickle
import shutil
import sys
import threading
import warnings
from typing import Callable, Iterable, Sequence

import torch
import yaml

import losses
import models
import registry
from engine.train import distributed
from engine.data.datasets import unlabeled_source_choices
from engine.train.checkpoint import (CheckpointError, backbone_fit, check_resumable, describe, load_checkpoint,
                                     model_state, state_mismatch, torch_write_failed)
from engine.train.experiment import ClassifierRun, uses_normed_head
from engine.data.longtail import IMB_TYPES, check_imb_factor
from engine.train.schedules import SCHEDULES, LRSchedule
from engine.train.trainer import LoopConfig


class UsageError(ValueError):
    """The command line, or a file it names (a --config file, a checkpoint, a data file), is wrong: the run is
    refused before it starts (exit status 2, see ``run_cli``)."""


def one_line(message: object) -> str:
    """``message`` on one line (library errors may span several)."""
    return " ".join(str(message).split())


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors, ``PROG: error: MESSAGE``, exit status 2 (without the usage block, which
    would make every refused command a screenful; ``--help`` shows it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def add_data_args(p: argparse.ArgumentParser, datasets: Iterable[str], default: str = "cifar10",
                  data_aliases: Sequence[str] = ()) -> None:
    """--dataset (choices: ``datasets``, a view of engine.data.datasets.DATASETS read now, so register a data set before
    building the parser) and the long-tail flags of ``DatasetSpec.build``; ``data_aliases``: other spellings of
    --data_path (a reference script's, e.g. --data)."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=default, choices=list(datasets), help="dataset")
    g.add_argument("--data_path", *data_aliases, default="./data", help="folder holding the dataset files")
    g.add_argument("--imb_type", default="exp", choices=list(IMB_TYPES),
                   help="long-tail profile: exp (n_i = n_max / rho^(i/(C-1))), step (n_max for the first half of "
                        "the classes, n_max / rho for the rest) or none (balanced)")
    g.add_argument("--imb_factor", type=float, default=0.01, help="imbalance factor 1/rho (0.01 = rho 100)")
    g.add_argument("--rand_number", type=int, default=0, help="NumPy seed of the long-tailed subsampling")
    g.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="download the dataset into --data_path when its files are missing (as upstream)")


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def add_subset_args(p: argparse.ArgumentParser, subset_file: bool = True) -> None:
    """--val_split (model selection on a validation part of the test split) and --subset_file (train on an
    exported index list): engine/data/subsets.py."""
    g = p.add_argument_group("subsets and model selection")
    g.add_argument("--val_split", type=non_negative_int, default=0, metavar="K",
                   help="hold out K images per class of the test split (seeded by --rand_number) as a validation "
                        "part: both parts are evaluated every epoch and the epoch of best validation top-1 is "
                        "reported beside the last and the test-selected best (0: the papers' protocol)")
    if subset_file:
        g.add_argument("--subset_file", default=None, metavar="FILE",
                       help="train on the training-split indices of FILE (a run's subsets.json, a JSON list or a "
                            "text file of indices) instead of drawing the long-tailed subset")


def add_unlabeled_source_arg(p) -> None:
    """--unlabeled_source: the pool of a data set with several (engine.data.datasets.DatasetSpec.pools)."""
    p.add_argument("--unlabeled_source", default=None, choices=unlabeled_source_choices(),
                   help="cifar10 only: the unlabeled pool, tinyimages (upstream's 80M Tiny Images selection, "
                        "the default) or cifar10_train (the CIFAR-10 training images the labeled subset leaves "
                        "out, the stand-in); svhn always uses its extra split")


# Parsed flags -> DatasetSpec keywords (the flags a script has; the rest keep the spec's defaults).
DATASET_FLAGS = ("data_path", "imb_type", "imb_factor", "rand_number", "download", "crop_size", "resize_size",
                 "subset_file")
SEMI_FLAGS = ("imb_factor_unlabel", "unlabeled_source", "pseudo_label_file", "unlabel_size_factor", "labeled_max",
              "unlabeled_max")
LOADER_FLAGS = ("batch_size", "eval_batch_size", "loader", "workers", "channels_last")


def _present(args: argparse.Namespace, flags: Sequence[str]) -> dict:
    return {flag: getattr(args, flag) for flag in flags if hasattr(args, flag)}


def dataset_kwargs(args: argparse.Namespace) -> dict:
    """The keywords of ``DatasetSpec.build`` from parsed flags (the data path and the long-tail flags)."""
    return _present(args, DATASET_FLAGS)


def semi_kwargs(args: argparse.Namespace) -> dict:
    """``dataset_kwargs`` plus train_semi.py's flags: the keywords of ``DatasetSpec.build_semi``."""
    return {**dataset_kwargs(args), **_present(args, SEMI_FLAGS)}


def loader_kwargs(args: argparse.Namespace) -> dict:
    """The keywords of ``engine.data.datasets.make_loader`` from parsed flags (batch sizes, loader kind, workers)."""
    return _present(args, LOADER_FLAGS)


def add_model_args(p: argparse.ArgumentParser, arch: str = "resnet32", loss_type: str = "CE",
                   train_rule: str = "None") -> None:
    g = p.add_argument_group("model and loss")
    g.add_argument("-a", "--arch", metavar="ARCH", default=arch, choices=models.model_names(),
                   help="model architecture: " + " | ".join(models.model_names()))
    g.add_argument("--loss_type", default=loss_type, choices=sorted(losses.LOSSES), help="loss type")
    g.add_argument("--train_rule", default=train_rule, choices=sorted(losses.TRAIN_RULES),
                   help="data/loss re-balancing rule")
    g.add_argument("--pretrained_model", default="", help="self-supervised checkpoint to initialise the backbone")
    add_loss_args(p)


def add_hyperparameter_args(group, hyperparameters: Sequence[registry.HyperParameter], **defaults) -> None:
    """One ``--{dest}`` flag per declared hyper-parameter, typed by its default (``defaults``: other defaults
    by destination, e.g. a script's ``warmup_epochs=0``)."""
    unknown = set(defaults) - {hp.dest for hp in hyperparameters}
    if unknown:
        raise TypeError(f"no hyper-parameter flag {sorted(unknown)}; declared: {[hp.dest for hp in hyperparameters]}")
    for hp in hyperparameters:
        default = defaults.get(hp.dest, hp.default)
        if hp.type is bool:
            group.add_argument(f"--{hp.dest}", action=argparse.BooleanOptionalAction, default=default, help=hp.help)
        elif hp.nargs:
            group.add_argument(f"--{hp.dest}", type=hp.type, nargs=hp.nargs, default=list(default), help=hp.help)
        else:
            group.add_argument(f"--{hp.dest}", type=hp.type, default=default, help=hp.help)


def add_loss_args(p: argparse.ArgumentParser) -> None:
    """The hyper-parameters the registered losses and train rules declare (defaults: the papers' CIFAR settings)."""
    add_hyperparameter_args(p.add_argument_group("loss"),
                            losses.LOSSES.hyperparameters() + losses.TRAIN_RULES.hyperparameters())


def registry_kwargs(reg: registry.Registry, name: str, args: argparse.Namespace) -> dict:
    """The constructor keywords of ``reg[name]`` from parsed flags (flag destinations mapped back to keywords)."""
    return registry.kwargs_from(reg[name], vars(args), reg.context)


def loss_from_args(args: argparse.Namespace, cls_num_list: Sequence[int]) -> torch.nn.Module:
    """``--loss_type`` with its hyper-parameter flags, for the training class counts."""
    return losses.build_loss(args.loss_type, cls_num_list, **registry_kwargs(losses.LOSSES, args.loss_type, args))


def train_rule_from_args(args: argparse.Namespace, cls_num_list: Sequence[int]) -> losses.TrainRule:
    """``--train_rule`` with its hyper-parameter flags, for the training class counts."""
    return losses.build_train_rule(args.train_rule, cls_num_list,
                                   **registry_kwargs(losses.TRAIN_RULES, args.train_rule, args))


def add_optim_args(p: argparse.ArgumentParser, epochs: int = 200, batch_size: int = 128, lr: float = 0.1,
                   weight_decay: float = 2e-4, schedule: str = "step", **schedule_defaults) -> None:
    """SGD and LR-schedule flags; ``schedule_defaults`` replace ``LRSchedule``'s (``warmup_epochs``,
    ``warmup_factor``, ``milestones``, ``lr_factors``) for this script."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", default=epochs, type=int, metavar="N", help="number of total epochs to run")
    g.add_argument("--start-epoch", default=0, type=int, metavar="N",
                   help="manual epoch number (useful on restarts; --resume sets it)")
    g.add_argument("-b", "--batch-size", default=batch_size, type=int, metavar="N", help="mini-batch size")
    g.add_argument("--lr", "--learning-rate", default=lr, type=float, metavar="LR", dest="lr",
                   help="initial learning rate")
    g.add_argument("--momentum", default=0.9, type=float, metavar="M", help="SGD momentum")
    g.add_argument("--wd", "--weight-decay", default=weight_decay, type=float, metavar="W", dest="weight_decay",
                   help="weight decay")
    g = p.add_argument_group("learning-rate schedule")
    g.add_argument("--lr_schedule", default=schedule, choices=SCHEDULES.names(), help="per-epoch LR schedule")
    add_hyperparameter_args(g, registry.declared(LRSchedule), **schedule_defaults)


def schedule_from_args(args: argparse.Namespace) -> LRSchedule:
    """The LR schedule of ``--lr_schedule --lr --epochs`` and the schedule flags; invalid numbers: ValueError."""
    return LRSchedule(args.lr_schedule, args.lr, args.epochs, **registry.kwargs_from(LRSchedule, vars(args)))


def timeout_seconds(text: str) -> float:
    """argparse type of --dist_timeout: seconds in ``distributed.check_timeout``'s range."""
    seconds = float(text)
    try:
        distributed.check_timeout(seconds)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return seconds


def add_process_args(g, gpu: int | None = 0, print_freq: int = 10, workers: int = 4,
                     config_flags: Sequence[str] = ("--config",), config_required: bool = False) -> None:
    """The run flags every script has: the config file, the device, workers, progress period, resume, seed
    and the torchrun timeout."""
    g.add_argument(*config_flags, dest="config", default=None, required=config_required,
                   help="YAML file of flag values (command-line flags win)")
    g.add_argument("--gpu", default=gpu, type=int, help="CUDA device index")
    g.add_argument("--device", default=None, choices=["cpu", "cuda"], help="cpu or cuda (default: cuda if present)")
    g.add_argument("-j", "--workers", default=workers, type=int, metavar="N",
                   help="data loading workers (--loader torch only)")
    g.add_argument("-p", "--print-freq", default=print_freq, type=int, metavar="N",
                   help="progress-bar refresh period in steps")
    g.add_argument("--resume", default="", type=str, metavar="PATH", help="checkpoint to resume or evaluate")
    g.add_argument("--seed", default=None, type=int, help="training seed (model init, batch order, augmentation)")
    g.add_argument("--dist_timeout", default=distributed.DEFAULT_TIMEOUT, type=timeout_seconds, metavar="SECONDS",
                   help="under torchrun: a process that stops answering for this long (frozen, hung) ends the "
                        "job with a message naming its rank")
    g.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the run's figures at its end (PNG in <log folder>/figures and TensorBoard images; "
                        "python report.py RUN_DIR redraws them)")


def add_run_args(p: argparse.ArgumentParser, exp_str: str, gpu: int | None = 0, print_freq: int = 10) -> None:
    """``add_process_args`` plus the upstream CIFAR scripts' outputs: --exp_str, -e, --root_log, --root_model."""
    g = p.add_argument_group("run")
    add_process_args(g, gpu, print_freq)
    g.add_argument("--exp_str", default=exp_str, help="suffix of the run name")
    g.add_argument("-e", "--evaluate", action="store_true", help="evaluate the --resume checkpoint and exit")
    g.add_argument("--root_log", type=str, default="log")
    g.add_argument("--root_model", type=str, default="./checkpoint")


def add_speed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speed")
    g.add_argument("--loader", default="device", choices=["device", "torch"],
                   help="device: data and augmentation on the device; torch: DataLoader with PIL transforms")
    g.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    g.add_argument("--channels_last", action="store_true", help="channels-last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the training step (model and loss)")
    g.add_argument("--compile_mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode; reduce-overhead captures CUDA graphs (GPU)")
    g.add_argument("--eval_batch_size", type=int, default=1000, help="evaluation batch size")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """Evaluation-time options: post-hoc logit corrections (``--tau`` is a loss flag, shared with the LA loss)
    and the shifted-target-prior evaluation of engine/eval/shifted.py."""
    g = p.add_argument_group("evaluation")
    g.add_argument("--posthoc", default="none", choices=["none", *sorted(losses.POSTHOC)],
                   help="correction added to the logits at evaluation: la = -tau*log(pi_s) (Menon et al.); "
                        "pc = PC softmax, log(pi_t) - log(pi_s), or log(pi_t) - (1 - s)*log(pi_s) for a loss that "
                        "added s*log(pi_s) in training (LA: s = tau; BalancedSoftmax, LADE: s = 1)")
    g.add_argument("--target_prior", type=float, nargs="*", default=[],
                   help="--posthoc pc: the test label distribution pi_t as C counts or probabilities "
                        "(default: uniform)")
    g.add_argument("--shifted_eval", action="store_true",
                   help="with -e --resume: evaluate on forward/backward long-tailed test subsets "
                        "(imbalance 50, 25, 10, 5, 2) and uniform; writes shifted_eval.{csv,json}")
    g.add_argument("--shifted_seed", type=int, default=0, help="seed of the --shifted_eval subsampling")


def validate_eval(args: argparse.Namespace) -> None:
    if args.shifted_eval and not args.evaluate:
        raise ValueError("--shifted_eval evaluates a checkpoint: add -e --resume CHECKPOINT")
    if args.shifted_eval and args.posthoc != "none":
        raise ValueError("--shifted_eval reports raw and target-prior-corrected accuracy itself; drop --posthoc")
    losses.validate_posthoc(args.posthoc, losses.trained_prior_scale(args.loss_type, args.tau) != 0.0,
                            args.target_prior)


def boolean(text: str) -> bool:
    """argparse type of a flag that also takes a value, as the reference's ``--flag True``: true/false, 1/0, yes/no."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(str(text).lower())
    if value is None:
        raise ValueError(f"expected true or false, got {text!r}")
    return value


def _coerce(action: argparse.Action, key: str, value, source: str):
    """The flag's value from a YAML value: the flag's type applied (YAML reads 1e-4 as a string), its choices
    checked. A value of another kind (a list for one number, true for a number, null for a flag that has a value,
    a string for a switch) is an error naming the file and the key."""
    def refuse(what: str):
        raise UsageError(f"{source}: {key}: {what}")

    kind = {int: "an integer", float: "a float", str: "a string", None: "a string"}.get(action.type, "a value")

    def one(v):
        if isinstance(v, (list, dict)):
            refuse(f"expected {kind}, got {v!r}")
        if v is None:
            refuse(f"null, but the flag takes {kind}; leave the key out to keep its default {action.default!r}")
        if isinstance(v, bool) and action.type in (int, float, str, None):
            refuse(f"expected {kind}, got {v!r}" + (" (quote it)" if action.type in (str, None) else ""))
        if action.type in (int, float) and isinstance(v, (int, float)):
            if action.type is int and not float(v).is_integer():
                refuse(f"expected an integer, got {v!r}")
            v = action.type(v)
        elif action.type in (str, None):
            v = str(v)
        else:  # text for a number (YAML reads 1e-4 as a string), or any value for a custom type (``boolean``)
            try:
                v = action.type(str(v))
            except (TypeError, ValueError) as e:
                refuse(f"{v!r} is not a valid value ({e})")
        if action.choices is not None and v not in action.choices:
            refuse(f"{v!r} is not one of {list(action.choices)}")
        return v

    if value is None and action.default is None:  # null keeps an optional flag unset
        return None
    if action.nargs == 0:  # a switch (store_true, --flag/--no-flag)
        if not isinstance(value, bool):
            refuse(f"expected true or false, got {value!r}")
        return value
    if action.nargs in ("*", "+") or isinstance(action.nargs, int):
        values = [one(v) for v in (value if isinstance(value, list) else [value])]
        if action.nargs == "+" and not values:
            refuse("expected at least one value, got []")
        return values
    return one(value)


BASE_KEY = "_base_"


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain values only: a tag that would build a Python object is an error) that also
    refuses a key given twice in one mapping, which PyYAML would silently resolve to the last value."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key.value!r} appears twice",
                                                            key.start_mark)
                seen.add(key.value)
        return super().construct_mapping(node, deep)


def read_yaml(path: str):
    """The YAML document of ``path``; any failure is one UsageError naming the file (and the line)."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_ConfigLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or e
        if "constructor for the tag" in str(problem):
            problem = f"{problem} (a config holds plain values; tags that build Python objects are refused)"
        raise UsageError(f"{path}: not valid YAML{where}: {one_line(problem)}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not a YAML text file (byte {e.start} is not UTF-8 text)") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read it: {e.strerror}") from None


def _config_layers(path: str, translate: Callable[[dict, str], dict] | None,
                   chain: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """(file, mapping) of ``path``'s bases, recursively and in their order, then of ``path`` itself."""
    cfg = read_yaml(path)
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, dict):
        raise UsageError(f"{path}: expected a mapping of flag names to values, got {type(cfg).__name__} {cfg!r:.60}")
    bases = cfg.pop(BASE_KEY, [])
    if translate is not None:
        try:
            cfg = translate(cfg, path)
        except (AttributeError, KeyError, TypeError) as e:  # a value of the wrong kind deep in another layout
            raise UsageError(f"{path}: not a valid config of its layout ({type(e).__name__}: {e})") from e
    bases = [bases] if isinstance(bases, str) else bases
    if not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise UsageError(f"{path}: {BASE_KEY}: expected a path relative to this file or a list of them, "
                         f"got {bases!r}")
    chain = (*chain, path)
    layers = []
    for base in bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        if not os.path.isfile(base_path):
            raise UsageError(f"{path}: {BASE_KEY}: no file {base_path!r}")
        seen = [os.path.realpath(p) for p in chain]
        if os.path.realpath(base_path) in seen:
            cycle = chain[seen.index(os.path.realpath(base_path)):]
            raise UsageError(f"{path}: {BASE_KEY} cycle: {' -> '.join((*cycle, base_path))}")
        layers += _config_layers(base_path, translate, chain)
    return layers + [(path, cfg)]


def load_yaml_defaults(parser: argparse.ArgumentParser, path: str,
                       translate: Callable[[dict, str], dict] | None = None) -> dict:
    """Read ``path`` and return {dest: value} for the parser's flags; any problem of the file (not found, not
    YAML, an unknown key, a value of the wrong type) is a UsageError naming the file and the key.

    Keys are the flags' destinations or their long option names (``data_root`` for ``--data_path``'s alias
    ``--data_root``). ``_base_: FILE`` (relative to this file; or a list, later files win) inherits the keys of
    other configs, as mmpretrain's configs do; the file's own keys win over its bases'.
    ``translate(mapping, path) -> mapping`` rewrites another layout into flag names first (e.g. the reference
    ImageNet-LT code's nested configs), file by file."""
    if not os.path.isfile(path):
        flag = next((a.option_strings[0] for a in parser._actions if a.dest == "config"), "--config")
        raise UsageError(f"{flag}: no file {path!r}")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    names = dict(actions)
    for action in actions.values():
        for flag in action.option_strings:
            if flag.startswith("--"):
                names.setdefault(flag[2:].replace("-", "_"), action)
    out = {}
    for source, cfg in _config_layers(path, translate):
        where = source if source == path else f"{source} (a base of {path})"
        given = {}
        for raw_key, value in cfg.items():
            key = str(raw_key).replace("-", "_")
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise UsageError(f"{where}: unknown key {raw_key!r}; {hint}valid keys: "
                                 f"{', '.join(sorted(actions))}")
            dest = names[key].dest
            if dest in given:
                raise UsageError(f"{where}: keys {given[dest]!r} and {raw_key!r} both set --{dest}; keep one")
            given[dest] = raw_key
            out[dest] = _coerce(names[key], key, value, where)
    return out


# What ``parse`` refuses as a usage error: a check's ValueError, an unreadable file, a refused pickle.
REFUSED = (ValueError, OSError, pickle.UnpicklingError)
_parsed: tuple[argparse.ArgumentParser, argparse.Namespace] | None = None  # the run's flags, for run_cli's messages


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
          validate: Callable[[argparse.Namespace], None] | None = None,
          translate: Callable[[dict, str], dict] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with YAML defaults from ``--config`` (``translate``: see ``load_yaml_defaults``) and run
    ``validate`` (default ``validate_common``). A refusal (a bad flag or config file, a failed check, a file the
    checks found unusable: ``REFUSED``) is ``parser.error``: one line, exit status 2, nothing written yet."""
    global _parsed
    pre, _ = parser.parse_known_args(argv)
    try:
        if getattr(pre, "config", None):
            parser.set_defaults(**load_yaml_defaults(parser, pre.config, translate))
        args = parser.parse_args(argv)
        (validate or validate_common)(args)
    except REFUSED as e:
        if os.environ.get("LTR_TRACEBACK"):
            raise
        parser.error(os_failure(e) if isinstance(e, OSError) else str(e))
    except SystemExit as e:  # a ``translate`` refusing its file (imagenet_inat.reference_config) with its message
        if not isinstance(e.code, str):
            raise
        parser.error(e.code.removeprefix("error: "))
    _parsed = (parser, args)
    return args


def validate_run(args: argparse.Namespace) -> None:
    """Checks of the flags every training script has (``add_optim_args``, ``add_process_args``)."""
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value <= 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    if not math.isfinite(args.lr) or args.lr <= 0:
        raise ValueError(f"--lr must be a finite positive number, got {args.lr}")
    for flag, dest in (("-p/--print-freq", "print_freq"), ("--eval_batch_size", "eval_batch_size")):
        value = getattr(args, dest, None)  # None: a script fills it in later (pretrain_rot's per-source default)
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    for flag, dest in (("--seed", "seed"), ("--rand_number", "rand_number")):
        if (getattr(args, dest, None) or 0) < 0:
            raise ValueError(f"{flag} must be a non-negative integer (a NumPy/torch seed), got {getattr(args, dest)}")
    for flag, dest in (("--momentum", "momentum"), ("--wd/--weight-decay", "weight_decay")):
        if not (math.isfinite(getattr(args, dest)) and getattr(args, dest) >= 0):
            raise ValueError(f"{flag} must be a finite non-negative number, got {getattr(args, dest)}")
    for flag, dest in (("-j/--workers", "workers"), ("--gpu", "gpu")):
        if (getattr(args, dest, None) or 0) < 0:
            raise ValueError(f"{flag} must be a non-negative integer, got {getattr(args, dest)}")
    if not 0 <= args.start_epoch <= args.epochs:
        raise ValueError(f"--start-epoch must be in [0, --epochs={args.epochs}], got {args.start_epoch}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    schedule_from_args(args)


def validate_common(args: argparse.Namespace) -> None:
    """Checks shared by the CIFAR-size training scripts; every message names the flag and the fix."""
    if hasattr(args, "imb_factor"):
        check_imb_factor(args.imb_factor)
    validate_run(args)
    if args.evaluate and not args.resume:
        raise ValueError("-e/--evaluate needs --resume CHECKPOINT to evaluate")
    for flag, path in (("--resume", args.resume), ("--pretrained_model", getattr(args, "pretrained_model", ""))):
        if path and not os.path.isfile(path):
            raise ValueError(f"{flag}: no file {path!r}")
    if hasattr(args, "posthoc"):
        validate_eval(args)


def meta_state(build: Callable[[], torch.nn.Module]) -> dict:
    """The ``state_dict()`` of the module ``build()`` makes, built on the meta device: names and shapes to check
    a checkpoint against, with no memory or initialisation cost."""
    with torch.device("meta"):
        return build().state_dict()


def classifier_state(arch: str, num_classes: int, use_norm: bool) -> dict:
    return meta_state(lambda: models.build_model(arch, num_classes, use_norm=use_norm))


def check_fit(ckpt: dict, path: str, flag: str, own: dict, model: str, hints: Sequence[str] = ()) -> None:
    """Refuse a checkpoint whose weights do not fit the model whose ``state_dict()`` is ``own``, naming the file,
    what it holds, the model (``model``: the flags that chose it) and which tensors differ."""
    mismatch = state_mismatch(own, model_state(ckpt))
    if mismatch:
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise CheckpointError(f"{flag}: {path!r} is {describe(ckpt)}, which does not fit the model of {model}"
                              f"{hint}: {mismatch}")


def classifier_model(arch: str, num_classes: int, use_norm: bool, classes_from: str) -> str:
    """The flags that chose a classifier, for ``check_fit``'s message."""
    return (f"-a/--arch {arch} with {num_classes} classes ({classes_from}) and a "
            f"{'cosine' if use_norm else 'linear'} head")


def classifier_hints(ckpt: dict, own: dict, arch: str, num_classes: int, use_norm: bool) -> list[str]:
    """What to change when a classifier checkpoint does not fit the model whose ``state_dict()`` is ``own``: what
    the checkpoint records that differs, or a head stored the other way round (cosine vs linear)."""
    hints = []
    if any(k.startswith(("encoder_q.", "module.encoder_q.")) for k in ckpt["state_dict"]):
        hints.append("it is a MoCo pre-training checkpoint: start from its backbone with --pretrained_model")
    head = model_state(ckpt).get("fc.weight")
    if "use_norm" not in ckpt and head is not None and tuple(head.shape[::-1]) == tuple(own["fc.weight"].shape):
        hints.append(f"its head looks {'linear: not --loss_type LDAM' if use_norm else 'cosine: --loss_type LDAM'}")
    if ckpt.get("arch") and ckpt["arch"] != arch:
        hints.append(f"it was trained with -a {ckpt['arch']}")
    if ckpt.get("num_classes") is not None and ckpt["num_classes"] != num_classes:
        hints.append(f"it has {ckpt['num_classes']} classes: another --dataset or class count")
    if "use_norm" in ckpt and bool(ckpt["use_norm"]) != use_norm:
        hints.append(f"its head is {'cosine (--loss_type LDAM)' if ckpt['use_norm'] else 'linear (not LDAM)'}")
    return hints


def check_classifier_checkpoint(path: str, flag: str, arch: str, num_classes: int, use_norm: bool,
                                classes_from: str, resumable: bool = False) -> dict:
    """Load ``path`` and refuse it unless it is a classifier of ``arch`` with ``num_classes`` outputs and that
    head type (``resumable``: with the optimizer state and epoch a run continues from); returns it."""
    ckpt = load_checkpoint(path, flag)
    own = classifier_state(arch, num_classes, use_norm)
    check_fit(ckpt, path, flag, own, classifier_model(arch, num_classes, use_norm, classes_from),
              classifier_hints(ckpt, own, arch, num_classes, use_norm))
    if resumable:
        check_resumable(ckpt, path, flag)
    return ckpt


def check_backbone_checkpoint(path: str, flag: str, own: dict) -> None:
    """Refuse ``path`` unless its backbone initialises the model whose ``state_dict()`` is ``own``."""
    backbone_fit(own, load_checkpoint(path, flag), path, flag)


def check_classifier_files(args: argparse.Namespace, num_classes: int, classes_from: str) -> None:
    """The checkpoints of a classification script, loaded and checked against its model before anything runs:
    --resume (a classifier of -a with ``num_classes`` outputs and --loss_type's head, with its optimizer state
    unless -e) and, when not resuming, --pretrained_model (a backbone for -a)."""
    use_norm = uses_normed_head(args.loss_type)
    if args.resume:
        check_classifier_checkpoint(args.resume, "--resume", args.arch, num_classes, use_norm, classes_from,
                                    resumable=not args.evaluate)
    elif getattr(args, "pretrained_model", ""):
        check_backbone_checkpoint(args.pretrained_model, "--pretrained_model",
                                  classifier_state(args.arch, num_classes, use_norm))


def resolve_device(args: argparse.Namespace) -> torch.device:
    """--device (default: CUDA when present), with --gpu choosing the CUDA index."""
    kind = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.device("cuda", args.gpu or 0)
    return torch.device("cpu")


# errno of a failed write (or read) -> what happened, what to do about it
_OS_FAILURES = {
    errno.ENOSPC: ("no space left on device", "free space there or choose another path"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or choose another path"),
    errno.EROFS: ("read-only file system", "choose a path on a writable file system"),
    errno.EACCES: ("permission denied", "check its permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "check its permissions or choose another path"),
}


def _flag_of(path: str) -> str | None:
    """The parsed flag whose path value holds ``path`` (e.g. --root_model for a checkpoint), the longest match;
    None when no flag does."""
    if _parsed is None:
        return None
    parser, args = _parsed
    target, best, best_root = os.path.abspath(path), None, ""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if not (action.option_strings and isinstance(value, str) and value):
            continue
        root = os.path.abspath(value)
        if (target == root or target.startswith(root.rstrip(os.sep) + os.sep)) and len(root) >= len(best_root):
            best, best_root = max(action.option_strings, key=len), root
    return best


def _free_space(folder: str) -> str:
    """', N MB free' on the file system of ``folder`` (its nearest existing parent); '' when unknown."""
    while folder and not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return f", {shutil.disk_usage(folder or '.').free / 1e6:.1f} MB free"
    except OSError:
        return ""


# The flags naming the folders a script writes into (the ones a full or read-only disk is about).
OUTPUT_DESTS = ("root_log", "root_model", "root_path", "log_dir", "output_dir")


def _output_folders() -> str:
    """The parsed output-folder flags with the free space of each, e.g. ``--root_model ./ckpt (3.2 MB free)``."""
    if _parsed is None:
        return "the output folders"
    parser, args = _parsed
    flags = {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}
    found = [f"{flags[d]} {getattr(args, d)} ({_free_space(os.path.abspath(getattr(args, d)))[2:]})"
             for d in OUTPUT_DESTS if d in flags and getattr(args, d, None)]
    return ", ".join(found) or "the output folders"


def os_failure(e: OSError) -> str:
    """An OSError as one line naming the file, its folder and, for the errors of ``_OS_FAILURES`` (a full disk,
    a read-only or forbidden folder), what to do and the flag that chose the folder. A write error without a
    file name (``write()`` itself failing) names the output folders instead."""
    known = _OS_FAILURES.get(e.errno)
    if known is None:
        return _condensed(e.strerror or str(e)) + ("" if e.filename is None else f": {e.filename}")
    if e.filename is None:
        return f"{known[0]} while writing the run's files ({_output_folders()}); {known[1]}"
    path = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes)) else str(e.filename)
    custom = e.strerror and e.strerror != os.strerror(e.errno)  # a message of ours, e.g. the space a write needs
    folder = os.path.dirname(os.path.abspath(path))
    free = _free_space(folder) if e.errno in (errno.ENOSPC, errno.EDQUOT) and not custom else ""
    flag = _flag_of(path)
    return (f"{e.strerror if custom else known[0]}: {path} (folder {folder}{free}); {known[1]}"
            + (f" ({flag})" if flag else ""))


def _condensed(text: str) -> str:
    """One line of an error message: for an error re-raised from a DataLoader worker, its first line (which worker)
    and last one (the error itself), without the worker's traceback."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    if len(lines) > 2 and any(line.startswith("Original Traceback") for line in lines):
        lines = [lines[0], lines[-1]]
    return one_line(" ".join(lines))


def describe_failure(e: BaseException) -> str | None:
    """The one-line message of a user error, or None for a bug (which keeps its traceback)."""
    if isinstance(e, OSError):
        return os_failure(e)
    if isinstance(e, (ValueError, FloatingPointError, pickle.UnpicklingError)):
        return _condensed(str(e))
    if isinstance(e, torch.OutOfMemoryError):
        return (f"out of device memory: lower -b/--batch-size (or --eval_batch_size) "
                f"({_condensed(str(e)).split('. ')[0]})")
    if torch_write_failed(e):  # a torch.save outside atomic_write, which turns it into a DiskFullError
        return (f"writing a checkpoint failed part-way, most likely because the disk is full ({_condensed(str(e))}); "
                f"free space there ({_output_folders()}) or choose other paths")
    return None


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """How the scripts show a warning: ``CATEGORY: message`` on one line (not the source line that raised it)."""
    return f"{category.__name__}: {one_line(message)}\n"


def thread_failure(hook: threading.ExceptHookArgs) -> None:
    """A user error in a background thread (TensorBoard's event writer on a full disk) as one warning line; the
    main thread reports what it means for the run. Bugs keep threading's traceback."""
    message = describe_failure(hook.exc_value) if isinstance(hook.exc_value, Exception) else None
    if message is None or os.environ.get("LTR_TRACEBACK"):
        threading.__excepthook__(hook)
        return
    name = hook.thread.name if hook.thread is not None else "a thread"
    print(f"warning: {name} stopped: {message}", file=sys.stderr, flush=True)


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's ``main`` and end a user error with one line on stderr, ``error: ...``, and no traceback.

    Exit status: 2 when the run was refused before it started, so nothing was written: a bad flag or config
    file, or a check of ``parse`` failing (a value out of range; a checkpoint that is missing, unreadable or
    does not fit the model; a missing split file); 1 when it failed after it started: a data file found unusable
    while reading it, a non-finite loss, a full disk, a permission or other OS error (``describe_failure``). Any other exception is a bug and keeps its
    traceback; ``LTR_TRACEBACK=1`` keeps the traceback of user errors too (for bug reports). Warnings are one
    line each too (``one_line_warning``), and so is a user error in a background thread (``thread_failure``).
    ``main`` itself raises, so tests and callers see the exceptions.
    """
    warnings.formatwarning = one_line_warning
    threading.excepthook = thread_failure
    try:
        main()
    except Exception as e:
        message = describe_failure(e)
        if message is None or os.environ.get("LTR_TRACEBACK"):
            raise
        sys.exit(f"error: {message}  (LTR_TRACEBACK=1 shows the traceback)")
    finally:
        distributed.shutdown()


def classifier_run(args: argparse.Namespace, name: str) -> ClassifierRun:
    """The explicit settings of ``engine.train.experiment.run_classification`` from a classification script's flags;
    ``name`` is the run name (the log and checkpoint folders under --root_log / --root_model)."""
    return ClassifierRun(
        name=name, log_dir=os.path.join(args.root_log, name), ckpt_dir=os.path.join(args.root_model, name),
        record=args_to_dict(args), device=resolve_device(args), arch=args.arch, loss_type=args.loss_type,
        train_rule=args.train_rule, schedule=schedule_from_args(args),
        loop=LoopConfig(args.epochs, args.start_epoch, args.print_freq), loader=loader_kwargs(args),
        loss_kwargs=registry_kwargs(losses.LOSSES, args.loss_type, args),
        rule_kwargs=registry_kwargs(losses.TRAIN_RULES, args.train_rule, args),
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed, resume=args.resume,
        figures=args.figures,
        dist_timeout=args.dist_timeout, evaluate=args.evaluate, pretrained_model=args.pretrained_model,
        amp=args.amp, channels_last=args.channels_last, compile_mode=args.compile_mode if args.compile else None,
        posthoc=getattr(args, "posthoc", "none"), tau=args.tau, target_prior=tuple(getattr(args, "target_prior", ())),
        shifted_eval=getattr(args, "shifted_eval", False), shifted_seed=getattr(args, "shifted_seed", 0))


def args_to_dict(args: argparse.Namespace) -> dict:
    return {k: v for k, v in sorted(vars(args).items())}
