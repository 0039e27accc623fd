"""What every dataset reader shares: load the images and attach reference cameras scaled to them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recon.cameras import Cameras, scale_K
from recon.errors import ReconError
from recon.io.images import load_images
from recon.views import Views


def views_with_cameras(
    paths: list[Path],
    K: np.ndarray | torch.Tensor,
    w2c: np.ndarray | torch.Tensor,
    calib_sizes: np.ndarray | torch.Tensor | list[tuple[int, int]],
    *,
    max_side: int | None,
    source: str,
    root: Path,
    meta: dict | None = None,
    names: list[str] | None = None,
) -> Views:
    """Load ``paths`` and return :class:`Views` whose reference cameras match the loaded pixels.

    Args:
        paths: N image files, in the order of the cameras.
        K: (N, 3, 3) intrinsics in pixels of the image size the calibration refers to (``calib_sizes``).
        w2c: (N, 4, 4) world-to-camera transforms, OpenCV convention.
        calib_sizes: (N, 2) (W, H) the intrinsics refer to (e.g. LLFF's full-resolution size).
        max_side: optional cap on the long side of the loaded images.
        source, root, meta: stored on the Views.
        names: view names (default: the file names of ``paths``).

    K is scaled per axis by (loaded W / calib W, loaded H / calib H) (``scale_K``; CONVENTIONS' corner
    pixel origin needs no half-pixel shift). A calibration whose aspect ratio differs from its image by
    more than 1 % cannot be a plain resize of it, so it raises ReconError.
    """
    K = torch.as_tensor(np.asarray(K, dtype=np.float64))
    w2c = torch.as_tensor(np.asarray(w2c, dtype=np.float64))
    calib = torch.as_tensor(np.asarray(calib_sizes, dtype=np.float64))
    n = len(paths)
    if K.shape != (n, 3, 3) or w2c.shape != (n, 4, 4) or calib.shape != (n, 2):
        shapes = f"K {tuple(K.shape)}, w2c {tuple(w2c.shape)}, sizes {tuple(calib.shape)}"
        raise ValueError(f"{n} images but {shapes}")
    images, focals = load_images(paths, max_side)
    height, width = int(images.shape[1]), int(images.shape[2])
    K_out = torch.empty_like(K)
    for i in range(n):
        cw, ch = float(calib[i, 0]), float(calib[i, 1])
        if abs((width / height) / (cw / ch) - 1.0) > 0.01:
            raise ReconError(
                f"{paths[i].name} is {width}x{height} (as loaded) but its calibration is for "
                f"{cw:.0f}x{ch:.0f}, a different aspect ratio; the images do not match the {source} cameras"
            )
        K_out[i] = scale_K(K[i], width / cw, height / ch)
    sizes = torch.tensor([[width, height]] * n, dtype=torch.int64)
    view_names = names if names is not None else [p.name for p in paths]
    cameras = Cameras(K_out.float(), w2c.float(), sizes, list(view_names))
    return Views(
        images=images,
        names=list(view_names),
        cameras=cameras,
        exif_focal_px=focals,
        source=source,
        root=str(root),
        meta=dict(meta or {}),
        files=[str(p) for p in paths],
    )
