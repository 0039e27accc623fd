"""Middlebury multi-view stereo scenes (Seitz et al. 2006): ``<scene>_par.txt`` next to the images.

The file's first line is the image count N, then one line per image::

    name k11 k12 k13 k21 k22 k23 k31 k32 k33 r11 r12 r13 r21 r22 r23 r31 r32 r33 t1 t2 t3

with projection ``P = K [R | t]`` (world-to-camera, OpenCV axes, image origin top-left), so K, R, t are
used as given. K refers to the image files as stored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.errors import ReconError
from recon.io.common import views_with_cameras
from recon.io.images import image_size
from recon.views import Views


def find_par_file(root: Path) -> Path | None:
    """The ``*_par.txt`` camera file in ``root`` (None when absent)."""
    found = sorted(root.glob("*_par.txt"))
    return found[0] if found else None


def read_par_file(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Parse a ``*_par.txt``: image names, K (N, 3, 3) and w2c (N, 4, 4) (float64).

    Raises:
        ReconError: a malformed file (wrong count or number of values).
    """
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    try:
        n = int(lines[0][0])
    except (IndexError, ValueError):
        raise ReconError(f"{path}: the first line must be the number of images") from None
    rows = lines[1:]
    if len(rows) != n or any(len(r) != 22 for r in rows):
        raise ReconError(f"{path}: expected {n} lines of 'name + 21 numbers' (K, R, t)")
    names = [r[0] for r in rows]
    try:
        vals = np.array([[float(v) for v in r[1:]] for r in rows])
    except ValueError:
        raise ReconError(f"{path}: non-numeric camera values") from None
    K = vals[:, :9].reshape(n, 3, 3)
    w2c = np.tile(np.eye(4), (n, 1, 1))
    w2c[:, :3, :3] = vals[:, 9:18].reshape(n, 3, 3)
    w2c[:, :3, 3] = vals[:, 18:21]
    return names, K, w2c


def load_middlebury(root: str | Path, max_side: int | None = None) -> Views:
    """A Middlebury scene folder (images + ``*_par.txt``) as Views, in the file's order.

    Raises:
        ReconError: no par file, a malformed one, or missing images.
    """
    root = Path(root)
    par = find_par_file(root)
    if par is None:
        raise ReconError(f"no *_par.txt camera file in {root}")
    names, K, w2c = read_par_file(par)
    paths = [root / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ReconError(f"{par.name} lists {missing[0].name}, which is not in {root}")
    sizes = [image_size(p) for p in paths]  # K refers to the stored images
    meta = {"camera_file": par.name}
    return views_with_cameras(
        paths, K, w2c, sizes, max_side=max_side, source="middlebury", root=root, meta=meta
    )
