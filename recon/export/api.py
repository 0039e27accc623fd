"""Export a reconstruction (in memory, or an output folder of ``recon run``) as a mesh, a nerfstudio
dataset or a ``.splat`` file.

Formats and where they go by default (inside the output folder; ``to`` overrides):

- ``mesh``: ``mesh.ply`` (and ``mesh.obj`` with ``MeshConfig.obj``), :mod:`recon.export.mesh`;
- ``nerfstudio``: ``nerfstudio/`` with transforms.json, images/ and sparse_pc.ply, :mod:`recon.io.nerfstudio`;
- ``splat``: ``point_cloud.splat``, :mod:`recon.gaussians.splat`.

An output folder provides ``point_cloud.ply`` and ``cameras.json``; the nerfstudio export also needs the
training images: ``images/`` of the folder (written by every run), else the input recorded in
``metrics.json`` and ``config.json`` is loaded again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recon.cameras import Cameras
from recon.errors import ReconError
from recon.export.config import DEFAULT_NAMES, ExportConfig, NerfstudioConfig
from recon.gaussians.model import Gaussians, sh0_to_rgb
from recon.reconstruction import Reconstruction


@dataclass
class ExportResult:
    """What an export wrote: ``paths`` (the main file or folder first) and JSON-ready ``info``."""

    format: str
    paths: list[Path]
    info: dict = field(default_factory=dict)


@dataclass
class _Source:
    gaussians: Gaussians
    cameras: Cameras
    folder: Path | None  # the output folder, when exporting one
    images: torch.Tensor | list[Path] | None  # None: not loaded yet (only the nerfstudio export needs them)


def _from_reconstruction(recon: Reconstruction) -> _Source:
    views = recon.views
    if views.names != recon.cameras.names:
        views = views.subset(recon.cameras.names)
    return _Source(recon.gaussians.detach().to("cpu"), recon.cameras.to("cpu"), None, views.images)


def _from_folder(out: Path) -> _Source:
    from recon.gaussians.ply import load_ply
    from recon.io.cameras_json import load_cameras_json

    if not out.is_dir():
        raise ReconError(f"{out} is not a folder; export reads an output folder of `recon run`")
    cameras, _ = load_cameras_json(out / "cameras.json")
    return _Source(load_ply(out / "point_cloud.ply"), cameras, out, None)


def _folder_images(out: Path, cameras: Cameras) -> torch.Tensor | list[Path]:
    """The training images of an output folder: its ``images/`` PNGs, else the recorded input, reloaded."""
    from recon.io.png import png_name

    files = [out / "images" / png_name(n) for n in cameras.names]
    if all(f.is_file() for f in files):
        return files
    try:
        source = json.loads((out / "metrics.json").read_text())["input"]["path"]
        max_side = json.loads((out / "config.json").read_text()).get("max_side")
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        source, max_side = "", None
    if not source or not Path(source).exists():
        raise ReconError(
            f"{out} has no images/ folder and its input ({source or 'not recorded'}) is not available; "
            "the nerfstudio export needs the training images"
        )
    from recon.io.datasets import load_views

    views = load_views(Path(source), max_side=max_side)
    missing = [n for n in cameras.names if n not in views.names]
    if missing:
        raise ReconError(f"the input {source} no longer holds {missing[0]} (a view of {out})")
    images = views.subset(cameras.names).images
    if tuple(images.shape[2:0:-1]) != tuple(int(v) for v in cameras.sizes[0]):
        raise ReconError(f"the images of {source} no longer have the size the cameras of {out} were made for")
    return images


def _initial_points(g: Gaussians, cfg: NerfstudioConfig) -> tuple[np.ndarray, np.ndarray]:
    """Centres (M, 3) and uint8 DC colours (M, 3) of the Gaussians opaque enough to initialise from."""
    keep = g.opacities >= cfg.min_opacity
    idx = torch.nonzero(keep).flatten()
    if len(idx) > cfg.max_points:
        gen = torch.Generator().manual_seed(0)
        idx = idx[torch.randperm(len(idx), generator=gen)[: cfg.max_points]].sort().values
    rgb = (sh0_to_rgb(g.sh0[idx, 0]).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return g.means[idx].float().numpy(), rgb.numpy()


def _export(src: _Source, cfg: ExportConfig, to: Path | None) -> ExportResult:
    fmt = cfg.format
    if fmt not in DEFAULT_NAMES:
        raise ReconError(f"unknown export format {fmt!r}; use mesh, nerfstudio or splat")
    if to is None:
        if src.folder is None:
            raise ReconError("exporting a reconstruction in memory needs a destination (to=...)")
        to = src.folder / DEFAULT_NAMES[fmt]
    to = Path(to)
    if fmt == "splat":
        from recon.gaussians.splat import save_splat

        save_splat(to, src.gaussians)
        return ExportResult(fmt, [to], {"gaussians": len(src.gaussians)})
    if fmt == "nerfstudio":
        from recon.io.nerfstudio import write_nerfstudio

        images = src.images if src.images is not None else _folder_images(src.folder, src.cameras)
        points, colors = _initial_points(src.gaussians, cfg.nerfstudio)
        path = write_nerfstudio(to, src.cameras, images, points, colors)
        return ExportResult(fmt, [to, path], {"frames": len(src.cameras), "points": len(points)})
    from recon.export.mesh import gaussians_to_mesh, save_mesh

    if to.suffix.lower() not in (".ply", ".obj"):
        to = to / DEFAULT_NAMES["mesh"]  # a folder was given
    res = gaussians_to_mesh(src.gaussians, src.cameras, cfg.mesh)
    paths = [to]
    save_mesh(to, res.mesh)
    if cfg.mesh.obj and to.suffix.lower() != ".obj":
        paths.append(to.with_suffix(".obj"))
        save_mesh(paths[-1], res.mesh)
    return ExportResult(fmt, paths, res.info)


def export(
    source: Reconstruction | str | Path, cfg: ExportConfig | None = None, to: str | Path | None = None
) -> ExportResult:
    """Export ``source`` (a :class:`Reconstruction`, or an output folder of ``recon run``) as ``cfg.format``.

    Args:
        source: what to export.
        cfg: format and options (default: a mesh with the default :class:`MeshConfig`).
        to: destination file (mesh, splat) or folder (nerfstudio); default: inside the output folder
            (required for a Reconstruction in memory).

    Raises:
        ReconError: a folder without the files an export needs, an empty mesh, open3d missing.
    """
    cfg = cfg or ExportConfig()
    src = _from_reconstruction(source) if isinstance(source, Reconstruction) else _from_folder(Path(source))
    return _export(src, cfg, None if to is None else Path(to))
