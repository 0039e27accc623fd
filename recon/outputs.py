"""Write a :class:`~recon.reconstruction.Reconstruction` to an output folder (CONVENTIONS "Files").

Layout::

    OUT/point_cloud.ply          3DGS PLY of the optimised Gaussians
    OUT/cameras.json             final and initial cameras (K, w2c, sizes, names)
    OUT/sparse/0/*.txt           COLMAP text model of the final cameras (+ Gaussian centres as points)
    OUT/images/                  the training images as fitted (PNG, <stem>.png; exports read them)
    OUT/renders/{train,test}/    renders of the training / held-out views (PNG), side by side with GT
    OUT/metrics.json             metrics (train/test PSNR, SSIM, pose errors, timings, stage info)
    OUT/config.json              the resolved configuration of the run

Every file is written atomically, so an interrupted run never leaves a half-written output.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from recon.cameras import Cameras
from recon.gaussians import sh0_to_rgb
from recon.gaussians.ply import save_ply
from recon.io.atomic import atomic_write_json
from recon.io.cameras_json import save_cameras_json
from recon.io.colmap import write_colmap_text
from recon.io.png import png_name, save_png
from recon.reconstruction import Reconstruction

MAX_COLMAP_POINTS = 200_000


def to_jsonable(obj):
    """Dataclasses, paths, tensors and numpy values as plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_renders(folder: Path, names: list[str], renders: torch.Tensor, targets: torch.Tensor | None) -> None:
    """One PNG per view: the render, or render | ground truth side by side when targets are given."""
    for i, name in enumerate(names):
        img = renders[i]
        if targets is not None:
            img = torch.cat([img, targets[i].to(img)], dim=1)
        save_png(folder / (Path(name).stem + ".png"), img)


def write_colmap_model(folder: Path, cameras: Cameras, means: torch.Tensor, rgb: torch.Tensor) -> None:
    if means.shape[0] > MAX_COLMAP_POINTS:  # keep the text model a readable size
        idx = torch.randperm(means.shape[0], generator=torch.Generator().manual_seed(0))[:MAX_COLMAP_POINTS]
        means, rgb = means[idx], rgb[idx]
    rgb8 = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    write_colmap_text(folder, cameras, means.detach().cpu().numpy(), rgb8.cpu().numpy())


def write_outputs(
    recon: Reconstruction,
    out: Path,
    config: object | None = None,
    renders: dict[str, tuple[list[str], torch.Tensor, torch.Tensor | None]] | None = None,
) -> None:
    """Write every output file of a run into ``out`` (created if needed).

    Args:
        recon: the reconstruction.
        out: output folder.
        config: the resolved run configuration (a dataclass), written to config.json.
        renders: split name ("train"/"test") -> (names, renders (N,H,W,3), ground truth or None).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    g = recon.gaussians.detach().to("cpu")
    save_ply(out / "point_cloud.ply", g)
    confidence = recon.prior.info.get("confidence") if recon.prior is not None else None
    save_cameras_json(out / "cameras.json", recon.cameras, recon.initial_cameras, confidence)
    write_colmap_model(out / "sparse" / "0", recon.cameras, g.means, sh0_to_rgb(g.sh0[:, 0]))
    for name, image in zip(recon.views.names, recon.views.images, strict=True):
        save_png(out / "images" / png_name(name), image)
    for split, (names, imgs, gts) in (renders or {}).items():
        save_renders(out / "renders" / split, names, imgs, gts)
    atomic_write_json(out / "metrics.json", to_jsonable(recon.metrics))
    if config is not None:
        atomic_write_json(out / "config.json", to_jsonable(config))


def read_metrics(out: Path) -> dict:
    return json.loads((Path(out) / "metrics.json").read_text())
