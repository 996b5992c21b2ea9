"""Pseudo-label an unlabeled pool with a base classifier (Yang & Xu 2020, step 2 of the semi-supervised pipeline;
docs/protocols.md#semi-supervised-pipeline). See engine/eval/pseudolabel.py for the prediction, engine/data/datasets.py for the pools and
engine/data/pseudolabel_files.py for the file formats.

    python train.py --dataset cifar10 --imb_factor 0.01 --loss_type CE                      # 1. base model on D_L
    python gen_pseudolabels.py --dataset cifar10 \\
        --resume ./checkpoint/cifar10_resnet32_CE_None_exp_0.01_ss_pretrained/ckpt.pth.tar  # 2. label the pool
    python train_semi.py --dataset cifar10 --imb_factor 0.01 --imb_factor_unlabel 0.01      # 3. D_L + D_U
    python gen_pseudolabels.py --dataset svhn --resume CKPT --output_filename pseudo_labeled_svhn.pickle  # upstream

Differences from the reference: the pools are read from --data_path (upstream hard-coded ./data); prediction runs
in big batches on the device (no 100-worker DataLoader); the default output is a pickle-free .npz that also keeps
the confidences; --confidence_threshold is optional (the paper uses none, issue #24); arch and head type come from
the checkpoint when it records them.
"""
from __future__ import annotations

import argparse
import inspect
import os

import torch

import losses
import models
from engine import config
from engine.eval import pseudolabel
from engine.train.checkpoint import load_checkpoint, load_model_weights
from engine.data.datasets import DATASETS, SEMI_SUPERVISED
from engine.data.datafiles import TINY_IMAGES_FILE
from engine.train.experiment import uses_normed_head
from engine.data.pseudolabel_files import DEFAULT_EXTENSIONS, check_output, write_pseudo_labels
from engine.train.runspec import RunSpec

# One output file; reproduce.py writes it into the run's folder as pseudo_labels.npz.
RUN = RunSpec(outputs={"file": "{output_dir}/{output_filename}"}, marker="file", folders={"output_dir": "{run}"},
              fixed={"output_filename": "pseudo_labels.npz"}, trains=False, subset_seed=False, exp_str=False)


def build_parser() -> argparse.ArgumentParser:
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file of flag values (command-line flags win)")
    p.add_argument("--dataset", default="cifar10", choices=sorted(SEMI_SUPERVISED), help="dataset")
    p.add_argument("-a", "--arch", metavar="ARCH", default="resnet32", choices=models.model_names(),
                   help="architecture when the checkpoint does not record its 'arch'")
    p.add_argument("--loss_type", default="CE", choices=sorted(losses.LOSSES),
                   help="loss of the base model, for its head type (LDAM: cosine head) when the checkpoint does "
                        "not record 'use_norm'")
    p.add_argument("--gpu", default=0, type=int, help="CUDA device index")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="cpu or cuda (default: cuda if present)")
    p.add_argument("--resume", default="", metavar="PATH", help="checkpoint of the base classifier (required)")
    p.add_argument("--data_path", "--data_dir", default="./data",
                   help="folder holding the unlabeled pool (--data_dir: the upstream name)")
    p.add_argument("--data_filename", default=TINY_IMAGES_FILE,
                   help=f"tinyimages pool file in --data_path (train_semi.py reads {TINY_IMAGES_FILE})")
    p.add_argument("--output_dir", default="./data", help="folder of the pseudo-label file")
    p.add_argument("--output_filename", default=None,
                   help="pseudo-label file name: .npz (default pseudo_labeled_cifar.npz / pseudo_labeled_svhn.npz) "
                        "or .pickle/.pkl for the upstream format")
    config.add_unlabeled_source_arg(p)
    p.add_argument("--confidence_threshold", type=float, default=None,
                   help="label -1 (no pseudo-label) where the max softmax probability is below this (default: none)")
    p.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", type=int, default=1000,
                   help="prediction batch size")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def validate(args: argparse.Namespace) -> None:
    if not args.resume:
        raise ValueError("--resume CHECKPOINT is required: the base classifier trained on the labeled set, e.g. "
                         f"from python train.py --dataset {args.dataset} --imb_factor 0.01 --loss_type CE")
    if not os.path.isfile(args.resume):
        raise ValueError(f"--resume: no file {args.resume!r}")
    spec = DATASETS[args.dataset]
    args.unlabeled_source = spec.unlabeled_source(args.unlabeled_source)
    if args.batch_size <= 0:
        raise ValueError(f"--batch_size must be positive, got {args.batch_size}")
    if args.confidence_threshold is not None and not 0.0 <= args.confidence_threshold <= 1.0:
        raise ValueError(f"--confidence_threshold is a softmax probability in [0, 1], got {args.confidence_threshold}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    args.output_filename = args.output_filename or spec.pseudo_label_stem + DEFAULT_EXTENSIONS[0]
    check_output(os.path.join(args.output_dir, args.output_filename), args.overwrite)
    ckpt = load_checkpoint(args.resume)
    arch, use_norm = base_model(ckpt, args)
    own = config.classifier_state(arch, spec.num_classes, use_norm)
    config.check_fit(ckpt, args.resume, "--resume", own,
                     config.classifier_model(arch, spec.num_classes, use_norm, f"--dataset {args.dataset}"),
                     config.classifier_hints(ckpt, own, arch, spec.num_classes, use_norm))


def base_model(ckpt: dict, args: argparse.Namespace) -> tuple[str, bool]:
    """(architecture, cosine head) of the base classifier: what the checkpoint records, else -a and --loss_type."""
    return ckpt.get("arch") or args.arch, bool(ckpt.get("use_norm", uses_normed_head(args.loss_type)))


def main(argv=None) -> str:
    args = config.parse(build_parser(), argv, validate)
    spec = DATASETS[args.dataset]
    output = os.path.join(args.output_dir, args.output_filename)
    ckpt = load_checkpoint(args.resume)
    arch, use_norm = base_model(ckpt, args)
    model = models.build_model(arch, spec.num_classes, use_norm=use_norm)
    load_model_weights(model, ckpt)
    images, labels = spec.load_pool(args.data_path, args.unlabeled_source, file=args.data_filename)
    ground_truth = labels if spec.pools[spec.pool_name(args.unlabeled_source)].true_labels else None
    device = config.resolve_device(args)
    print(f"=> {arch} (cosine head: {use_norm}) from {args.resume} labels {len(images)} images of the "
          f"{args.dataset} pool {spec.pool_name(args.unlabeled_source)} on {device}", flush=True)
    # a checkpoint without ``ldam_s`` was trained with LDAMLoss's default scale (the --ldam_s default)
    default_scale = inspect.signature(losses.LDAMLoss).parameters["s"].default
    scale = ckpt.get("args", {}).get("ldam_s", default_scale) if use_norm else 1.0
    predictions, confidence = pseudolabel.predict(model.to(device), images, spec.mean, spec.std, args.batch_size,
                                                  logit_scale=scale)
    predictions = pseudolabel.apply_threshold(predictions, confidence, args.confidence_threshold)
    write_pseudo_labels(output, predictions, confidence, args.resume, ground_truth, args.overwrite)
    print(f"=> {output}: {pseudolabel.describe(predictions, spec.num_classes, ground_truth)}", flush=True)
    return output


if __name__ == "__main__":
    config.run_cli(main)
