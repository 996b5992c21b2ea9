"""A script's run name and outputs, declared once in the script module as ``RUN = RunSpec(...)``.

The script names its own run with ``RUN.run_name(values)``; reproduce.py (engine.tables) reads the same
declaration to set the script's run flags (seeds, output folders) and to find what it writes, so a new script
becomes runnable from a table spec by declaring ``RUN`` and ``build_parser()``::

    RUN = RunSpec(("dataset", "arch", "exp_str"),
                  outputs={"final": "{root_log}/{run_name}/final.json",
                           "checkpoint": "{root_path}/{dataset}/checkpoint/moco_ckpt_{epochs:04d}.pth.tar"},
                  folders={"root_log": "{run}/log", "root_path": "{run}/ckpt"})

Output paths are ``str.format`` templates over the run's flag values (destination names) and ``run_name``;
folder templates take ``run``, the folder reproduce.py gives the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

Fields = Sequence[str] | Callable[[Mapping], Sequence[str]]


def run_name(values: Mapping, fields: Sequence[str]) -> str:
    """The upstream run name: the values of ``fields`` joined by ``_``, e.g.
    ``cifar10_resnet32_CE_None_exp_0.01_ss_pretrained``."""
    return "_".join(str(values[f]) for f in fields)


@dataclass(frozen=True)
class RunSpec:
    """How a script names its run, what it writes and which run flags reproduce.py sets on it.

    ``name_fields``: the run-name fields, or a function of the flag values returning them (None: the script has
    no run name). ``outputs``: output name -> path template (``{stage.NAME}`` in a table spec refers to them);
    ``marker``: the output whose existence means the run finished. ``folders``: flag -> template over ``{run}``,
    the run's own folder, for the flags that choose where the script writes. ``fixed``: other flags reproduce.py
    sets to a fixed value. ``trains``: takes ``--seed`` and ``--epochs``, and an interrupted run continues with
    ``--resume {checkpoint}``; ``subset_seed``: takes ``--rand_number`` (the long-tailed subset's seed);
    ``exp_str``: takes ``--exp_str`` (reproduce.py sets ``TABLE_sSEED``; False keeps the script's own suffix).
    ``resolve``: values -> values, the defaults that depend on other flags (filled after parsing).
    ``checks``: the flag checks reproduce.py runs on the parsed namespace before anything runs.
    ``translate``: rewrites another config layout into flag names (engine.config.load_yaml_defaults).
    """
    name_fields: Fields | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    marker: str = "final"
    folders: Mapping[str, str] = field(default_factory=dict)
    fixed: Mapping[str, object] = field(default_factory=dict)
    trains: bool = True
    subset_seed: bool = True
    exp_str: bool = True
    resolve: Callable[[dict], dict] | None = None
    checks: Callable | None = None
    translate: Callable[[dict, str], dict] | None = None

    def run_name(self, values: Mapping) -> str:
        fields = self.name_fields(values) if callable(self.name_fields) else self.name_fields
        return run_name(values, fields)

    def output_paths(self, values: Mapping) -> dict[str, str]:
        """Every output's path for these flag values."""
        names = {} if self.name_fields is None else {"run_name": self.run_name(values)}
        return {key: template.format(**values, **names) for key, template in self.outputs.items()}


CLASSIFICATION_OUTPUTS = {
    "final": "{root_log}/{run_name}/final.json", "checkpoint": "{root_model}/{run_name}/ckpt.pth.tar",
    "best_checkpoint": "{root_model}/{run_name}/ckpt.best.pth.tar", "log_dir": "{root_log}/{run_name}",
    "ckpt_dir": "{root_model}/{run_name}"}


def classification_run(name_fields: Fields, **options) -> RunSpec:
    """A script of engine.train.experiment.run_classification (train.py, train_semi.py, pretrain_rot.py): logs and
    ``final.json`` in ``{root_log}/{run_name}/``, checkpoints in ``{root_model}/{run_name}/`` (the upstream
    layout)."""
    return RunSpec(name_fields, outputs=CLASSIFICATION_OUTPUTS,
                   folders={"root_log": "{run}/log", "root_model": "{run}/ckpt"}, **options)
