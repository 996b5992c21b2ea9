"""Checkpoint format: atomic writes, weights-only reads, key mapping for pre-trained backbones."""
import os
import pickle

import pytest
import torch

import models
from engine.train import checkpoint


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pth.tar"
    checkpoint.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, str(path))

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write(str(path), broken)
    assert torch.equal(checkpoint.load_checkpoint(str(path))["state_dict"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["ckpt.pth.tar"]


def test_load_refuses_pickled_code_and_names_the_flag(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(RuntimeError, match="--resume: cannot read"):
        checkpoint.load_checkpoint(str(path))
    with pytest.raises(FileNotFoundError, match="--pretrained_model: no checkpoint"):
        checkpoint.load_checkpoint(str(tmp_path / "missing"), "--pretrained_model")


def test_model_state_strips_dataparallel_and_renames_linear():
    ckpt = {"state_dict": {"module.conv1.weight": torch.zeros(1), "module.linear.weight": torch.ones(1)}}
    assert set(checkpoint.model_state(ckpt)) == {"conv1.weight", "fc.weight"}


def _save(tmp_path, name, state_dict):
    path = str(tmp_path / name)
    checkpoint.save_checkpoint({"state_dict": state_dict}, path)
    return path


def test_moco_checkpoint_loads_the_query_encoder_only(tmp_path):
    src = models.build_model("resnet20", 10)
    sd = {f"module.encoder_q.{k}": v + 1 for k, v in src.state_dict().items() if not k.startswith("fc.")}
    sd.update({f"module.encoder_k.{k}": v - 1 for k, v in src.state_dict().items()})
    sd["module.encoder_q.fc.0.weight"] = torch.zeros(64, 64)
    sd["module.queue"] = torch.zeros(128, 16)
    model = models.build_model("resnet20", 10)
    fc_before = model.fc.weight.clone()
    report = checkpoint.load_pretrained_backbone(model, _save(tmp_path, "moco_ckpt_0001.pth.tar", sd))
    assert sorted(report["missing"]) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(model.conv1.weight, src.conv1.weight + 1)
    assert torch.equal(model.fc.weight, fc_before)


def test_backbone_of_another_depth_is_refused_both_ways(tmp_path):
    deep = _save(tmp_path, "deep.pth", models.build_model("resnet32", 10).state_dict())
    shallow = _save(tmp_path, "shallow.pth", models.build_model("resnet20", 10).state_dict())
    with pytest.raises(ValueError, match="the model lacks"):
        checkpoint.load_pretrained_backbone(models.build_model("resnet20", 10), deep)
    with pytest.raises(ValueError, match="lacks backbone weights"):
        checkpoint.load_pretrained_backbone(models.build_model("resnet32", 10), shallow)
    with pytest.raises(ValueError, match="no key"):
        checkpoint.load_pretrained_backbone(models.build_model("resnet20", 10),
                                            _save(tmp_path, "other.pth", {"encoder.w": torch.zeros(1)}))


def test_runlog_restore_keeps_exactly_the_checkpointed_epochs(tmp_path, capsys):
    import json

    from engine.train.runlog import RunLog, read_records

    run = RunLog(str(tmp_path), tensorboard=False)
    for epoch in range(4):
        run.epoch({"epoch": epoch, "lr": 0.1})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "lr"')  # a line torn by a kill
    assert [r["epoch"] for r in read_records(str(tmp_path / "metrics.jsonl"))] == [0, 1, 2, 3]
    assert "dropped its last line" in capsys.readouterr().err
    (tmp_path / "final.json").write_text("{}")
    run.restore([{"epoch": 0, "lr": 0.1}, {"epoch": 1, "lr": 0.1}])  # resumed from the checkpoint of epoch 1
    run.epoch({"epoch": 2, "lr": 0.1})
    assert [json.loads(line)["epoch"] for line in open(tmp_path / "metrics.jsonl")] == [0, 1, 2]
    assert not (tmp_path / "final.json").exists()
    run.close()


def test_a_damaged_line_inside_the_log_is_an_error_naming_it(tmp_path):
    from engine.train.runlog import read_records

    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0}\n{"epo\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: line 2 is not a JSON record"):
        read_records(str(tmp_path / "metrics.jsonl"))


def test_checkpoint_files_get_the_umask_mode(tmp_path):
    path = tmp_path / "ckpt.pth.tar"
    checkpoint.save_checkpoint({"state_dict": {}}, str(path), str(tmp_path / "best.pth.tar"))
    mask = os.umask(0)
    os.umask(mask)
    assert (os.stat(path).st_mode & 0o777) == 0o666 & ~mask == (os.stat(tmp_path / "best.pth.tar").st_mode & 0o777)


def _evil(path, protocol):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f, protocol=protocol)


@pytest.mark.parametrize("kind", ["zero", "truncated", "text", "list", "evil2", "evil4"])
def test_unusable_checkpoints_are_one_user_error_naming_the_file_and_why(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"state_dict": {"w": torch.ones(1000)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "list":
        torch.save([1, 2], path)
    else:
        _evil(path, int(kind[-1]))
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load_checkpoint(str(path), "--resume")
    message = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in message  # the scripts print ValueErrors as one line
    assert message.startswith("--resume:") and str(path) in message and "weights_only=False" not in message
    expected = {"zero": "zero bytes", "truncated": "not a readable PyTorch checkpoint", "text": "refused",
                "list": "holds no 'state_dict'", "evil2": "the global posix.system", "evil4": "refused"}[kind]
    assert expected in message
