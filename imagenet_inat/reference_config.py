"""The reference code's nested YAML configs, read as this script's flat flags.

The reference ImageNet-LT / iNaturalist code (Kang et al.'s decoupling code, as shipped in imbalanced-semi-self's
``imagenet_inat/config/``) nests its settings: ``training_opt`` (dataset, batch_size, num_epochs, sampler,
log_dir...), ``networks.{feat_model,classifier}`` (``fix``: frozen backbone, ``optim_params``), ``coslr``,
``criterions`` and ``model_dir``. ``translate`` maps such a file onto the flags of ``python -m imagenet_inat.main``
so ``--cfg`` accepts it unchanged; a flat file passes through. What this code does not implement (OLTR's
centroids, other classifiers, losses or samplers) is refused with the key that asks for it.

Mapping: ``feat_model.fix`` true -> stage crt (init = ``model_dir``, the stage-1 folder), false -> stage feature;
``sampler`` null -> instance, ``ClassAwareSampler`` -> class_aware (``num_samples_cls`` -> samples_per_class);
``coslr`` true -> cosine, false -> step every ``scheduler_params.step_size`` epochs by ``gamma``; the optimiser
settings of the network that trains (the classifier when the backbone is fixed); split files at the reference's
``./imagenet_inat/data/{dataset}/{dataset}_{train,val,test}.txt`` (no test split for iNaturalist18), images under
``--data_root`` (the reference's ``./data``). ``model_dir`` becomes ``init`` for every stage, as the reference
loads it for every stage (the backbone only when training): its shipped configs name ``./data`` for stage 1
too, so give a MoCo checkpoint or stage-1 folder with ``--model_dir``. Those configs also write every stage
into ``log_dir: ./data``; a stage may not write into the folder it starts from, so give cRT its own ``--log_dir``.
"""
from __future__ import annotations

import os

from imagenet_inat.datasets import LT_DATASETS, reference_split_file

SAMPLERS = {"ClassAwareSampler": "class_aware"}
CLASSIFIERS = ("DotProductClassifier.py",)
LOSSES = ("SoftmaxLoss.py",)


def is_reference_config(cfg) -> bool:
    return isinstance(cfg, dict) and {"training_opt", "networks"} <= set(cfg)


def _refuse(path: str, key: str, what: str) -> None:
    raise SystemExit(f"error: {path}: {key}: {what} is not implemented here; see imagenet_inat/README.md")


REQUIRED = ("dataset", "num_classes", "batch_size", "num_epochs")


def _check_supported(cfg: dict, path: str) -> None:
    missing = [key for key in REQUIRED if key not in cfg["training_opt"]]
    if missing:
        raise SystemExit(f"error: {path}: training_opt.{missing[0]} is missing (the reference layout needs "
                         f"{', '.join(REQUIRED)})")
    if cfg.get("coslr") and cfg.get("endlr", 0.0):
        _refuse(path, "endlr", f"a cosine schedule ending at {cfg['endlr']} instead of 0")
    if (cfg.get("memory") or {}).get("centroids"):
        _refuse(path, "memory.centroids", "OLTR's meta-embedding memory")
    classifier = os.path.basename(cfg["networks"].get("classifier", {}).get("def_file", CLASSIFIERS[0]))
    if classifier not in CLASSIFIERS:
        _refuse(path, "networks.classifier.def_file", classifier)
    for name, criterion in (cfg.get("criterions") or {}).items():
        loss = os.path.basename(criterion.get("def_file", ""))
        if loss not in LOSSES:
            _refuse(path, f"criterions.{name}.def_file", loss)
    sampler = cfg["training_opt"].get("sampler")
    if sampler and sampler.get("type") not in SAMPLERS:
        _refuse(path, "training_opt.sampler.type", str(sampler.get("type")))
    if cfg["training_opt"].get("dataset") not in LT_DATASETS:
        raise SystemExit(f"error: {path}: training_opt.dataset: {cfg['training_opt'].get('dataset')!r} is not one "
                         f"of {sorted(LT_DATASETS)}")


def _schedule(cfg: dict, epochs: int) -> dict:
    if cfg.get("coslr", False):
        return {"lr_schedule": "cosine"}
    params = cfg["training_opt"].get("scheduler_params") or {"step_size": 30, "gamma": 0.1}
    milestones = list(range(params["step_size"], epochs, params["step_size"]))
    return {"lr_schedule": "step", "milestones": milestones,
            "lr_factors": [params["gamma"] ** (i + 1) for i in range(len(milestones))]}


def translate(cfg: dict, path: str) -> dict:
    """The flat flags of a reference config (module docstring); any other mapping is returned unchanged."""
    if not is_reference_config(cfg):
        return cfg
    _check_supported(cfg, path)
    opt, nets = cfg["training_opt"], cfg["networks"]
    fixed = bool(nets.get("feat_model", {}).get("fix", False))
    trained = nets.get("classifier" if fixed else "feat_model", {}).get("optim_params") or {}
    dataset, sampler = opt["dataset"], opt.get("sampler")
    flat = {"dataset": dataset, "arch": opt.get("backbone", "resnet50"), "num_classes": opt["num_classes"],
            "batch_size": opt["batch_size"], "epochs": opt["num_epochs"], "workers": opt.get("num_workers", 4),
            "stage": "crt" if fixed else "feature", "log_dir": opt.get("log_dir", "./data"),
            "sampler": SAMPLERS[sampler["type"]] if sampler else "instance", "loss_type": "CE",
            "warmup_epochs": 0, **_schedule(cfg, opt["num_epochs"])}
    flat.update({k: trained[k] for k in ("lr", "momentum", "weight_decay") if k in trained})
    if sampler:
        flat["samples_per_class"] = sampler.get("num_samples_cls", 4)
    if cfg.get("model_dir"):
        flat["init"] = cfg["model_dir"]
    for split in LT_DATASETS[dataset].list_files:
        flat[f"{split}_split"] = os.path.join(".", reference_split_file(dataset, split))
    return flat
