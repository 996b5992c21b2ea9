"""One argument builder for every script: the upstream flags and defaults, YAML configs, validation.

Precedence: argparse defaults (the upstream ones) < ``--config FILE.yaml`` (its ``_base_`` files first) < flags
on the command line. YAML keys are the flags' destination names (``imb_factor``, ``batch_size``,
``weight_decay``...) or their long option names (``data_root`` for ``--data_path``'s alias); dashes are accepted
for underscores. An unknown key, a value outside a flag's choices or a bad value is an error before anything
runs, naming the key and the file.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
from typing import Callable, Iterable, Sequence

import torch
import yaml

import losses
import models
import registry
from engine.train import distributed
from engine.data.datasets import unlabeled_source_choices
from engine.train.experiment import ClassifierRun
from engine.data.longtail import IMB_TYPES, check_imb_factor
from engine.train.schedules import SCHEDULES, LRSchedule
from engine.train.trainer import LoopConfig


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
    """Apply the flag's type to a YAML value (YAML reads 1e-4 as a string) and check its choices."""
    def one(v):
        if isinstance(v, (list, dict)) or (action.type in (int, float) and isinstance(v, bool)):
            raise SystemExit(f"error: {source}: {key}: expected one {getattr(action.type, '__name__', 'value')}, "
                             f"got {v!r}")
        if action.type is int and isinstance(v, float) and not v.is_integer():
            raise SystemExit(f"error: {source}: {key}: expected an integer, got {v!r}")
        if action.type is not None and isinstance(v, str) and action.type is not str:
            try:
                v = action.type(v)
            except (TypeError, ValueError) as e:
                raise SystemExit(f"error: {source}: {key}: {v!r} is not a valid value ({e})") from None
        if action.choices is not None and v not in action.choices:
            raise SystemExit(f"error: {source}: {key}: {v!r} is not one of {list(action.choices)}")
        return v
    if action.nargs in ("*", "+") or isinstance(action.nargs, int):
        return [one(v) for v in (value if isinstance(value, list) else [value])]
    return one(value)


BASE_KEY = "_base_"


def _config_layers(path: str, translate: Callable[[dict, str], dict] | None,
                   chain: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """(file, mapping) of ``path``'s bases, recursively and in their order, then of ``path`` itself."""
    with open(path) as f:
        try:
            cfg = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise SystemExit(f"error: {path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    bases = cfg.pop(BASE_KEY, []) if isinstance(cfg, dict) else []
    if translate is not None:
        cfg = translate(cfg, path)
    if not isinstance(cfg, dict):
        raise SystemExit(f"error: --config: {path!r} must hold a mapping of flag names to values")
    bases = [bases] if isinstance(bases, str) else bases
    if not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise SystemExit(f"error: {path}: {BASE_KEY}: expected a path relative to this file or a list of them, "
                         f"got {bases!r}")
    chain = (*chain, path)
    layers = []
    for base in bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        if not os.path.isfile(base_path):
            raise SystemExit(f"error: {path}: {BASE_KEY}: no file {base_path!r}")
        seen = [os.path.realpath(p) for p in chain]
        if os.path.realpath(base_path) in seen:
            cycle = chain[seen.index(os.path.realpath(base_path)):]
            raise SystemExit(f"error: {path}: {BASE_KEY} cycle: {' -> '.join((*cycle, base_path))}")
        layers += _config_layers(base_path, translate, chain)
    return layers + [(path, cfg)]


def load_yaml_defaults(parser: argparse.ArgumentParser, path: str,
                       translate: Callable[[dict, str], dict] | None = None) -> dict:
    """Read ``path`` and return {dest: value} for the parser's flags; unknown keys are an error naming the file.

    Keys are the flags' destinations or their long option names (``data_root`` for ``--data_path``'s alias
    ``--data_root``). ``_base_: FILE`` (relative to this file; or a list, later files win) inherits the keys of
    other configs, as mmpretrain's configs do; the file's own keys win over its bases'.
    ``translate(mapping, path) -> mapping`` rewrites another layout into flag names first (e.g. the reference
    ImageNet-LT code's nested configs), file by file."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: --config: no file {path!r}")
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
                raise SystemExit(f"error: {where}: unknown key {raw_key!r}; valid keys: {', '.join(sorted(actions))}")
            dest = names[key].dest
            if dest in given:
                raise SystemExit(f"error: {where}: keys {given[dest]!r} and {raw_key!r} both set --{dest}; keep one")
            given[dest] = raw_key
            out[dest] = _coerce(names[key], key, value, where)
    return out


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
          validate: Callable[[argparse.Namespace], None] | None = None,
          translate: Callable[[dict, str], dict] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with YAML defaults from ``--config`` (``translate``: see ``load_yaml_defaults``); run
    ``validate`` (ValueError -> usage error)."""
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None):
        parser.set_defaults(**load_yaml_defaults(parser, pre.config, translate))
    args = parser.parse_args(argv)
    try:
        (validate or validate_common)(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
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


def resolve_device(args: argparse.Namespace) -> torch.device:
    """--device (default: CUDA when present), with --gpu choosing the CUDA index."""
    kind = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.device("cuda", args.gpu or 0)
    return torch.device("cpu")


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's ``main``; a user error (bad input, missing or unusable file, NaN loss) ends with one line.

    Other exceptions keep their traceback; ``LTR_TRACEBACK=1`` shows it for these too. ``main`` itself raises,
    so tests and callers see the exceptions.
    """
    try:
        main()
    except (FileNotFoundError, ValueError, FloatingPointError, pickle.UnpicklingError) as e:
        if os.environ.get("LTR_TRACEBACK"):
            raise
        sys.exit(f"error: {e}  (LTR_TRACEBACK=1 shows the traceback)")
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
