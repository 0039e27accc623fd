"""Write a nerfstudio dataset: ``transforms.json``, the images and an initial point cloud.

Layout (what ``ns-train splatfacto --data FOLDER`` and every NeRF-format reader, ours included
(:mod:`recon.io.nerf`), read)::

    FOLDER/transforms.json      camera_model "OPENCV" (no distortion), intrinsics, frames, ply_file_path
    FOLDER/images/<name>.png    the images, 8-bit
    FOLDER/sparse_pc.ply        x y z (float32) red green blue (uint8): splatfacto's initial Gaussians

``transform_matrix`` is the OpenGL camera-to-world of nerfstudio (x right, y up, looking along -z):
``c2w_gl = inv(w2c) @ diag(1, -1, -1, 1)``, the inverse of the conversion in :mod:`recon.io.nerf`.
Intrinsics ``fl_x fl_y cx cy w h`` use our pixel convention, which is nerfstudio's (pixel centres at
+0.5). They are written once at the top level when every camera shares them, otherwise per frame.
No ``applied_transform`` is written: the point cloud and the cameras share one world frame.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from recon.cameras import Cameras
from recon.errors import ReconError
from recon.io.atomic import atomic_path, atomic_write_json
from recon.io.nerf import OPENGL_TO_OPENCV
from recon.io.png import png_name, save_png

INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
POINTS_FILE = "sparse_pc.ply"


def _intrinsics(cameras: Cameras, i: int) -> dict:
    K = cameras.K[i].double()
    w, h = (int(v) for v in cameras.sizes[i])
    values = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), w, h)
    return dict(zip(INTRINSIC_KEYS, values, strict=True))


def transforms_dict(cameras: Cameras, file_paths: list[str], ply_file_path: str | None = POINTS_FILE) -> dict:
    """The ``transforms.json`` content for ``cameras`` whose images are at ``file_paths`` (relative)."""
    if len(file_paths) != len(cameras):
        raise ValueError(f"{len(file_paths)} file paths for {len(cameras)} cameras")
    intr = [_intrinsics(cameras, i) for i in range(len(cameras))]
    shared = all(d == intr[0] for d in intr)
    c2w_gl = cameras.c2w.double().cpu().numpy() @ OPENGL_TO_OPENCV  # diag(1,-1,-1,1) is its own inverse
    meta: dict = {"camera_model": "OPENCV"}
    if shared:
        meta.update(intr[0])
    meta.update({"k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0})
    frames = []
    for i, path in enumerate(file_paths):
        frame = {"file_path": path, "transform_matrix": c2w_gl[i].tolist()}
        if not shared:
            frame.update(intr[i])
        frames.append(frame)
    meta["frames"] = frames
    if ply_file_path is not None:
        meta["ply_file_path"] = ply_file_path
    return meta


def save_point_cloud_ply(path: str | Path, points: np.ndarray, colors: np.ndarray) -> None:
    """A plain coloured point cloud PLY (x y z float32, red green blue uint8), atomically.

    Args:
        points: (N, 3) positions.  colors: (N, 3) uint8 RGB.
    """
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    rgb = ("red", "green", "blue")
    vertex = np.empty(len(points), dtype=[(k, "<f4") for k in "xyz"] + [(k, "u1") for k in rgb])
    for k, name in enumerate("xyz"):
        vertex[name] = points[:, k]
    for k, name in enumerate(rgb):
        vertex[name] = colors[:, k]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(str(tmp))


def write_nerfstudio(
    folder: str | Path,
    cameras: Cameras,
    images: torch.Tensor | list[Path],
    points: np.ndarray,
    colors: np.ndarray,
) -> Path:
    """Write a nerfstudio dataset into ``folder`` (created if needed); returns the transforms.json path.

    Args:
        cameras: the cameras (OpenCV w2c, K in pixels of the images), one per image, names unique by stem.
        images: (N, H, W, 3) float images in [0, 1], written as PNGs, or N existing PNG files, copied.
        points, colors: the initial point cloud, (M, 3) world positions and (M, 3) uint8 RGB.
    """
    folder = Path(folder)
    files = [png_name(n) for n in cameras.names]
    if len(set(files)) != len(files):
        raise ReconError("image names must have distinct stems to be written as <stem>.png")
    if len(images) != len(cameras):
        raise ReconError(f"{len(images)} images for {len(cameras)} cameras")
    for i, file in enumerate(files):
        dst = folder / "images" / file
        if isinstance(images, torch.Tensor):
            size = (int(images.shape[2]), int(images.shape[1]))
            if size != tuple(int(v) for v in cameras.sizes[i]):
                raise ReconError(f"image {cameras.names[i]} is {size}, its camera {tuple(cameras.sizes[i])}")
            save_png(dst, images[i])
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dst) as tmp:
                shutil.copyfile(images[i], tmp)
    save_point_cloud_ply(folder / POINTS_FILE, points, colors)
    path = folder / "transforms.json"
    atomic_write_json(path, transforms_dict(cameras, [f"images/{f}" for f in files]))
    return path
