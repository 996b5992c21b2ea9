"""reproduce.py / engine.tables: table specs load and validate, expand into the right commands, run on synthetic
CIFAR-10 as subprocesses, skip finished runs, and report mean ± sample std next to the papers' numbers."""
import csv
import dataclasses
import json
import math
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml
from PIL import Image

import reproduce
from engine import tables
from engine.tables import plan as tables_plan
from engine.tables import report as tables_report

REPO = Path(__file__).resolve().parents[1]
TABLE_SPECS = sorted((REPO / "configs" / "tables").glob("*.yaml"))
CONFIG_SCRIPTS = {"ldam_drw": "train.py", "lade": "train.py", "logit_adjustment": "train.py"}
SCRIPTS = ["train.py", "train_semi.py", "pretrain_rot.py", "gen_pseudolabels.py", "pretrain_moco.py",
           "imagenet_inat/main.py"]


def dry_run(capsys, *argv):
    reproduce.main([*argv, "--dry-run"])
    return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def flag(tokens, name):
    return tokens[tokens.index(name) + 1]


def write_spec(folder, stem, **fields):
    spec = {"name": stem, "title": "synthetic", "sources": {"paper": "a hand-made number"}, "metric": "error",
            "rand_number": 0, "seeds": [0, 1],
            "defaults": {"arch": "resnet20", "batch_size": 64, "epochs": 1, "eval_batch_size": 200,
                         "figures": False},  # the runs' own figures cost seconds each; drawn in one test below
            "columns": [{"key": "c10", "label": "CIFAR-10 rho=10", "overrides": {"dataset": "cifar10",
                                                                                  "imb_factor": 0.1}}],
            "rows": [{"key": "CE", "label": "CE", "overrides": {"loss_type": "CE"},
                      "paper": {"c10": {"value": 80.0, "source": "paper", "tag": "R"}}},
                     {"key": "LDAM_DRW", "label": "LDAM-DRW", "overrides": {"loss_type": "LDAM", "train_rule": "DRW"}}]}
    spec.update(fields)
    path = Path(folder) / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
    return str(path)


# ------------------------------------------------------------------------------------------ shipped files

@pytest.mark.parametrize("path", TABLE_SPECS, ids=[p.stem for p in TABLE_SPECS])
def test_every_table_spec_loads_and_expands(path):
    table = tables.load_table(str(path))
    plan = tables.expand(table, tables.pick_seeds(table, 1), out="results")
    assert table.name == path.stem and plan.jobs
    assert set(plan.cells) == {(r.key, c.key) for r in table.rows for c in table.columns}
    for row in table.rows:
        assert set(row.paper) <= {c.key for c in table.columns}
    folders = [job.dir for job in plan.jobs]
    assert len(folders) == len(set(folders))  # every run has its own --root_log/--root_model


def test_the_four_tables_ship():
    assert {p.stem for p in TABLE_SPECS} >= {"ldam_drw_cifar", "ssp_cifar", "semi_cifar10_svhn", "lade_cifar100"}


def shipped_configs():
    for folder in sorted(p for p in (REPO / "configs").iterdir() if p.is_dir() and p.name != "tables"):
        for path in sorted(folder.glob("*.yaml")):
            yield folder.name, path


@pytest.mark.parametrize("folder,path", list(shipped_configs()),
                         ids=[f"{f}/{p.name}" for f, p in shipped_configs()])
def test_every_shipped_config_loads(folder, path):
    """A folder mapped to a script loads with that script's parser; any other with at least one present script."""
    scripts = [CONFIG_SCRIPTS[folder]] if folder in CONFIG_SCRIPTS else SCRIPTS
    errors = []
    for script in scripts:
        try:
            tables.check_config(script, str(path))
            return
        except tables.TableError as e:
            errors.append(str(e))
    pytest.fail("; ".join(errors))


def test_check_config_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: cifar10\nloss_typo: CE\n")
    with pytest.raises(tables.TableError, match=r"bad\.yaml.*loss_typo"):
        tables.check_config("train.py", str(bad))


# ------------------------------------------------------------------------------------------- expansion

def test_ldam_drw_dry_run_prints_every_command(capsys):
    commands = dry_run(capsys, "ldam_drw_cifar", "--seeds", "1")
    assert len(commands) == 48
    assert all(c[0] == "python" and os.path.basename(c[1]) == "train.py" for c in commands)
    cells = {(flag(c, "--dataset"), flag(c, "--imb_factor"), flag(c, "--loss_type"), flag(c, "--train_rule"))
             for c in commands}
    assert cells == {(d, f, loss, rule) for d in ("cifar10", "cifar100") for f in ("0.01", "0.1")
                     for loss in ("CE", "Focal", "LDAM") for rule in ("None", "Resample", "Reweight", "DRW")}
    for c in commands:
        assert flag(c, "--seed") == "0" and flag(c, "--rand_number") == "0"
        assert flag(c, "--exp_str") == "ldam_drw_cifar_s0"
        dataset, rho = flag(c, "--dataset"), round(1 / float(flag(c, "--imb_factor")))
        assert os.path.basename(flag(c, "--config")) == \
            f"{dataset}_exp{rho}_{flag(c, '--loss_type')}_{flag(c, '--train_rule')}.yaml"
    assert len({flag(c, "--root_log") for c in commands}) == 48
    assert len({flag(c, "--root_model") for c in commands}) == 48


def test_seeds_and_epochs_flags(capsys):
    commands = dry_run(capsys, "ldam_drw_cifar", "--seeds", "2", "--epochs", "3", "--out", "elsewhere")
    assert len(commands) == 96
    assert {flag(c, "--seed") for c in commands} == {"0", "1"}
    assert {flag(c, "--epochs") for c in commands} == {"3"}
    assert all(flag(c, "--root_log").startswith(os.path.join("elsewhere", "runs", "ldam_drw_cifar_epochs3"))
               for c in commands)


def test_pick_seeds_takes_the_first_and_continues():
    table = tables.load_table("lade_cifar100")
    assert table.seeds == (1, 2, 3)
    assert tables.pick_seeds(table, 2) == [1, 2]
    assert tables.pick_seeds(table, 5) == [1, 2, 3, 4, 5]
    assert tables.pick_seeds(table, None) == [1, 2, 3]


def test_ssp_pipeline_order_paths_and_shared_pretraining():
    table = tables.load_table("ssp_cifar")
    plan = tables.expand(table, [0], out="out")
    assert len(plan.jobs) == 6 * (6 + 1)  # 6 rows per column, one pre-training shared by the 3 SSP rows
    for column in table.columns:
        finals = {row: plan.cells[(row, column.key)][0] for row in ("CE_SSP", "CE_Balanced_SSP", "LDAM_DRW_SSP")}
        pretrain = finals["CE_SSP"].deps[0]
        assert all(job.deps == [pretrain] for job in finals.values())
        assert pretrain.script == "pretrain_rot.py" and "--exp_str" not in pretrain.argv
        dataset, imb = flag(pretrain.argv, "--dataset"), flag(pretrain.argv, "--imb_factor")
        assert pretrain.outputs["checkpoint"] == os.path.join(
            pretrain.dir, "ckpt", f"{dataset}_resnet32_CE_None_exp_{imb}_pretrain_rot", "ckpt.pth.tar")
        assert flag(pretrain.argv, "--root_model") == os.path.join(pretrain.dir, "ckpt")
        for job in finals.values():
            assert flag(job.argv, "--pretrained_model") == pretrain.outputs["checkpoint"]
            assert plan.jobs.index(pretrain) < plan.jobs.index(job)
        assert flag(finals["LDAM_DRW_SSP"].argv, "--loss_type") == "LDAM"
        assert flag(pretrain.argv, "--loss_type") == "CE" and flag(pretrain.argv, "--train_rule") == "None"
        assert "--pretrained_model" not in plan.cells[("CE", column.key)][0].argv


def test_flag_dependent_defaults_reach_the_run_names():
    # pretrain_rot.py's -a default depends on --dataset (its RUN.resolve): without `arch` in the spec, the
    # planned checkpoint path must still be the one the script writes (resnet32 for CIFAR).
    table = tables.load_table("ssp_cifar")
    plan = tables.expand(dataclasses.replace(table, defaults={}), [0], out="out")
    pretrain = next(job for job in plan.jobs if job.script == "pretrain_rot.py")
    assert "_resnet32_CE_None_exp_" in pretrain.outputs["checkpoint"]
    # and so do flag-dependent run names: image-list data sets have no long-tail fields
    argv = ["--dataset", "imagenet", "--list_file", __file__, "--val_list_file", __file__,
            "--root_model", os.path.join("run", "ckpt")]
    script = tables.load_script("pretrain_rot.py", "here")
    values = tables_plan._values(script, script.build_parser(), argv, "here", ())
    outputs = script.run.output_paths(values)
    assert outputs["checkpoint"] == os.path.join("run", "ckpt", "imagenet_resnet50_CE_None_pretrain_rot", "ckpt.pth.tar")


def test_semi_pipeline_order_paths_and_sharing():
    table = tables.load_table("semi_cifar10_svhn")
    plan = tables.expand(table, [0], out="out", data_path="/data")
    semi = plan.cells[("CE_DU", "cifar10_r50_ru50")][0]
    pseudo = semi.deps[1]
    base = semi.deps[0]
    assert [semi.script, pseudo.script, base.script] == ["train_semi.py", "gen_pseudolabels.py", "train.py"]
    assert plan.jobs.index(base) < plan.jobs.index(pseudo) < plan.jobs.index(semi)
    assert flag(pseudo.argv, "--resume") == base.outputs["checkpoint"]
    assert base.outputs["checkpoint"].endswith(os.path.join("cifar10_resnet32_CE_None_exp_0.02_semi_cifar10_svhn_s0",
                                                            "ckpt.pth.tar"))
    assert flag(pseudo.argv, "--data_path") == "/data" and "--data_dir" not in pseudo.argv  # the one data flag
    assert flag(pseudo.argv, "--dataset") == "cifar10" and flag(pseudo.argv, "--loss_type") == "CE"
    assert flag(semi.argv, "--pseudo_label_file") == pseudo.outputs["file"] == os.path.join(pseudo.dir,
                                                                                           "pseudo_labels.npz")
    assert flag(semi.argv, "--imb_factor_unlabel") == "0.02" and "--imb_factor_unlabel" not in base.argv
    assert semi.outputs["final"].endswith(os.path.join(
        "cifar10_resnet32_CE_None_exp_0.02_0.02_semi_cifar10_svhn_s0", "final.json"))
    # the CE base is the CE baseline, and every rho_U column of a (dataset, rho) shares it and its pseudo-labels
    assert plan.cells[("CE", "cifar10_r50_ru1")][0] is base is plan.cells[("CE", "cifar10_r50_ru100")][0]
    ldam_semi = plan.cells[("LDAM_DRW_DU", "cifar10_r50_ru100")][0]
    assert ldam_semi.deps == [base, pseudo] and flag(ldam_semi.argv, "--loss_type") == "LDAM"
    assert sum(job.script == "gen_pseudolabels.py" for job in plan.jobs) == 4


# ------------------------------------------------------------------------------------------ validation

def spec_with(tmp_path, **changes):
    return write_spec(tmp_path, "bad", **changes)


BASE_ROW = {"key": "CE", "label": "CE"}


@pytest.mark.parametrize("changes,message", [
    ({"colour": "red"}, r"bad\.yaml: unknown key 'colour'"),
    ({"metric": "f1"}, r"bad\.yaml: metric: 'f1'"),
    ({"seeds": [0, 0]}, "seeds"),
    ({"columns": [{"key": "c10", "label": "x", "overides": {}}]}, r"columns\[0\]: unknown key 'overides'"),
    ({"rows": [dict(BASE_ROW, scirpt="train.py")]}, r"rows\[0\]: unknown key 'scirpt'"),
    ({"rows": [dict(BASE_ROW, overrides={"seed": 3})]}, "'seed' is set by reproduce.py"),
    ({"rows": [dict(BASE_ROW, overrides={"loss_typo": "CE"})]}, "unknown flag 'loss_typo'"),
    ({"rows": [dict(BASE_ROW, overrides={"loss_type": "Hinge"})]}, r"bad\.yaml: row 'CE'.*Hinge"),
    ({"rows": [dict(BASE_ROW, overrides={"imb_factor": 100})]}, "did you mean 0.01"),
    ({"rows": [dict(BASE_ROW, script="train_v2.py")]}, "unknown script 'train_v2.py'"),
    ({"rows": [dict(BASE_ROW, config="configs/nowhere/{column}.yaml")]}, "no config file"),
    ({"rows": [dict(BASE_ROW, paper={"c100": {"value": 1, "source": "paper", "tag": "R"}})]}, "unknown key 'c100'"),
    ({"rows": [dict(BASE_ROW, paper={"c10": {"value": 1, "source": "paper", "tag": "X"}})]}, "tag: 'X'"),
    ({"rows": [dict(BASE_ROW, paper={"c10": {"value": 1, "source": "blog", "tag": "R"}})]}, "source: 'blog'"),
    ({"rows": [dict(BASE_ROW, stages=[{"name": "a", "script": "train.py",
                                       "overrides": {"pretrained_model": "{b.checkpoint}"}},
                                      {"name": "b", "script": "train.py"}])]}, "refers to 'b'"),
    ({"rows": [dict(BASE_ROW, stages=[{"name": "a", "script": "train.py"},
                                      {"name": "b", "script": "train.py",
                                       "overrides": {"pretrained_model": "{a.chekpoint}"}}])]}, "no output or flag"),
    ({"name": "other"}, "must equal the file name"),
])
def test_invalid_specs_name_file_and_key(tmp_path, changes, message):
    with pytest.raises(tables.TableError, match=message):
        table = tables.load_table(spec_with(tmp_path, **changes))
        tables.expand(table, [0])


def test_unknown_table_lists_the_shipped_ones():
    with pytest.raises(tables.TableError, match="ldam_drw_cifar"):
        tables.table_path("no_such_table")


def test_interrupted_run_resumes_and_stale_run_is_refused(tmp_path):
    table = tables.load_table("lade_cifar100")
    job = tables.expand(table, [1], out=str(tmp_path)).jobs[0]
    os.makedirs(os.path.dirname(job.outputs["checkpoint"]))
    Path(job.outputs["checkpoint"]).write_bytes(b"")
    again = tables.expand(table, [1], out=str(tmp_path)).jobs[0]
    assert again.argv[-2:] == ["--resume", job.outputs["checkpoint"]]
    os.makedirs(os.path.dirname(job.marker))
    Path(job.marker).write_text(json.dumps({"epochs": 3}))
    with pytest.raises(tables.TableError, match="finished run of 3 epochs, but the table asks for 200"):
        tables.expand(table, [1], out=str(tmp_path))


def test_mean_and_sample_std():
    mean, std = tables_report._mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert tables_report._mean_std([5.0]) == (5.0, None)
    assert tables.METRICS["error"].from_top1(77.5) == 22.5 and tables.METRICS["accuracy"].from_top1(77.5) == 77.5


# ------------------------------------------------------------------------------------ end to end (CPU)

def read_csv(path):
    with open(path, newline="") as f:
        return {(r["row"], r["column"]): r for r in csv.DictReader(f)}


def test_synthetic_table_runs_reports_and_skips(cifar10_root, tmp_path):
    spec = write_spec(tmp_path, "synthetic")
    out = tmp_path / "results"
    argv = [spec, "--jobs", "2", "--data_path", cifar10_root, "--out", str(out), "--device", "cpu"]
    result = reproduce.main(argv)
    assert result.executed == 4 and result.skipped == 0 and not result.failed

    plan = tables.expand(tables.load_table(spec), [0, 1], out=str(out), data_path=cifar10_root, device="cpu")
    report = read_csv(out / "synthetic.csv")
    assert set(report) == {("CE", "c10"), ("LDAM_DRW", "c10")}
    for (row, column), line in report.items():
        finals = [json.load(open(plan.cells[(row, column)][seed].marker)) for seed in (0, 1)]
        assert [f["epochs"] for f in finals] == [1, 1]
        for which in ("last", "best"):
            errors = [100.0 - f[which]["top1"] for f in finals]
            mean = (errors[0] + errors[1]) / 2
            std = abs(errors[0] - errors[1]) / math.sqrt(2)  # sample std (ddof=1) of two values
            assert float(line[f"{which}_mean"]) == pytest.approx(mean, abs=1e-4)
            assert float(line[f"{which}_std"]) == pytest.approx(std, abs=1e-4)
        assert line["n_seeds"] == "2" and line["seeds"] == "0 1" and line["rand_number"] == "0"
        assert line["data_path"] == cifar10_root and line["compared"] == "best"
    ce = report[("CE", "c10")]
    assert ce["paper"] == "80" and ce["paper_tag"] == "R"
    assert float(ce["diff_ours_minus_paper"]) == pytest.approx(float(ce["best_mean"]) - 80.0, abs=1e-3)
    assert report[("LDAM_DRW", "c10")]["paper"] == "" and report[("LDAM_DRW", "c10")]["diff_ours_minus_paper"] == ""
    markdown = (out / "synthetic.md").read_text()
    assert f"{float(ce['best_mean']):.2f} ± {float(ce['best_std']):.2f}" in markdown
    assert "80.00 [R]" in markdown and "training seeds (`--seed`) | 0, 1" in markdown and cifar10_root in markdown
    assert "| LDAM-DRW | CIFAR-10 rho=10 |" in markdown and "| — | — | — |" in markdown

    mtimes = {job.marker: os.path.getmtime(job.marker) for job in plan.jobs}
    again = reproduce.main(argv)
    assert again.executed == 0 and again.skipped == 4
    assert {m: os.path.getmtime(m) for m in mtimes} == mtimes


def test_a_table_with_a_validation_split_reports_the_three_numbers(cifar10_root, tmp_path):
    spec = write_spec(tmp_path, "withval", seeds=[0], compare="val",
                      defaults={"arch": "resnet20", "batch_size": 64, "epochs": 2, "eval_batch_size": 200,
                                "val_split": 5, "figures": True},
                      rows=[{"key": "CE", "label": "CE", "overrides": {"loss_type": "CE"},
                             "paper": {"c10": {"value": 80.0, "source": "paper", "tag": "R"}}}])
    out = tmp_path / "results"
    assert not reproduce.main([spec, "--data_path", cifar10_root, "--out", str(out), "--device", "cpu"]).failed
    plan = tables.expand(tables.load_table(spec), [0], out=str(out), data_path=cifar10_root, device="cpu")
    final = json.load(open(plan.cells[("CE", "c10")][0].marker))
    line = read_csv(out / "withval.csv")[("CE", "c10")]
    for which, key in (("last", "last"), ("val", "val_selected"), ("best", "best")):
        assert float(line[f"{which}_mean"]) == pytest.approx(100.0 - final[key]["top1"], abs=1e-4)
    assert float(line["diff_ours_minus_paper"]) == pytest.approx(float(line["val_mean"]) - 80.0, abs=1e-3)
    markdown = (out / "withval.md").read_text()
    assert "| ours: last | ours: val-selected | ours: best |" in markdown and "`--val_split`" in markdown
    # the results page: a figure per column, embedded, and every cell's runs linked to the figures they drew
    with Image.open(out / "withval_figures" / "c10.png") as image:
        assert image.format == "PNG" and image.size == (1000, 600)
    assert "![CIFAR-10 rho=10: top-1 error (%) = 100 - top-1 accuracy](withval_figures/c10.png)" in markdown
    (link,) = re.findall(r"\* CE: \[seed 0\]\(([^)]+)\)", markdown)
    assert (out / link / "curves.png").is_file() and (out / link / "reliability_val_selected.png").is_file()


def test_failed_stage_is_reported_and_blocks_its_pipeline(cifar10_root, tmp_path):
    """The first stage diverges (lr 1e30: the loss turns non-finite at the first step) and fails; the second is
    not run, the report is still written and the run counts as failed."""
    spec = write_spec(tmp_path, "broken", seeds=[0], rows=[{
        "key": "two_stage", "label": "two stages", "overrides": {"lr": 1e30, "print_freq": 1},
        "stages": [{"name": "first", "script": "train.py"},
                   {"name": "second", "script": "train.py",
                    "overrides": {"pretrained_model": "{first.checkpoint}"}}]}])
    out = tmp_path / "results"
    result = reproduce.main([spec, "--data_path", cifar10_root, "--out", str(out), "--device", "cpu"])
    assert result.executed == 1 and len(result.failed) == 1 and len(result.blocked) == 1
    assert "first" in result.failed[0].label and "second" in result.blocked[0].label
    markdown = (out / "broken.md").read_text()
    assert "1 run(s) failed" in markdown and "seed(s) 0" in markdown
    assert os.path.isfile(os.path.join(result.failed[0].dir, "output.log"))


def test_run_names_are_the_scripts_own_declarations():
    """reproduce.py plans with the very RUN declaration each script names its own runs with."""
    import pretrain_rot
    import train
    import train_semi
    fields = ("dataset", "arch", "loss_type", "train_rule", "imb_type", "imb_factor", "exp_str")
    values = {f: f.upper() for f in (*fields, "imb_factor_unlabel")}
    assert train.RUN.run_name(values) == "_".join(f.upper() for f in fields)
    assert train_semi.RUN.run_name(values) == "DATASET_ARCH_LOSS_TYPE_TRAIN_RULE_IMB_TYPE_IMB_FACTOR_" \
                                              "IMB_FACTOR_UNLABEL_EXP_STR"
    assert pretrain_rot.RUN.run_name(dict(values, dataset="cifar10")) == "cifar10_" + "_".join(
        f.upper() for f in fields[1:])
    for script, module in (("train.py", train), ("train_semi.py", train_semi), ("pretrain_rot.py", pretrain_rot)):
        assert tables.load_script(script, "here").run is module.RUN


def test_a_script_without_a_declaration_is_refused(tmp_path):
    spec = write_spec(tmp_path, "undeclared", rows=[dict(BASE_ROW, script="reproduce.py")])
    with pytest.raises(tables.TableError, match=r"undeclared\.yaml.*reproduce\.py does not declare RUN"):
        tables.load_table(spec)


def test_on_off_switches_become_flag_or_no_flag():
    import argparse

    parser = argparse.ArgumentParser()
    action = parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True)
    assert tables_plan._tokens("download", False, action, "spec") == ["--no-download"]
    assert tables_plan._tokens("download", True, action, "spec") == ["--download"]


# ------------------------------------------------------------------- every script: MoCo, imagenet_inat

def test_moco_then_train_runs_from_the_scripts_declarations(tiny_cifar10, tmp_path):
    """pretrain_moco.py -> train.py: the MoCo checkpoint path comes from pretrain_moco.py's RUN
    ({root_path}/{dataset}/checkpoint/moco_ckpt_{epochs:04d}.pth.tar), and train.py starts from it."""
    spec = write_spec(tmp_path, "moco", seeds=[0],
                      defaults={"arch": "resnet20", "epochs": 1, "imb_type": "none", "batch_size": 20,
                                "pretrain_moco.py": {"moco-k": 80, "moco-dim": 16, "workers": 0},
                                "train.py": {"eval_batch_size": 40}},
                      columns=[{"key": "c10", "label": "CIFAR-10", "overrides": {"dataset": "cifar10"}}],
                      rows=[{"key": "MoCo_CE", "label": "MoCo + CE", "stages": [
                          {"name": "moco", "script": "pretrain_moco.py"},
                          {"name": "train", "script": "train.py",
                           "overrides": {"pretrained_model": "{moco.checkpoint}"}}]}])
    out = tmp_path / "results"
    plan = tables.expand(tables.load_table(spec), [0], out=str(out), data_path=tiny_cifar10, device="cpu")
    moco, train = plan.jobs
    assert train.deps == [moco] and plan.cells[("MoCo_CE", "c10")][0] is train
    assert moco.outputs["checkpoint"] == os.path.join(moco.dir, "ckpt", "cifar10", "checkpoint",
                                                      "moco_ckpt_0001.pth.tar")
    assert moco.marker == os.path.join(moco.dir, "log", "cifar10_resnet20_none_0.01_moco_s0", "final.json")
    assert flag(moco.argv, "--root_path") == os.path.join(moco.dir, "ckpt") and "--root_model" not in moco.argv
    assert flag(moco.argv, "--data_path") == tiny_cifar10 and flag(moco.argv, "--rand_number") == "0"
    assert flag(train.argv, "--pretrained_model") == moco.outputs["checkpoint"]

    result = reproduce.main([spec, "--data_path", tiny_cifar10, "--out", str(out), "--device", "cpu"])
    assert result.executed == 2 and not result.failed and not result.blocked
    assert os.path.isfile(moco.outputs["checkpoint"]) and train.finished()
    assert "self-supervised init from " + moco.outputs["checkpoint"] in (Path(train.dir) / "output.log").read_text()


def test_imagenet_inat_stages_expand_as_python_m(tmp_path):
    """python -m imagenet_inat.main stages: --cfg configs, --log_dir in the run's folder, the stage-1 folder as
    the cRT init, no --rand_number or --exp_str (imagenet_inat/main.py's RUN)."""
    synthetic = "imagenet_inat/config/synthetic"
    spec = write_spec(tmp_path, "inat", seeds=[3], defaults={},
                      columns=[{"key": "syn", "label": "synthetic ImageNet-LT"}],
                      rows=[{"key": "cRT", "label": "cRT", "stages": [
                          {"name": "feature", "script": "imagenet_inat/main.py",
                           "config": f"{synthetic}/feat_uniform.yaml"},
                          {"name": "crt", "script": "imagenet_inat/main.py", "config": f"{synthetic}/cls_crt.yaml",
                           "overrides": {"init": "{feature.log_dir}"}}]}])
    plan = tables.expand(tables.load_table(spec), [3], out="out", data_path="/images", epochs=2)
    feature, crt = plan.jobs
    config = os.path.relpath(REPO / synthetic / "feat_uniform.yaml")
    assert feature.command() == ["python", "-m", "imagenet_inat.main", "--cfg", config, "--epochs", "2", "--seed",
                                 "3", "--log_dir", os.path.join(feature.dir, "log"), "--data_path", "/images"]
    assert crt.deps == [feature] and flag(crt.argv, "--init") == feature.outputs["log_dir"]
    assert feature.outputs["log_dir"] == os.path.join("out", "runs", "inat_epochs2", "syn", "cRT", "seed3",
                                                      "feature", "log")
    assert crt.outputs["checkpoint"] == os.path.join(crt.dir, "log", "ckpt.pth.tar")
    assert crt.marker == os.path.join(crt.dir, "log", "final.json") and crt.epochs == 2
