"""engine.data.safe_pickle: plain data loads, code-running pickles are refused, dumps are atomic."""
import os
import pickle

import numpy as np
import pytest

from engine.data import safe_pickle


class _RunsShell:
    """A pickle payload that calls os.system when loaded by plain pickle."""

    def __reduce__(self):
        return os.system, ("echo pwned",)


def _write(path, obj, protocol=4):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def test_refuses_os_system_and_runs_nothing(tmp_path, monkeypatch):
    path = _write(tmp_path / "evil.pickle", {"data": np.zeros(3), "x": _RunsShell()})
    calls = []
    monkeypatch.setattr(f"{os.system.__module__}.system", calls.append)
    pickle.loads(path.read_bytes())
    assert calls == ["echo pwned"], "the payload must be live for this test to mean anything"
    calls.clear()
    with pytest.raises(pickle.UnpicklingError) as error:
        safe_pickle.load(path)
    assert calls == []
    assert f"{os.system.__module__}.system" in str(error.value)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("payload", [eval, getattr, __import__, open, pickle.loads])
def test_refuses_any_other_callable(tmp_path, payload):
    class Call:
        def __reduce__(self):
            return payload, ("0",)

    path = _write(tmp_path / "call.pickle", [1, {"nested": Call()}])
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        safe_pickle.load(path)


class _Record:
    def __init__(self):
        self.value = 1


def test_refuses_class_instances(tmp_path):
    path = _write(tmp_path / "obj.pickle", {"ok": [1], "record": _Record()})
    with pytest.raises(pickle.UnpicklingError, match="_Record"):
        safe_pickle.load(path)


PLAIN = {
    "data": np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3),
    "extrapolated_targets": np.array([3, 1, 4], dtype=np.int64),
    "confidence": np.array([0.5, 0.25], dtype=np.float32),
    "names": np.array(["cat", "dog"]),
    "scalars": (np.int64(7), np.float32(0.5), 3, 2.5, 1 + 2j, None, True),
    "containers": [{"a": [1, 2]}, (3,), {4, 5}, frozenset({6}), b"raw", bytearray(b"buf")],
}


def _assert_same(loaded, expected):
    assert loaded.keys() == expected.keys()
    for key in ("data", "extrapolated_targets", "confidence", "names"):
        assert loaded[key].dtype == expected[key].dtype
        np.testing.assert_array_equal(loaded[key], expected[key])
    assert loaded["scalars"] == expected["scalars"]
    assert loaded["containers"] == expected["containers"]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_loads_plain_data_of_every_protocol(tmp_path, protocol):
    _assert_same(safe_pickle.load(_write(tmp_path / "plain.pickle", PLAIN, protocol)), PLAIN)


def test_dump_round_trip(tmp_path):
    path = tmp_path / "out.pickle"
    safe_pickle.dump(PLAIN, path)
    _assert_same(safe_pickle.load(path), PLAIN)
    assert os.listdir(tmp_path) == ["out.pickle"]


def test_failed_dump_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.pickle"
    safe_pickle.dump({"old": 1}, path)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        safe_pickle.dump({"new": lambda: 0}, path)
    assert safe_pickle.load(path) == {"old": 1}
    assert os.listdir(tmp_path) == ["out.pickle"]


def test_accepts_official_style_cifar_batch(cifar10_root_bytes):
    path = os.path.join(cifar10_root_bytes, "cifar-10-batches-py", "data_batch_1")
    with open(path, "rb") as f:
        raw = f.read()
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw  # numpy 1.x global, as official
    assert b"data" in pickle.loads(raw, encoding="bytes")  # Python 2 str keys -> bytes keys
    batch = safe_pickle.load(path, encoding="latin1")
    assert batch["data"].dtype == np.uint8 and batch["data"].shape == (20, 3072)
    assert len(batch["labels"]) == 20 and batch["batch_label"] == "data_batch_1"
    np.testing.assert_array_equal(batch["data"], pickle.loads(raw, encoding="latin1")["data"])


@pytest.mark.parametrize("content", [b"", b"\x80\x02}q\x00(X\x01", b"hello"])
def test_truncated_or_foreign_files_are_one_unpickling_error_naming_the_file(tmp_path, content):
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(pickle.UnpicklingError, match="not a readable pickle") as error:
        safe_pickle.load(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_the_scripts_print_refused_and_unreadable_pickles_as_one_line(tmp_path, monkeypatch):
    from engine import config

    def main():
        raise pickle.UnpicklingError(f"refused global 'os.system' in {tmp_path}/x")

    monkeypatch.delenv("LTR_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_:
        config.run_cli(main)
    assert str(exit_.value).startswith("error: refused global 'os.system'")
