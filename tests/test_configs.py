"""YAML configs: ``_base_`` inheritance (bases in order, later wins, the file's own keys win; cycles and unknown
keys are errors naming the file), alias keys, and every shipped config resolving to exactly the flag values it
had before the configs were rewritten on top of shared bases (tests/golden_configs.json, recorded from the
configs and the code of commit 4280fec)."""
import json
from pathlib import Path

import pytest

import gen_pseudolabels
import pretrain_moco
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
# Flags added since the golden dump: their default, which no shipped config changes.
ADDED = {"dist_timeout": 300.0, "figures": True, "val_split": 0, "subset_file": None}


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
        resolved = resolve(path)
        for flag, default in ADDED.items():
            if flag not in values:  # (imagenet_inat's --val_split is its val list, as in the dump)
                assert resolved.pop(flag, default) == default, path
        assert resolved == {RENAMED.get(k, k): v for k, v in values.items()}, path


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_bases_in_order_later_wins_own_keys_win(tmp_path):
    write(tmp_path, "base/schedule.yaml", "epochs: 10\nlr: 0.5\nbatch_size: 64\n")
    write(tmp_path, "base/model.yaml", "_base_: schedule.yaml\narch: resnet20\nlr: 0.2\n")
    row = write(tmp_path, "rows/row.yaml", "_base_: [../base/schedule.yaml, ../base/model.yaml]\nlr: 0.05\n"
                                           "loss_type: LDAM\n")
    args = config.parse(train.build_parser(), ["--config", row, "--batch-size", "32"], validate=lambda a: None)
    assert (args.epochs, args.arch, args.lr, args.loss_type) == (10, "resnet20", 0.05, "LDAM")
    assert args.batch_size == 32  # the command line wins over every file
    one = write(tmp_path, "rows/one.yaml", "_base_: ../base/model.yaml\n")
    assert config.load_yaml_defaults(train.build_parser(), one) == {"epochs": 10, "lr": 0.2, "batch_size": 64,
                                                                    "arch": "resnet20"}


def test_base_cycle_names_the_files(tmp_path):
    a = write(tmp_path, "a.yaml", "_base_: b.yaml\nepochs: 1\n")
    write(tmp_path, "b.yaml", "_base_: a.yaml\nlr: 0.1\n")
    with pytest.raises(config.UsageError, match=r"_base_ cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        config.load_yaml_defaults(train.build_parser(), a)


@pytest.mark.parametrize("base, row, message", [
    ("loss_typo: CE\n", "_base_: base.yaml\n", r"base\.yaml \(a base of .*row\.yaml\): unknown key 'loss_typo'"),
    ("epochs: ten\n", "_base_: base.yaml\n", r"base\.yaml \(a base of .*row\.yaml\): epochs: 'ten' is not a valid"),
    ("epochs: 1\n", "_base_: nowhere.yaml\n", r"row\.yaml: _base_: no file .*nowhere\.yaml"),
    ("epochs: 1\n", "_base_: {a: 1}\n", r"row\.yaml: _base_: expected a path"),
    ("epochs: 1\n", "data_path: x\ndata: y\n", r"row\.yaml: keys 'data_path' and 'data' both set --data_path"),
])
def test_config_errors_name_the_file(tmp_path, base, row, message):
    write(tmp_path, "base.yaml", base)
    path = write(tmp_path, "row.yaml", row)
    with pytest.raises(config.UsageError, match=message):
        config.load_yaml_defaults(pretrain_moco.build_parser(), path)


def test_one_data_flag_and_batch_flag_with_the_upstream_spellings(tmp_path):
    """--data_path and -b/--batch-size everywhere; the upstream spellings (--data_dir, --data_root, --data,
    --batch_size) are aliases, on the command line and as config keys."""
    for script, upstream in ((gen_pseudolabels, "--data_dir"), (imagenet_main, "--data_root"),
                             (pretrain_moco, "--data")):
        for flag in ("--data_path", upstream):
            args = script.build_parser().parse_args([flag, "/d", "-b", "7", "--cfg" if script is imagenet_main
                                                     else "--config", "c.yaml"])
            assert (args.data_path, args.batch_size) == ("/d", 7), (script.__name__, flag)
    assert gen_pseudolabels.build_parser().parse_args(["--batch_size", "9"]).batch_size == 9
    path = write(tmp_path, "pseudo.yaml", "data_dir: /pool\nbatch-size: 50\n")
    assert config.load_yaml_defaults(gen_pseudolabels.build_parser(), path) == {"data_path": "/pool",
                                                                                "batch_size": 50}
    path = write(tmp_path, "stage.yaml", "data_root: /images\n")
    assert config.load_yaml_defaults(imagenet_main.build_parser(), path) == {"data_path": "/images"}
