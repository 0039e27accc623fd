"""The compact ``.splat`` layout that web splat viewers read (antimatter15/splat and its descendants).

No header; 32 bytes per Gaussian, little endian::

    position  float32 x 3   world x, y, z (our ``means``)
    scale     float32 x 3   standard deviations (activated: exp(log_scales))
    colour    uint8 x 4     R, G, B = round(255 * clamp(C0 * sh0 + 0.5, 0, 1)), A = round(255 * opacity)
    rotation  uint8 x 4     w, x, y, z of the normalised quaternion, each round(clamp(q * 128 + 128, 0, 255))

Only the SH DC term survives (view-dependent colour is dropped). Gaussians are sorted by descending
importance ``prod(scales) * opacity`` (size times opacity), the order those viewers stream and draw in.
Reading back is exact for positions and scales; colours and opacity are within 0.5/255 (after the clamp
to [0, 1]) and each quaternion component within 0.5/128 of the normalised one (before renormalising).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recon.errors import ReconError
from recon.gaussians.model import Gaussians, rgb_to_sh0, sh0_to_rgb
from recon.io.atomic import atomic_write_bytes

SPLAT_DTYPE = np.dtype(
    [("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))]
)
assert SPLAT_DTYPE.itemsize == 32

_ALPHA_EPS = 0.5 / 255.0
"""Opacities read back are kept within [eps, 1 - eps] so that their logits stay finite."""


def splat_order(gaussians: Gaussians) -> torch.Tensor:
    """Indices (N,) sorting Gaussians by descending ``prod(scales) * opacity`` (ties keep input order)."""
    g = gaussians
    volume = torch.exp(g.log_scales.detach().double().sum(-1))
    importance = volume * torch.sigmoid(g.opacity_logits.detach().double())
    return torch.sort(-importance.cpu(), stable=True).indices


def splat_bytes(gaussians: Gaussians) -> bytes:
    """The ``.splat`` file content of ``gaussians`` (sorted by importance, see the module docstring)."""
    g = gaussians.detach().to("cpu")
    order = splat_order(g)
    rgb = sh0_to_rgb(g.sh0[:, 0].double())
    alpha = torch.sigmoid(g.opacity_logits.double())
    rgba = torch.cat([rgb, alpha[:, None]], dim=1).clamp(0.0, 1.0)
    q = g.quats.double()
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    rec = np.zeros(len(g), dtype=SPLAT_DTYPE)
    rec["position"] = g.means[order].float().numpy()
    rec["scale"] = torch.exp(g.log_scales[order].float()).numpy()
    rec["rgba"] = torch.round(rgba[order] * 255.0).to(torch.uint8).numpy()
    rec["rot"] = torch.round(q[order] * 128.0 + 128.0).clamp(0.0, 255.0).to(torch.uint8).numpy()
    return rec.tobytes()


def save_splat(path: str | Path, gaussians: Gaussians) -> None:
    """Write ``gaussians`` as a ``.splat`` file, atomically."""
    atomic_write_bytes(path, splat_bytes(gaussians))


def load_splat(path: str | Path) -> Gaussians:
    """Read a ``.splat`` file as Gaussians of SH degree 0, in file order.

    Raises:
        ReconError: a missing file, or a size that is not a multiple of 32 bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise ReconError(f"splat file {path} does not exist")
    data = path.read_bytes()
    if len(data) % SPLAT_DTYPE.itemsize:
        raise ReconError(f"{path} is {len(data)} bytes, not a multiple of 32: not a .splat file")
    rec = np.frombuffer(data, dtype=SPLAT_DTYPE)
    n = len(rec)
    rgba = torch.from_numpy(rec["rgba"].astype(np.float32)) / 255.0
    alpha = rgba[:, 3].clamp(_ALPHA_EPS, 1.0 - _ALPHA_EPS)
    q = (torch.from_numpy(rec["rot"].astype(np.float32)) - 128.0) / 128.0
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return Gaussians(
        means=torch.from_numpy(rec["position"].copy()),
        quats=q,
        log_scales=torch.log(torch.from_numpy(rec["scale"].copy()).clamp_min(1e-30)),
        opacity_logits=torch.logit(alpha),
        sh0=rgb_to_sh0(rgba[:, :3]).reshape(n, 1, 3),
        shN=torch.zeros(n, 0, 3),
    )


__all__ = ["SPLAT_DTYPE", "load_splat", "save_splat", "splat_bytes", "splat_order"]
