"""Atomic writes: content, JSON conversion of numpy/torch values, and failure leaving no trace."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recon.io.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_write_bytes_and_text_replace_content(tmp_path):
    p = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(p, b"\x00\x01abc")
    assert p.read_bytes() == b"\x00\x01abc"
    atomic_write_text(p, "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.bin"]  # no temporary left behind


def test_write_json_converts_numpy_and_torch(tmp_path):
    p = tmp_path / "m.json"
    obj = {
        "np_scalar": np.float32(0.5),
        "np_int": np.int64(7),
        "np_array": np.arange(4).reshape(2, 2),
        "t_scalar": torch.tensor(2.5),
        "t_array": torch.eye(2),
        "path": tmp_path / "x",
    }
    atomic_write_json(p, obj)
    text = p.read_text()
    back = json.loads(text)
    assert back == {
        "np_scalar": 0.5,
        "np_int": 7,
        "np_array": [[0, 1], [2, 3]],
        "t_scalar": 2.5,
        "t_array": [[1.0, 0.0], [0.0, 1.0]],
        "path": str(tmp_path / "x"),
    }
    assert text.startswith('{\n  "np_scalar"')  # indent 2


def test_atomic_path_failure_keeps_old_file_and_removes_temp(tmp_path):
    p = tmp_path / "keep.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            assert tmp.parent == p.parent and tmp.suffix == ".txt" and tmp != p
            tmp.write_text("half-written")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["keep.txt"]


def test_atomic_path_success_renames(tmp_path):
    p = tmp_path / "arr.npy"
    with atomic_path(p) as tmp:
        np.save(tmp, np.arange(3))  # np.save would append .npy if the temp lacked the suffix
    assert np.array_equal(np.load(p), np.arange(3))
    assert [x.name for x in tmp_path.iterdir()] == ["arr.npy"]


def test_unserialisable_json_raises_and_writes_nothing(tmp_path):
    p = tmp_path / "bad.json"
    with pytest.raises(TypeError):
        atomic_write_json(p, {"x": object()})
    assert not p.exists() and list(tmp_path.iterdir()) == []
