"""3D Gaussian PLY files in the layout of the original 3D Gaussian Splatting code.

One ``vertex`` element, binary little endian, all float32 properties in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3K-1}  opacity  scale_0..2  rot_0..3

- ``nx ny nz`` are zeros (3DGS writes them; viewers ignore them).
- ``f_dc_c`` is the DC SH coefficient of colour channel c (our ``sh0[:, 0, c]``).
- ``f_rest`` is channel-major, as 3DGS stores its (N, 3, K) feature tensor flattened: property index
  ``c * K + k`` holds coefficient k (1..K in SH order, without DC) of channel c, i.e. ``shN[:, k, c]``.
- ``opacity`` is the logit, ``scale_i`` the log standard deviations, ``rot`` the quaternion (w, x, y, z)
  unnormalised, exactly our raw parameters. This is what SuperSplat, gsplat's exporter and other
  splat viewers read.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from recon.errors import ReconError
from recon.gaussians.model import Gaussians
from recon.io.atomic import atomic_path

_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3")


def ply_property_names(num_rest: int) -> list[str]:
    """Vertex property names, in file order, for ``num_rest`` = 3K f_rest coefficients."""
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(num_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def _np32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy()


def save_ply(path: str | Path, gaussians: Gaussians) -> None:
    """Write ``gaussians`` as a 3DGS PLY (float32, binary little endian), atomically."""
    g = gaussians
    n, k = len(g), g.shN.shape[1]
    f_rest = _np32(g.shN).transpose(0, 2, 1).reshape(n, 3 * k)  # (N, K, 3) -> (N, 3, K): channel-major
    columns = [
        _np32(g.means),
        np.zeros((n, 3), np.float32),
        _np32(g.sh0).reshape(n, 3),
        f_rest,
        _np32(g.opacity_logits).reshape(n, 1),
        _np32(g.log_scales),
        _np32(g.quats),
    ]
    data = np.concatenate(columns, axis=1)
    names = ply_property_names(3 * k)
    vertex = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = data[:, i]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(str(tmp))


def load_ply(path: str | Path) -> Gaussians:
    """Read a 3D Gaussian PLY (ours, original 3DGS, gsplat, ... with any SH degree) as float32 Gaussians.

    Raises:
        ReconError: missing/unreadable file, a PLY without the Gaussian fields (e.g. a plain point cloud),
            or an f_rest count that is not 3 * ((d + 1)^2 - 1).
    """
    path = Path(path)
    if not path.is_file():
        raise ReconError(f"PLY file {path} does not exist")
    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"].data
    except KeyError:
        raise ReconError(f"{path} has no vertex element; it is not a 3D Gaussian PLY") from None
    except Exception as e:  # plyfile raises several exception types for malformed headers and bodies
        raise ReconError(f"cannot read PLY {path}: {e}") from None
    fields = set(v.dtype.names or ())
    missing = [f for f in _REQUIRED if f not in fields]
    if missing:
        absent = ", ".join(missing[:4]) + ("..." if len(missing) > 4 else "")
        raise ReconError(
            f"{path} is not a 3D Gaussian PLY (no {absent}); a plain point cloud is not a set of Gaussians"
        )
    rest = sorted((f for f in fields if re.fullmatch(r"f_rest_\d+", f)), key=lambda f: int(f[7:]))
    k3 = len(rest)
    k = k3 // 3
    if k3 % 3 or round((k + 1) ** 0.5) ** 2 != k + 1 or rest != [f"f_rest_{i}" for i in range(k3)]:
        raise ReconError(f"{path} has {k3} f_rest fields; expected 3 * ((degree + 1)^2 - 1) numbered from 0")

    def cols(names: list[str] | tuple[str, ...]) -> torch.Tensor:
        arr = np.stack([np.asarray(v[name], dtype=np.float32) for name in names], axis=1) if names else None
        return torch.from_numpy(arr if arr is not None else np.zeros((len(v), 0), np.float32))

    n = len(v)
    shN = cols(rest).reshape(n, 3, k).transpose(1, 2).contiguous()  # channel-major -> (N, K, 3)
    return Gaussians(
        means=cols(("x", "y", "z")),
        quats=cols(("rot_0", "rot_1", "rot_2", "rot_3")),
        log_scales=cols(("scale_0", "scale_1", "scale_2")),
        opacity_logits=cols(("opacity",)).reshape(n),
        sh0=cols(("f_dc_0", "f_dc_1", "f_dc_2")).reshape(n, 1, 3),
        shN=shN,
    )
