"""DTU scenes in the MonoSDF preprocessing: ``cameras.npz`` + ``000000_rgb.png``, ``000001_rgb.png``, ...

``world_mat_i[:3]`` projects world points into the original 1600x1200 DTU image. MonoSDF's 384x384 images
are a centred 1200x1200 crop resized by 0.32, so for them
``P = [[0.32, 0, -64], [0, 0.32, 0], [0, 0, 1]] @ world_mat_i[:3]``. ``scale_mat_i`` maps MonoSDF's
normalised unit-sphere frame to the world (``P_norm = P @ scale_mat_i``); the reference cameras are in the
world frame and the scale matrices are kept in ``meta["scale_mat"]`` (N, 4, 4).

P is split into K, R, t by an RQ decomposition, with the signs fixed so that the focal lengths are
positive and det(R) = +1 (P is defined up to scale, so flipping the sign of all of P is allowed).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.linalg

from recon.errors import ReconError
from recon.io.common import views_with_cameras
from recon.io.images import image_size, list_images
from recon.views import Views

ORIGINAL_SIZE = (1600, 1200)
MONOSDF_SIZE = (384, 384)
MONOSDF_CROP = np.array([[0.32, 0.0, -64.0], [0.0, 0.32, 0.0], [0.0, 0.0, 1.0]])
"""Maps original 1600x1200 pixels to MonoSDF's 384x384 ones (centre 1200x1200 crop, times 0.32)."""


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a 3x4 projection matrix into K (3, 3, K[2, 2] = 1, positive diagonal) and w2c (4, 4).

    Raises:
        ReconError: a singular projection matrix.
    """
    P = np.asarray(P, dtype=np.float64)
    if abs(np.linalg.det(P[:, :3])) < 1e-12 * np.abs(P[:, :3]).max() ** 3:
        raise ReconError("DTU projection matrix is singular")
    if np.linalg.det(P[:, :3]) < 0:  # K R with det(K) > 0 and det(R) = +1 needs det(M) > 0: use -P
        P = -P
    K, R = scipy.linalg.rq(P[:, :3])
    D = np.diag(np.sign(np.diag(K)))  # D = D^-1; K D has a positive diagonal, D R stays a rotation
    K, R = K @ D, D @ R
    t = np.linalg.solve(K, P[:, 3])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, t
    return K / K[2, 2], w2c


def _image_paths(root: Path) -> list[Path]:
    """MonoSDF's ``*_rgb.png`` in ``root``, else every image in ``root/image`` (the original IDR layout)."""
    rgb = sorted(p for p in list_images(root) if p.stem.endswith("_rgb"))
    if rgb:
        return rgb
    return list_images(root / "image") if (root / "image").is_dir() else []


def load_dtu(root: str | Path, max_side: int | None = None) -> Views:
    """A DTU scene (MonoSDF or IDR layout) as Views with reference cameras.

    Raises:
        ReconError: no cameras.npz, no images, counts that differ, or an unexpected image size.
    """
    root = Path(root)
    cam_path = root / "cameras.npz"
    if not cam_path.is_file():
        raise ReconError(f"{cam_path} does not exist; a DTU scene needs cameras.npz")
    try:
        with np.load(cam_path) as npz:
            cams = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise ReconError(f"cannot read {cam_path}: {e}") from None
    ids = sorted(int(m.group(1)) for k in cams if (m := re.fullmatch(r"world_mat_(\d+)", k)))
    paths = _image_paths(root)
    if not ids or not paths:
        raise ReconError(f"{root} needs world_mat_i entries in cameras.npz and *_rgb.png (or image/) images")
    if len(paths) != len(ids):
        raise ReconError(f"{root} has {len(paths)} images but cameras.npz has {len(ids)} cameras")
    size = image_size(paths[0])
    if size == MONOSDF_SIZE:
        crop = MONOSDF_CROP
    elif size == ORIGINAL_SIZE:
        crop = np.eye(3)
    else:
        raise ReconError(f"DTU image {paths[0].name} is {size[0]}x{size[1]}; expected 384x384 or 1600x1200")
    K, w2c, scale_mats = [], [], []
    for i in ids:
        k, e = decompose_projection(crop @ cams[f"world_mat_{i}"][:3].astype(np.float64))
        K.append(k)
        w2c.append(e)
        key = f"scale_mat_{i}"
        scale_mats.append(cams[key].astype(np.float64) if key in cams else np.eye(4))
    meta = {"scale_mat": np.stack(scale_mats)}
    sizes = [size] * len(ids)
    return views_with_cameras(paths, np.stack(K), np.stack(w2c), sizes, max_side=max_side, source="dtu",
                              root=root, meta=meta)
