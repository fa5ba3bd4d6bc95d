"""Checkpoint files without a training run: what round-trips, what is refused, what is left."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from engine.train._checkpoint import (CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint,
                               save_npz_atomic, write_json_atomic)


def params():
    return {"w1": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "b1": np.full(3, 0.1)}


def state():
    return {"step": 7, "epoch": 1, "config": {"lr": 0.1, "hidden": [4, 2]}, "note": None,
            "order": np.array([3, 0, 2, 1], dtype=np.int64), "losses": np.array([2.5, 1.25])}


def test_parameters_and_state_come_back_exactly(tmp_path):
    path = save_checkpoint(tmp_path, params(), state())
    assert path == tmp_path / CHECKPOINT_NAME and path.is_file()
    loaded, restored = load_checkpoint(tmp_path)
    assert set(loaded) == {"w1", "b1"}
    for name, value in params().items():
        assert loaded[name].dtype == value.dtype and np.array_equal(loaded[name], value)
    assert set(restored) == set(state())
    for key, value in state().items():
        if isinstance(value, np.ndarray):
            assert restored[key].dtype == value.dtype and np.array_equal(restored[key], value)
        else:
            assert restored[key] == value


def test_a_new_checkpoint_replaces_the_old_and_leaves_no_other_file(tmp_path):
    save_checkpoint(tmp_path, params(), state())
    save_checkpoint(tmp_path, {"w1": np.ones(2)}, {"step": 8})
    loaded, restored = load_checkpoint(tmp_path)
    assert list(loaded) == ["w1"] and np.array_equal(loaded["w1"], np.ones(2))
    assert restored == {"step": 8}
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


def test_write_json_atomic_writes_the_document_indented_by_one_and_returns_the_path(tmp_path):
    target = tmp_path / "metrics.json"
    document = {"loss": [2.5, 1.25], "step": 3}
    assert write_json_atomic(str(target), document) == target
    assert target.read_text() == '{\n "loss": [\n  2.5,\n  1.25\n ],\n "step": 3\n}'
    assert json.loads(target.read_text()) == document


def test_write_json_atomic_of_what_json_cannot_hold_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="ndarray"):
        write_json_atomic(tmp_path / "metrics.json", {"loss": np.ones(2)})
    assert list(tmp_path.iterdir()) == []


def test_save_npz_atomic_returns_the_path_it_wrote(tmp_path):
    target = tmp_path / "params.npz"
    assert save_npz_atomic(str(target), {"a": np.arange(3)}) == target
    with np.load(target) as data:
        assert np.array_equal(data["a"], np.arange(3))


def test_a_failed_write_keeps_the_old_checkpoint_and_removes_its_temporary(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path, params(), state())
    before = path.read_bytes()

    def disk_full(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, {"w1": np.zeros(9)}, {"step": 99})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_saving_leaks_no_file_descriptor(tmp_path):
    save_checkpoint(tmp_path, params(), state())     # warm up whatever numpy opens once
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        save_checkpoint(tmp_path, params(), state())
    assert len(os.listdir("/proc/self/fd")) == before


def test_checkpoint_errors_are_value_errors():
    assert issubclass(CheckpointError, ValueError)


class TestRefused:
    def test_no_checkpoint(self, tmp_path):
        message = f"no checkpoint at {tmp_path / CHECKPOINT_NAME}"
        with pytest.raises(CheckpointError, match=re.escape(message)):
            load_checkpoint(tmp_path)

    def test_a_folder_named_like_the_checkpoint(self, tmp_path):
        (tmp_path / CHECKPOINT_NAME).mkdir()
        with pytest.raises(CheckpointError, match="no checkpoint at"):
            load_checkpoint(tmp_path)

    def test_a_truncated_file_is_refused_and_left_as_it_was(self, tmp_path):
        path = save_checkpoint(tmp_path, params(), state())
        path.write_bytes(path.read_bytes()[:200])
        cut = path.read_bytes()
        with pytest.raises(CheckpointError, match=r"unreadable \(.*\); it was left untouched"):
            load_checkpoint(tmp_path)
        assert path.read_bytes() == cut

    def test_pickled_objects_are_refused(self, tmp_path):
        path = tmp_path / CHECKPOINT_NAME
        np.savez(path, **{"param/w1": np.array([{"a": 1}], dtype=object),
                          "state.json": np.array("{}")})
        with pytest.raises(CheckpointError, match=r"unreadable \(ValueError: .*pickle"):
            load_checkpoint(tmp_path)

    def test_a_file_without_its_state_document(self, tmp_path):
        save_npz_atomic(tmp_path / CHECKPOINT_NAME, {"param/w1": np.ones(2)})
        with pytest.raises(CheckpointError, match=r"unreadable \(KeyError: "):
            load_checkpoint(tmp_path)

    def test_a_file_without_parameters(self, tmp_path):
        save_checkpoint(tmp_path, {}, {"step": 1})
        with pytest.raises(CheckpointError, match="holds no parameters"):
            load_checkpoint(tmp_path)
