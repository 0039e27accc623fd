"""View-dependent colour from real spherical harmonics (degrees 0..3), in plain differentiable PyTorch.

Basis: the standard real SH basis in the sign/ordering convention of the original 3DGS code (and
gsplat), index ``l^2 + l + m`` for ``m = -l..l``, evaluated at the unit view direction ``(x, y, z)``.
Colour = ``max(sum_k basis_k(dir) * coeff_k + 0.5, 0)`` per channel (CONVENTIONS), with
``dir = normalise(mean - camera centre)``.
"""

from __future__ import annotations

import math

import torch

from recon.cameras import camera_centers

Tensor = torch.Tensor

# Normalisation constants sqrt((2l+1)/(4 pi) (l-|m|)!/(l+|m|)!) (times sqrt(2) for m != 0), folded with
# the polynomial factors of each basis function.
_C0 = 0.5 / math.sqrt(math.pi)  # 0.28209479...
_C1 = math.sqrt(3.0 / (4.0 * math.pi))  # 0.48860251...
_C2 = (
    0.5 * math.sqrt(15.0 / math.pi),  # xy
    0.5 * math.sqrt(15.0 / math.pi),  # yz
    0.25 * math.sqrt(5.0 / math.pi),  # 3z^2 - 1
    0.5 * math.sqrt(15.0 / math.pi),  # xz
    0.25 * math.sqrt(15.0 / math.pi),  # x^2 - y^2
)
_C3 = (
    0.25 * math.sqrt(35.0 / (2.0 * math.pi)),  # y (3x^2 - y^2)
    0.5 * math.sqrt(105.0 / math.pi),  # xyz
    0.25 * math.sqrt(21.0 / (2.0 * math.pi)),  # y (5z^2 - 1)
    0.25 * math.sqrt(7.0 / math.pi),  # z (5z^2 - 3)
    0.25 * math.sqrt(21.0 / (2.0 * math.pi)),  # x (5z^2 - 1)
    0.25 * math.sqrt(105.0 / math.pi),  # z (x^2 - y^2)
    0.25 * math.sqrt(35.0 / (2.0 * math.pi)),  # x (x^2 - 3y^2)
)

MAX_SH_DEGREE = 3


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis functions (..., (degree+1)^2) at unit directions ``dirs`` (..., 3)."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _C2[0] * x * y,
            -_C2[1] * y * z,
            _C2[2] * (3.0 * zz - 1.0),
            -_C2[3] * x * z,
            _C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            -_C3[0] * y * (3.0 * xx - yy),
            _C3[1] * x * y * z,
            -_C3[2] * y * (5.0 * zz - 1.0),
            _C3[3] * z * (5.0 * zz - 3.0),
            -_C3[4] * x * (5.0 * zz - 1.0),
            _C3[5] * z * (xx - yy),
            -_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Raw SH value (..., 3) = sum_k basis_k(normalise(dirs)) coeffs[..., k, :].

    Args:
        degree: degree to use (0..3); only the first ``(degree+1)^2`` coefficients are read.
        dirs: (..., 3) directions, normalised inside.
        coeffs: (..., K, 3) coefficients with K >= (degree+1)^2, broadcastable against dirs.
    """
    n = (degree + 1) ** 2
    if coeffs.shape[-2] < n:
        raise ValueError(f"SH degree {degree} needs {n} coefficients, got {coeffs.shape[-2]}")
    unit = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(degree, unit)  # (..., n)
    return (basis[..., :, None] * coeffs[..., :n, :]).sum(-2)


def sh_colors(degree: int, coeffs: Tensor, means: Tensor, w2c: Tensor) -> Tensor:
    """Per-camera colours (C, N, 3) of N Gaussians: ``max(SH(mean - centre) + 0.5, 0)``.

    Args:
        degree: SH degree to evaluate (<= the degree stored in ``coeffs``).
        coeffs: (N, K, 3) SH coefficients.
        means: (N, 3) world positions.
        w2c: (C, 4, 4) world-to-camera transforms; gradients flow to it through the camera centre.
    """
    dirs = means[None, :, :] - camera_centers(w2c)[:, None, :]  # (C, N, 3)
    return torch.clamp_min(eval_sh(degree, dirs, coeffs[None]) + 0.5, 0.0)
