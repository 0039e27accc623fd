"""Spherical-harmonic colours (recon.render.sh) against gsplat's reference evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from recon.cameras import make_rigid, so3_exp
from recon.gaussians import SH_C0
from recon.render.sh import eval_sh, sh_basis, sh_colors

gsplat_ref = pytest.importorskip("gsplat.cuda._torch_impl")


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_eval_sh_matches_gsplat(degree):
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(500, 3, generator=g, dtype=torch.float64) * 3.0  # not normalised: done inside
    coeffs = torch.randn(500, 16, 3, generator=g, dtype=torch.float64)  # more bands than used
    ours = eval_sh(degree, dirs, coeffs)
    ref = gsplat_ref._spherical_harmonics(degree, dirs, coeffs)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    # The highest band actually matters (a wrong constant or sign there would be caught).
    if degree > 0:
        lower = eval_sh(degree - 1, dirs, coeffs)
        assert float((ours - lower).abs().max()) > 0.1


def test_sh_basis_is_orthonormal():
    """Monte-Carlo check that the 16 functions are orthonormal on the sphere (real SH basis)."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    Y = sh_basis(3, dirs)
    gram = 4 * math.pi * (Y.T @ Y) / len(dirs)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), rtol=0, atol=0.03)
    assert sh_basis(0, dirs[:1]).item() == pytest.approx(SH_C0)


def test_sh_colors_view_direction_offset_and_clamp():
    g = torch.Generator().manual_seed(1)
    N = 64
    means = torch.randn(N, 3, generator=g, dtype=torch.float64)
    coeffs = torch.randn(N, 9, 3, generator=g, dtype=torch.float64)
    w2c = torch.stack(
        [
            make_rigid(
                so3_exp(torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64)), torch.tensor([0.5, 0.0, 2.0])
            ),
            make_rigid(
                so3_exp(torch.tensor([-0.1, 0.4, 0.0], dtype=torch.float64)), torch.tensor([0.0, 1.0, 3.0])
            ),
        ]
    ).double()
    ours = sh_colors(2, coeffs, means, w2c)
    assert ours.shape == (2, N, 3)
    # gsplat's rule: dirs = means - inverse(viewmat)[:3, 3], colour = max(SH + 0.5, 0).
    centres = torch.inverse(w2c)[:, :3, 3]
    ref = torch.stack([gsplat_ref._spherical_harmonics(2, means - c, coeffs) for c in centres])
    ref = torch.clamp_min(ref + 0.5, 0.0)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert (ours == 0).any() and (ours > 0).any()  # the clamp is exercised
    # Degree 0 is view-independent: C0 * sh0 + 0.5.
    dc = sh_colors(0, coeffs, means, w2c)
    torch.testing.assert_close(dc[0], torch.clamp_min(SH_C0 * coeffs[:, 0] + 0.5, 0.0))
    torch.testing.assert_close(dc[0], dc[1])


def test_sh_colors_gradient_reaches_camera_pose():
    g = torch.Generator().manual_seed(2)
    means = torch.randn(5, 3, generator=g, dtype=torch.float64)
    coeffs = torch.randn(5, 16, 3, generator=g, dtype=torch.float64) * 0.1
    w2c = make_rigid(
        so3_exp(torch.tensor([0.2, 0.1, 0.3], dtype=torch.float64)), torch.tensor([0.1, 0.2, 3.0])
    )
    w2c = w2c.double()[None].requires_grad_()
    assert torch.autograd.gradcheck(lambda T: sh_colors(3, coeffs, means, T), (w2c,))
    (grad,) = torch.autograd.grad(sh_colors(3, coeffs, means, w2c).sum(), w2c)
    assert float(grad.abs().max()) > 0


def test_eval_sh_rejects_bad_degree():
    with pytest.raises(ValueError, match="degree"):
        sh_basis(4, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="coefficients"):
        eval_sh(2, torch.ones(1, 3), torch.zeros(1, 4, 3))
