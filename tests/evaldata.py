"""Tiny known-pose datasets on disk for the ``recon eval`` tests, and the settings that keep them fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.eval.config import EvalConfig
from recon.io.colmap import write_colmap_text
from recon.optim.config import TrainConfig
from recon.synthetic import SceneConfig, make_scene, save_views


def write_dataset(root: Path, scene) -> None:
    """A synthetic scene as a COLMAP dataset (images/ + sparse/0 text model)."""
    save_views(scene.views, root / "images")
    pts = scene.pointmaps(scene.views.cameras)[:, ::8, ::8].reshape(-1, 3).numpy()
    rgb = (scene.views.images[:, ::8, ::8].reshape(-1, 3).numpy() * 255).astype(np.uint8)
    write_colmap_text(root / "sparse" / "0", scene.views.cameras, pts, rgb)


def tiny_dataset(root: Path, seed: int = 0, n_views: int = 5, width: int = 96, height: int = 72) -> Path:
    """A ``n_views`` synthetic COLMAP dataset at ``root`` (3 training + 2 test views with --views 3)."""
    write_dataset(root, make_scene(SceneConfig(n_views=n_views, width=width, height=height, seed=seed)))
    return root


def posefree_folder(root: Path, source: Path, n: int = 2) -> Path:
    """A plain image folder (no reference poses: ``recon eval`` fails on it) of ``source``'s first images."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for img in sorted((source / "images").glob("*.png"))[:n]:
        (root / "images" / img.name).write_bytes(img.read_bytes())
    return root


TINY = dict(views=3, max_side=96, test_pose_iters=20)
"""EvalConfig settings of the tiny datasets (with :data:`TINY_TRAIN`): about 10 s a scene on one core."""
TINY_TRAIN = dict(iters=60, sh_degree=0)
TINY_CLI = ["--views", "3", "--max-side", "96", "--test-pose-iters", "20", "--iters", "60",
            "--sh-degree", "0"]
"""The same settings as ``recon eval`` arguments."""


def tiny_config(**kw) -> EvalConfig:
    return EvalConfig(**{**TINY, **kw}, train=TrainConfig(**TINY_TRAIN))
