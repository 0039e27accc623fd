"""cameras.json: exact round trip with and without initial cameras, layout, bad files."""

from __future__ import annotations

import json

import pytest
import torch

from recon.cameras import Cameras, intrinsics, look_at_w2c
from recon.errors import ReconError
from recon.io.cameras_json import load_cameras_json, save_cameras_json


def _cameras(n: int = 3) -> Cameras:
    g = torch.Generator().manual_seed(0)
    eyes = torch.randn(n, 3, generator=g) * 2 + torch.tensor([0.0, 0.0, -4.0])
    w2c = torch.stack([look_at_w2c(e, torch.zeros(3)) for e in eyes])
    K = torch.stack([intrinsics(100.0 + i / 3, 101.7, 32.1, 24.3) for i in range(n)])
    sizes = torch.tensor([[64, 48]] * n)
    return Cameras(K, w2c, sizes, [f"img_{i}.png" for i in range(n)])


def test_round_trip_exact_with_initial(tmp_path):
    cams = _cameras()
    initial = cams.with_w2c(cams.w2c + 1e-3 * torch.randn(3, 4, 4))
    p = tmp_path / "cameras.json"
    save_cameras_json(p, cams, initial)
    back, back_init = load_cameras_json(p)
    assert back.names == cams.names and back_init is not None and back_init.names == cams.names
    assert torch.equal(back.K, cams.K) and torch.equal(back.w2c, cams.w2c)
    assert torch.equal(back.sizes, cams.sizes)
    assert torch.equal(back_init.w2c, initial.w2c) and torch.equal(back_init.K, cams.K)
    entry = json.loads(p.read_text())["cameras"][1]
    assert set(entry) == {"name", "width", "height", "K", "w2c", "initial_w2c"}
    assert (entry["width"], entry["height"]) == (64, 48) and len(entry["w2c"]) == 4


def test_round_trip_without_initial(tmp_path):
    cams = _cameras(2)
    p = tmp_path / "cameras.json"
    save_cameras_json(p, cams, None)
    back, back_init = load_cameras_json(p)
    assert back_init is None and torch.equal(back.w2c, cams.w2c)
    assert json.loads(p.read_text())["cameras"][0]["initial_w2c"] is None


def test_mismatched_initial_and_bad_files(tmp_path):
    cams = _cameras(2)
    with pytest.raises(ValueError):
        save_cameras_json(tmp_path / "x.json", cams, _cameras(3))
    bad = tmp_path / "bad.json"
    bad.write_text('{"cameras": [{"name": "a"}]}')
    with pytest.raises(ReconError, match="bad.json"):
        load_cameras_json(bad)
    with pytest.raises(ReconError, match="does not exist"):
        load_cameras_json(tmp_path / "none.json")


def test_confidence_is_optional_and_old_readers_ignore_it(tmp_path):
    from recon.io.cameras_json import load_camera_confidence

    cams = _cameras(3)
    p = tmp_path / "cameras.json"
    save_cameras_json(p, cams, None, {"img_0.png": 1.0, "img_2.png": 0.5})
    entries = json.loads(p.read_text())["cameras"]
    assert [e.get("confidence") for e in entries] == [1.0, None, 0.5]
    assert "confidence" not in entries[1]  # a view without one is written as before
    back, _ = load_cameras_json(p)  # the reader of files without confidence reads these unchanged
    assert torch.equal(back.w2c, cams.w2c)
    assert load_camera_confidence(p) == {"img_0.png": 1.0, "img_2.png": 0.5}
    save_cameras_json(p, cams)
    assert load_camera_confidence(p) == {}
