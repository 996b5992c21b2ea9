"""Semi-supervised long-tailed training on CIFAR-10-LT and SVHN-LT with pseudo-labeled unlabeled data (Yang & Xu
2020, sec. 3, step 3 of the pipeline; docs/protocols.md#semi-supervised-pipeline).

The training set is the labeled long-tailed set D_L (true labels) followed by D_U, drawn from the unlabeled pool
with its own imbalance rho_U = 1/--imb_factor_unlabel and labeled by gen_pseudolabels.py. Training is train.py's:
one shuffled loader over D_L + D_U (loss weight 1, no threshold), and the class counts n_c that drive LDAM margins,
Reweight/DRW weights and Resample include the pseudo-labels (as upstream).

    python train.py --dataset cifar10 --imb_factor 0.01 --loss_type CE                      # 1. base model on D_L
    python gen_pseudolabels.py --dataset cifar10 --resume CKPT                              # 2. label the pool
    python train_semi.py --dataset cifar10 --imb_factor 0.01 --imb_factor_unlabel 0.01      # 3. D_L + D_U
    python train_semi.py --config configs/semi/cifar10_exp50_ru1_CE_None.yaml
    python train_semi.py --dataset cifar10 --resume CKPT -e                                 # evaluate

Stand-in for the withdrawn Tiny Images (--unlabeled_source cifar10_train, DARP/CReST sizes --labeled_max 1500
--unlabeled_max 3000): step 1 is ``train_semi.py --labeled_only`` with the same flags, since D_L is then smaller
than train.py's long-tailed set (configs/semi/cifar10_standin_exp100_base.yaml).
"""
from __future__ import annotations

import argparse

from engine import config
from engine.data.datasets import DATASETS, SEMI_SUPERVISED
from engine.train.experiment import run_classification
from engine.data.longtail import check_imb_factor
from engine.train.runspec import classification_run

# train.py's run name with rho_U, e.g. cifar10_resnet32_CE_None_exp_0.01_0.01_semi
RUN = classification_run(("dataset", "arch", "loss_type", "train_rule", "imb_type", "imb_factor",
                          "imb_factor_unlabel", "exp_str"), checks=config.validate_common)
# Head-class sizes of the stand-in protocol: for data sets whose n_max is not fixed (SVHN-LT's is 1000).
HEAD_SIZES = ("labeled_max", "unlabeled_max")


def train_set(args: argparse.Namespace):
    """D_L + D_U, or with --labeled_only D_L alone (the base classifier of the pipeline; --labeled_max replaces
    n_max as in D_L + D_U)."""
    spec = DATASETS[args.dataset]
    if args.labeled_only:
        return spec.build("train", img_max=args.labeled_max, **config.dataset_kwargs(args))
    return spec.build_semi(**config.semi_kwargs(args))


def build_parser() -> argparse.ArgumentParser:
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_data_args(p, sorted(SEMI_SUPERVISED))
    config.add_model_args(p)
    config.add_optim_args(p, batch_size=256)
    config.add_run_args(p, exp_str=None)
    config.add_speed_args(p)
    config.add_eval_args(p)
    config.add_subset_args(p, subset_file=False)
    g = p.add_argument_group("semi-supervised")
    g.add_argument("--imb_factor_unlabel", type=float, default=0.01,
                   help="imbalance factor 1/rho_U of the unlabeled set D_U (0.01 = rho_U 100)")
    config.add_unlabeled_source_arg(g)
    g.add_argument("--pseudo_label_file", default=None,
                   help="gen_pseudolabels.py's output (default: {data_path}/pseudo_labeled_{cifar|svhn}.npz if "
                        "present, else the upstream .pickle name)")
    g.add_argument("--unlabel_size_factor", type=float, default=5,
                   help="|D_U| = this x |D_L|, split over classes with rho_U (upstream rule; ignored with "
                        "--unlabeled_max)")
    g.add_argument("--labeled_max", type=int, default=None,
                   help="cifar10: labeled images of the head class (default 5000), n_i = labeled_max * "
                        "imb_factor**(i/9)")
    g.add_argument("--unlabeled_max", type=int, default=None,
                   help="cifar10: unlabeled images of the head class, u_i = unlabeled_max * "
                        "imb_factor_unlabel**(i/9) (DARP/CReST rule, replaces --unlabel_size_factor)")
    g.add_argument("--labeled_only", action="store_true",
                   help="train on D_L alone (the base classifier for gen_pseudolabels.py; with --labeled_max D_L "
                        "differs from train.py's set); --exp_str defaults to semi_base instead of semi")
    return p


def validate(args: argparse.Namespace) -> None:
    """train.py's checks plus the semi-supervised flags; resolves --unlabeled_source and --pseudo_label_file."""
    config.validate_common(args)
    args.exp_str = args.exp_str or ("semi_base" if args.labeled_only else "semi")
    check_imb_factor(args.imb_factor_unlabel, "--imb_factor_unlabel")
    spec = DATASETS[args.dataset]
    args.unlabeled_source = spec.unlabeled_source(args.unlabeled_source)
    for dest in HEAD_SIZES:
        if spec.img_max is not None and getattr(args, dest) is not None:
            free = [name for name, other in SEMI_SUPERVISED.items() if other.img_max is None]
            raise ValueError(f"--{dest} is for --dataset {', '.join(free)} only ({spec.name}'s head class has a "
                             f"fixed img_max of {spec.img_max} and the upstream --unlabel_size_factor rule)")
    for dest in (*HEAD_SIZES, "unlabel_size_factor"):
        value = getattr(args, dest)
        if value is not None and not value > 0:
            raise ValueError(f"--{dest} must be positive, got {value}")
    if not args.labeled_only:
        args.pseudo_label_file = spec.pseudo_label_file(args.data_path, args.pseudo_label_file, args.unlabeled_source)
    config.check_classifier_files(args, spec.num_classes, f"--dataset {args.dataset}")


def main(argv=None):
    args = config.parse(build_parser(), argv, validate)
    spec = DATASETS[args.dataset]
    test_set, val_set = spec.build_eval(val_split=args.val_split, **config.dataset_kwargs(args))
    return run_classification(config.classifier_run(args, RUN.run_name(vars(args))), spec, train_set(args), test_set,
                              val_set=val_set)


if __name__ == "__main__":
    config.run_cli(main)
