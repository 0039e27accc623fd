"""LLFF scenes: ``poses_bounds.npy`` + ``images_8`` / ``images_4`` / ``images``.

``poses_bounds.npy`` is (N, 17): ``M = a[:, :15].reshape(N, 3, 5)``; ``M[:, :, :4]`` is camera-to-world
with rotation columns ordered [down, right, backwards]; ``M[:, :, 4] = [H, W, f]`` at full resolution;
``a[:, 15:]`` are near/far depth bounds. Rows match the images in sorted file-name order.

OpenCV camera axes are [right, down, forward] = [col1, col0, -col2] of the LLFF rotation. The principal
point is the image centre (LLFF's COLMAP cameras are centred), K is scaled from the full resolution to the
loaded images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recon.cameras import invert_rigid
from recon.errors import ReconError
from recon.io.common import views_with_cameras
from recon.io.images import list_images
from recon.views import Views

IMAGE_DIRS = ("images_8", "images_4", "images")
"""Image folders in order of preference (smallest first: the project works on small images)."""


def llff_to_opencv_c2w(poses: np.ndarray) -> np.ndarray:
    """(N, 3, 4) LLFF camera-to-world ([down, right, backwards | centre]) -> (N, 4, 4) OpenCV c2w."""
    c2w = np.zeros((poses.shape[0], 4, 4))
    c2w[:, :3, 0] = poses[:, :, 1]  # right
    c2w[:, :3, 1] = poses[:, :, 0]  # down
    c2w[:, :3, 2] = -poses[:, :, 2]  # forward
    c2w[:, :3, 3] = poses[:, :, 3]
    c2w[:, 3, 3] = 1.0
    return c2w


def load_llff(root: str | Path, max_side: int | None = None) -> Views:
    """An LLFF scene folder as Views with reference cameras; ``meta["bounds"]`` is (N, 2) near/far (numpy).

    Raises:
        ReconError: missing/malformed poses_bounds.npy, no image folder, or image and pose counts differ.
    """
    root = Path(root)
    pb_path = root / "poses_bounds.npy"
    if not pb_path.is_file():
        raise ReconError(f"{pb_path} does not exist; an LLFF scene needs poses_bounds.npy")
    try:
        a = np.load(pb_path).astype(np.float64)
    except (OSError, ValueError) as e:
        raise ReconError(f"cannot read {pb_path}: {e}") from None
    if a.ndim != 2 or a.shape[1] != 17:
        raise ReconError(f"{pb_path} has shape {a.shape}; LLFF poses_bounds.npy must be (N, 17)")
    image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if image_dir is None:
        raise ReconError(f"no image folder in {root} (expected one of {', '.join(IMAGE_DIRS)})")
    paths = list_images(image_dir)
    n = a.shape[0]
    if len(paths) != n:
        raise ReconError(f"{image_dir} has {len(paths)} images but {pb_path.name} has {n} poses")
    M = a[:, :15].reshape(n, 3, 5)
    h_full, w_full, f_full = M[:, 0, 4], M[:, 1, 4], M[:, 2, 4]
    K = np.zeros((n, 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = f_full
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = w_full / 2, h_full / 2, 1.0
    c2w = llff_to_opencv_c2w(M[:, :, :4])
    w2c = invert_rigid(torch.from_numpy(c2w)).numpy()
    sizes = np.stack([w_full, h_full], -1)
    meta = {"bounds": a[:, 15:17].copy(), "image_dir": image_dir.name}
    return views_with_cameras(paths, K, w2c, sizes, max_side=max_side, source="llff", root=root, meta=meta)
