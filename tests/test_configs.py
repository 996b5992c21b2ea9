"""YAML configs: ``_base_`` inheritance (bases in order, later wins, the file's own keys win; cycles and unknown
keys are errors naming the file), alias keys, and every shipped config resolving to exactly the flag values it
had before the configs were rewritten on top of shared bases (tests/golden_configs.json, recorded from the
configs and the code of commit 4280fec)."""
import json
from pathlib import Path

import pytest

import gen_pseudolabels
import pretrain_rot
import train
import train_semi
from engine import config
from imagenet_inat import main as imagenet_main
from imagenet_inat import reference_config

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden_configs.json")
# Flags renamed to the one data-folder name since the golden dump: the golden's key -> today's destination.
RENAMED = {"data_dir": "data_path", "data_root": "data_path"}


def config_files() -> list[str]:
    """Every shipped row config (repository-relative), bases and table specs excepted."""
    roots = [p for p in (REPO / "configs").iterdir() if p.is_dir() and p.name not in ("tables", "base")]
    roots.append(REPO / "imagenet_inat" / "config")
    return sorted(str(p.relative_to(REPO)) for root in roots for p in root.rglob("*.yaml"))


def script_of(path: str):
    """The script a shipped config is for (module, its --config option)."""
    name = Path(path).name
    if path.startswith("imagenet_inat/"):
        return imagenet_main, "--cfg"
    if path.startswith("configs/ssp/") and name.startswith("pretrain_rot_"):
        return pretrain_rot, "--config"
    if path.startswith("configs/semi/"):
        script = train if name.startswith("base_") else gen_pseudolabels if name.startswith("pseudo_") else train_semi
        return script, "--config"
    return train, "--config"


def resolve(path: str) -> dict:
    """The flag values ``--config path`` gives its script (before the script's own checks), as JSON would."""
    script, option = script_of(path)
    translate = reference_config.translate if script is imagenet_main else None
    args = config.parse(script.build_parser(), [option, path], validate=lambda args: None, translate=translate)
    return json.loads(json.dumps(vars(args)))


def test_every_config_resolves_to_its_golden_values(monkeypatch):
    monkeypatch.chdir(REPO)  # the golden dump holds repository-relative --config paths
    golden = json.loads(GOLDEN.read_text())
    assert config_files() == sorted(golden)
    for path, values in golden.items():
        assert resolve(path) == {RENAMED.get(k, k): v for k, v in values.items()}, path
