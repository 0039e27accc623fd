"""data/: the shipped sample scene loads as a NeRF dataset with the synthetic scene's exact cameras and
images, is small, and the README's layout table names data/ (with data/README.md beside it)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from recon.io.datasets import detect_format, load_views
from recon.synthetic import make_scene

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample_scene"
sys.path.insert(0, str(REPO / "scripts"))

from make_sample_data import SAMPLE as SAMPLE_CFG  # noqa: E402


def test_sample_scene_is_the_synthetic_scene_with_its_true_cameras():
    assert detect_format(SAMPLE) == "nerf"
    views = load_views(SAMPLE)
    scene = make_scene(SAMPLE_CFG)
    ref = scene.views.cameras
    assert len(views) == len(ref) == 8
    assert torch.allclose(views.cameras.K, ref.K, atol=1e-5)
    assert torch.allclose(views.cameras.w2c, ref.w2c, atol=1e-5)
    err = (views.images - scene.views.images).abs()
    assert float(err.mean()) < 0.02, "JPEG quality 92 keeps the images within a few grey levels"
    size = sum(f.stat().st_size for f in SAMPLE.iterdir())
    assert size < 100_000, f"the sample is meant to stay small, it is {size} bytes"


def test_data_readme_and_layout_table():
    readme = (REPO / "data" / "README.md").read_text()
    for fmt in ("LLFF", "DTU", "Middlebury", "Strecha", "COLMAP", "transforms.json"):
        assert fmt in readme, fmt
    top = (REPO / "README.md").read_text()
    assert "| `data/` |" in top
