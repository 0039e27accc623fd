"""Strecha et al. (2008) ground-truth scenes (fountain-P11, Herz-Jesu-P8, ...).

Layout: ``root/images/<name>`` and ``root/gt_dense_cameras/<name>.camera``. Each ``.camera`` file holds
3 rows of K, a row ``0 0 0`` (no distortion), 3 rows of R (the camera-to-world rotation), the camera
centre C, and ``W H``. The projection is ``P = K [R^T | -R^T C]``, so w2c = [R^T | -R^T C] in OpenCV
axes. K refers to the full-resolution images (3072x2048); it is scaled to the loaded size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.errors import ReconError
from recon.io.common import views_with_cameras
from recon.views import Views

CAMERA_DIR = "gt_dense_cameras"


def camera_dir(root: Path) -> Path:
    """The folder with the ``.camera`` files: ``root/gt_dense_cameras`` when present, else ``root``."""
    return root / CAMERA_DIR if (root / CAMERA_DIR).is_dir() else root


def read_camera_file(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Parse one ``.camera`` file: K (3, 3), w2c (4, 4) (float64) and the (W, H) K refers to.

    Raises:
        ReconError: a malformed file.
    """
    try:
        rows = [[float(v) for v in ln.split()] for ln in path.read_text().splitlines() if ln.strip()]
        K = np.array(rows[0:3])
        R_c2w = np.array(rows[4:7])
        C = np.array(rows[7])
        width, height = int(rows[8][0]), int(rows[8][1])
    except (IndexError, ValueError):
        raise ReconError(f"{path} is not a Strecha .camera file (K, 0 0 0, R, C, W H)") from None
    if K.shape != (3, 3) or R_c2w.shape != (3, 3) or C.shape != (3,):
        raise ReconError(f"{path} is not a Strecha .camera file (K, 0 0 0, R, C, W H)")
    w2c = np.eye(4)
    w2c[:3, :3] = R_c2w.T
    w2c[:3, 3] = -R_c2w.T @ C
    return K, w2c, (width, height)


def load_strecha(root: str | Path, max_side: int | None = None) -> Views:
    """A Strecha scene as Views, sorted by image name (use ``max_side`` for the 3072x2048 originals).

    Raises:
        ReconError: no ``.camera`` files, malformed ones, or missing images.
    """
    root = Path(root)
    cam_dir = camera_dir(root)
    cam_files = sorted(cam_dir.glob("*.camera"))
    if not cam_files:
        raise ReconError(f"no .camera files in {cam_dir} (expected {CAMERA_DIR}/<image>.camera)")
    image_dir = root / "images" if (root / "images").is_dir() else root
    names = [f.name[: -len(".camera")] for f in cam_files]  # "0000.jpg.camera" -> "0000.jpg"
    paths = [image_dir / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ReconError(f"{missing[0].name}.camera has no image {missing[0].name} in {image_dir}")
    parsed = [read_camera_file(f) for f in cam_files]
    K = np.stack([p[0] for p in parsed])
    w2c = np.stack([p[1] for p in parsed])
    sizes = [p[2] for p in parsed]
    return views_with_cameras(paths, K, w2c, sizes, max_side=max_side, source="strecha", root=root)
