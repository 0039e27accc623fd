"""8-bit PNG output: the file name an image gets in an output folder, and an atomic PNG writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recon.io.atomic import atomic_path


def png_name(name: str) -> str:
    """The file name an image called ``name`` gets in an output folder: its stem + ``.png``."""
    return Path(name).stem + ".png"


def save_png(path: Path, image: torch.Tensor | np.ndarray) -> None:
    """Save an (H, W, 3) float image in [0, 1] as an 8-bit PNG, atomically."""
    import imageio.v3 as iio

    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, arr, extension=".png")
