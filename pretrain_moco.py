"""MoCo v2 self-supervised pre-training on long-tailed training images (labels unused; Yang & Xu 2020, sec. 4).

    python pretrain_moco.py --dataset imagenet --data /path/to/ImageNet            # one process
    torchrun --nproc_per_node 8 pretrain_moco.py --dataset imagenet --data /path/to/ImageNet
    python pretrain_moco.py --dataset cifar10 --data ./data --imb_factor 0.01 --moco-k 4096
    python train.py --dataset cifar10 --pretrained_model ./data/cifar10/checkpoint/moco_ckpt_0200.pth.tar

Data: any data set of engine.data.datasets.DATASETS: ImageNet-LT / iNaturalist 2018 training lists (paths relative to
--data; --list_file to override), or the in-memory long-tailed sets, CIFAR-10/100-LT and SVHN-LT
(--imb_type/--imb_factor/--rand_number). Backbone (-a): the data set's default, resnet50 for imagenet/inat,
resnet32 for the CIFAR-size sets, unless given. Multi-GPU: launch with torchrun (DDP, NCCL on GPUs, Gloo on CPUs); this
replaces the reference's --multiprocessing-distributed/--world-size/--rank/--dist-url/--dist-backend.
-b is the total batch over all processes and --moco-k must be a multiple of it.
The reference declared --mlp/--aug-plus/--cos with type=bool, so they could not be turned off; here they
are real switches (--no-mlp, --no-aug-plus, --no-cos), default on.
Checkpoints: {root_path}/{dataset}/checkpoint/moco_ckpt_{epoch:04d}.pth.tar every -p epochs and at the end.
"""
from __future__ import annotations

import argparse
import os

import torch

import models
from engine import config
from engine.train import distributed
from engine.train.checkpoint import check_resumable, load_checkpoint, strip_prefix
from engine.data.datasets import DATASETS, DatasetSpec
from engine.train.experiment import Experiment, subset_parts, write_subsets
from engine.data.loaders import TorchLoader
from engine.methods import MoCoMethod
from engine.methods.moco import AUGMENTATIONS, TwoCropsTransform, build_moco
from engine.train.runspec import RunSpec
from engine.train.trainer import LoopConfig


def default_list_file(spec: DatasetSpec) -> str | None:
    """The reference's training list imagenet_inat/data/{list_name}/{train file}; None for in-memory data."""
    return None if spec.in_memory else spec.reference_list_file("train")


def train_set(args: argparse.Namespace, spec: DatasetSpec, transform):
    """The training images of --dataset with the two-view ``transform`` (PIL images: the MoCo augmentations are
    PIL pipelines); image-list data from --list_file."""
    return spec.build("train", list_file=args.list_file, transform=transform, decode="pil",
                      **config.dataset_kwargs(args))


def source_defaults(values: dict) -> dict:
    """The flag values with -a and --list_file, when not given, set to the data source's."""
    spec = DATASETS[values["dataset"]]
    return dict(values, arch=values["arch"] or spec.default_arch,
                list_file=values["list_file"] or default_list_file(spec))


def run_name_fields(values: dict) -> tuple[str, ...]:
    """The log folder's name fields: no long-tail fields for the image-list data sets."""
    long_tail = ("imb_type", "imb_factor") if DATASETS[values["dataset"]].in_memory else ()
    return ("dataset", "arch", *long_tail, "exp_str")


# Logs in {root_log}/{run_name}/ (e.g. cifar10_resnet32_exp_0.01_pretrain_moco), the reference's checkpoints in
# {root_path}/{dataset}/checkpoint/ (engine.methods.MoCoMethod); the last one is what train.py --pretrained_model takes.
RUN = RunSpec(run_name_fields, resolve=source_defaults, checks=config.validate_common,
              outputs={"final": "{root_log}/{run_name}/final.json",
                       "checkpoint": "{root_path}/{dataset}/checkpoint/moco_ckpt_{epochs:04d}.pth.tar",
                       "log_dir": "{root_log}/{run_name}", "ckpt_dir": "{root_path}/{dataset}/checkpoint"},
              folders={"root_log": "{run}/log", "root_path": "{run}/ckpt"})


class CosAction(argparse.BooleanOptionalAction):
    """The reference's --cos as a switch: --cos is --lr_schedule cosine, --no-cos is --lr_schedule step."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.lr_schedule = "step" if option_string.startswith("--no-") else "cosine"


class ScheduleAction(argparse.Action):
    """The reference's --schedule E1 E2 ...: the learning rate is multiplied by 0.1 at each epoch listed."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.milestones = list(values)
        namespace.lr_factors = [0.1 ** (i + 1) for i in range(len(values))]


def build_parser() -> argparse.ArgumentParser:
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_data_args(p, DATASETS, default="imagenet", data_aliases=["--data"])  # --data: the reference's
    g = p.add_argument_group("MoCo")
    g.add_argument("--list_file", default=None, help="training split file (default: the data set's LT train list)")
    g.add_argument("--root_path", default="./data", help="checkpoints go to {root_path}/{dataset}/checkpoint/")
    g.add_argument("-a", "--arch", default=None, choices=models.model_names(),
                   help="backbone (default: the data set's, resnet50 for imagenet/inat, resnet32 for the CIFAR-size "
                        "sets)")
    g.add_argument("--moco-dim", default=128, type=int, help="feature dimension")
    g.add_argument("--moco-k", default=65536, type=int, help="queue size: number of negative keys")
    g.add_argument("--moco-m", default=0.999, type=float, help="momentum of the key encoder")
    g.add_argument("--moco-t", default=0.2, type=float, help="softmax temperature")
    g.add_argument("--mlp", default=True, action=argparse.BooleanOptionalAction, help="MLP projection head (v2)")
    g.add_argument("--aug-plus", default=True, action=argparse.BooleanOptionalAction,
                   help="MoCo v2 augmentation (blur, colour jitter p 0.8); --no-aug-plus: MoCo v1's")
    g.add_argument("--bn-splits", default=1, type=int,
                   help="Split-BN: BatchNorm statistics over this many groups of each process's batch, which "
                        "emulates shuffle-BN in one process (e.g. 8); 1: plain BatchNorm (the reference, with DDP)")
    g.add_argument("--cos", dest="lr_schedule", default=argparse.SUPPRESS, action=CosAction,
                   help="cosine LR schedule (default); --no-cos: x0.1 at each --schedule epoch")
    config.add_optim_args(p, epochs=200, batch_size=128, lr=0.015, weight_decay=1e-4, schedule="cosine",
                          warmup_epochs=0, milestones=(120, 160), lr_factors=(0.1, 0.01))
    g.add_argument("--schedule", dest="milestones", type=int, nargs="*", default=argparse.SUPPRESS,
                   action=ScheduleAction,
                   help="the reference's step schedule (with --no-cos): x0.1 at each of these epochs; sets "
                        "--milestones and --lr_factors 0.1 0.01 ...")
    config.add_run_args(p, exp_str="pretrain_moco", gpu=None, print_freq=50)
    p.set_defaults(workers=32)
    return p


def validate(args: argparse.Namespace) -> None:
    config.validate_common(args)
    if args.evaluate:
        raise ValueError("-e/--evaluate: a MoCo checkpoint has no classifier to evaluate; fine-tune it with "
                         "train.py --pretrained_model CHECKPOINT (or imagenet_inat) instead")
    if args.root_model != "./checkpoint":
        raise ValueError("--root_model is not used by MoCo: checkpoints go to {root_path}/{dataset}/checkpoint; "
                         "set --root_path")
    for flag, value in (("--moco-dim", args.moco_dim), ("--moco-k", args.moco_k), ("--moco-t", args.moco_t)):
        if value <= 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    if not 0.0 <= args.moco_m < 1.0:
        raise ValueError(f"--moco-m must be in [0, 1), got {args.moco_m}")
    if args.moco_k % args.batch_size:
        raise ValueError(f"--moco-k {args.moco_k} must be a multiple of the total batch size -b {args.batch_size}: "
                         f"the queue takes whole batches of keys; e.g. --moco-k "
                         f"{max(args.moco_k // args.batch_size, 1) * args.batch_size}")
    if args.bn_splits < 1 or (args.batch_size // distributed.launched_world_size()) % args.bn_splits:
        raise ValueError(f"--bn-splits {args.bn_splits} must be positive and divide each process's batch "
                         f"({args.batch_size // distributed.launched_world_size()})")
    default_list = default_list_file(DATASETS[args.dataset])
    if args.list_file and default_list is None:
        raise ValueError(f"--list_file is for the image-list data sets (imagenet, inat); --dataset {args.dataset} "
                         "reads --data")
    list_file = args.list_file or default_list
    if list_file is not None and not os.path.isfile(list_file):
        raise ValueError(f"--list_file: no split file {list_file!r} for --dataset {args.dataset}: get the "
                         "ImageNet-LT / iNaturalist 2018 lists or pass --list_file PATH")
    if args.resume:
        check_resume(args)


def check_resume(args: argparse.Namespace) -> None:
    """Refuse a --resume checkpoint that is not a MoCo run of these flags, before anything runs."""
    arch = source_defaults(vars(args))["arch"]
    ckpt = load_checkpoint(args.resume)
    own = config.meta_state(lambda: build_moco(arch, args.moco_dim, args.moco_k, args.moco_m, args.moco_t, args.mlp,
                                               args.bn_splits))
    config.check_fit(ckpt, args.resume, "--resume", own, f"MoCo of -a {arch} --moco-dim {args.moco_dim} --moco-k "
                     f"{args.moco_k} --mlp={args.mlp}")
    check_resumable(ckpt, args.resume)


def two_view_set(args, spec: DatasetSpec):
    """The training images, each item two augmented views (read, and checked, before the run writes anything)."""
    return train_set(args, spec, TwoCropsTransform(AUGMENTATIONS[args.aug_plus](spec.image_size, spec.mean, spec.std)))


def build_loader(args, dataset, device: torch.device, seed: int) -> TorchLoader:
    """Each process draws its share of every total batch of -b (drop_last, as upstream)."""
    return TorchLoader(dataset, batch_size=distributed.per_process_batch(args.batch_size),
                       device=device, train=True, workers=-(-args.workers // distributed.world_size()), seed=seed,
                       drop_last=True)


def build_moco_model(args, device: torch.device, resume: dict | None):
    moco = build_moco(args.arch, args.moco_dim, args.moco_k, args.moco_m, args.moco_t, args.mlp,
                      args.bn_splits).to(device)
    if resume is not None:
        try:
            moco.load_state_dict(strip_prefix(resume["state_dict"], "module."))
        except RuntimeError as e:
            raise ValueError(f"--resume: {args.resume!r} is not a MoCo checkpoint of -a {args.arch} with "
                             f"--moco-dim {args.moco_dim} --moco-k {args.moco_k} --mlp={args.mlp}: {e}") from e
    return moco


def main(argv=None) -> torch.nn.Module:
    """Pre-train; returns the MoCo module (encoder_q, encoder_k, queue) of this process."""
    args = config.parse(build_parser(), argv, validate)
    spec = DATASETS[args.dataset]
    vars(args).update(source_defaults(vars(args)))
    dataset = two_view_set(args, spec)
    parts = subset_parts(dataset, None, None, spec.num_classes)
    record = dict(config.args_to_dict(args), subset_sha256={name: part["sha256"] for name, part in parts.items()})
    exp = Experiment(log_dir=os.path.join(args.root_log, RUN.run_name(vars(args))), record=record,
                     device=config.resolve_device(args), seed=args.seed, resume=args.resume,
                     dist_timeout=args.dist_timeout, figures=args.figures)
    device, seed = exp.device, exp.seed
    write_subsets(exp.run, spec.name, parts)
    loader = build_loader(args, dataset, device, seed)
    moco = build_moco_model(args, device, exp.resume)
    # All parameters, as the reference (its optimizer state then resumes here); the key encoder gets no
    # gradient, and SGD skips parameters without one.
    optimizer = torch.optim.SGD(moco.parameters(), lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    world = distributed.world_size()
    if world == 1 and args.bn_splits == 1:
        exp.run.print("=> note: one process, so shuffle-BN has nothing to shuffle across; the reference ran MoCo "
                      "only under DDP: launch with torchrun --nproc_per_node N for the paper's setting, or emulate "
                      "it in this process with --bn-splits 8")
    exp.run.print(f"=> MoCo on {args.dataset}: {len(loader.loader.dataset)} images, {world} process(es) x batch "
                  f"{args.batch_size // world}, {len(loader)} steps/epoch, queue {args.moco_k}, seed {seed}, "
                  f"device {device}")
    exp.fit(MoCoMethod(moco, net=distributed.wrap_ddp(moco, device)), optimizer, loader,
            config.schedule_from_args(args),
            LoopConfig(args.epochs, args.start_epoch, args.print_freq, save_every=args.print_freq),
            os.path.join(args.root_path, args.dataset, "checkpoint"),
            {"arch": args.arch, "args": config.args_to_dict(args)})
    exp.close()
    return moco


if __name__ == "__main__":
    config.run_cli(main)
