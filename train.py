"""Supervised long-tailed training on CIFAR-10/100-LT and SVHN-LT (CE, Focal, LDAM, LA, BalancedSoftmax, LADE;
None/Resample/Reweight/DRW; post-hoc logit corrections).

    python train.py --dataset cifar10 --imb_factor 0.01 --loss_type LDAM --train_rule DRW
    python train.py --config configs/ldam_drw/cifar10_exp100_LDAM_DRW.yaml
    python train.py --dataset cifar10 --resume CKPT -e          # evaluate a checkpoint
    python train.py --dataset cifar10 --pretrained_model SSP    # start from a self-supervised backbone
    python train.py --config configs/lade/cifar100_exp100_LADE.yaml
    python train.py --dataset cifar100 --resume CKPT -e --shifted_eval   # LADE's shifted test priors
"""
from __future__ import annotations

import argparse

from engine import config
from engine.data.datasets import DATASETS, IN_MEMORY
from engine.train.experiment import run_classification
from engine.train.runspec import classification_run

# The upstream run name, e.g. cifar10_resnet32_CE_None_exp_0.01_ss_pretrained (logs, checkpoints, reproduce.py).
RUN = classification_run(("dataset", "arch", "loss_type", "train_rule", "imb_type", "imb_factor", "exp_str"),
                         checks=config.validate_common)


def build_parser() -> argparse.ArgumentParser:
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_data_args(p, IN_MEMORY)
    config.add_model_args(p)
    config.add_optim_args(p)
    config.add_run_args(p, exp_str="ss_pretrained")
    config.add_speed_args(p)
    config.add_eval_args(p)
    config.add_subset_args(p)
    return p


def validate(args: argparse.Namespace) -> None:
    """The common checks, then --resume / --pretrained_model against the model they must fit."""
    config.validate_common(args)
    config.check_classifier_files(args, DATASETS[args.dataset].num_classes, f"--dataset {args.dataset}")


def main(argv=None):
    args = config.parse(build_parser(), argv, validate)
    spec = DATASETS[args.dataset]
    data = config.dataset_kwargs(args)
    test_set, val_set = spec.build_eval(val_split=args.val_split, **data)
    return run_classification(config.classifier_run(args, RUN.run_name(vars(args))), spec, spec.build("train", **data),
                              test_set, val_set=val_set)


if __name__ == "__main__":
    config.run_cli(main)
