"""Stage 1 of the pure-PyTorch reference rasteriser: EWA projection of 3D Gaussians (pinhole cameras).

The semantics (gsplat 1.5.3's classic rule) are documented in :mod:`recon.render.torch_ref`, which
re-exports :func:`project_gaussians` beside its stage 2 so that every backend module offers both stages.
"""

from __future__ import annotations

import torch

from recon.cameras import quat_to_rotmat

Tensor = torch.Tensor

#: Screen-space extent of a Gaussian's bounding box, in standard deviations per axis (gsplat: 3.33).
RADIUS_SIGMAS = 3.33


def _cov2d(means_c: Tensor, z: Tensor, cov_c: Tensor, K: Tensor, width: int, height: int) -> Tensor:
    """2D covariances (C, N, 2, 2) ``J Sigma_c J^T`` of camera-frame means (C, N, 3) at depths ``z`` (C, N).

    The perspective Jacobian is evaluated at a point clamped to 1.3x the half field of view on each side.
    """
    C, N = z.shape
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]  # (C, 1)
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    x, y = means_c[..., 0], means_c[..., 1]
    half_fov_x = 0.5 * width / fx
    half_fov_y = 0.5 * height / fy
    lim_xp = (width - cx) / fx + 0.3 * half_fov_x
    lim_xn = cx / fx + 0.3 * half_fov_x
    lim_yp = (height - cy) / fy + 0.3 * half_fov_y
    lim_yn = cy / fy + 0.3 * half_fov_y
    xc = z * torch.clamp(x / z, min=-lim_xn, max=lim_xp)
    yc = z * torch.clamp(y / z, min=-lim_yn, max=lim_yp)
    zeros = torch.zeros_like(z)
    J = torch.stack([fx / z, zeros, -fx * xc / (z * z), zeros, fy / z, -fy * yc / (z * z)], dim=-1)
    J = J.reshape(C, N, 2, 3)
    return J @ cov_c @ J.transpose(-1, -2)


@torch.no_grad()
def _radii(means2d: Tensor, sxx: Tensor, syy: Tensor, keep: Tensor, width: int, height: int) -> Tensor:
    """Per-axis integer screen radii (C, N, 2) int32 of blurred variances ``sxx``, ``syy``; 0 where the
    Gaussian is not ``keep`` or its radius box lies entirely off the image."""
    radius = torch.ceil(RADIUS_SIGMAS * torch.stack([sxx, syy], dim=-1).clamp_min(0).sqrt())
    u, v = means2d[..., 0], means2d[..., 1]
    on_image = (
        (u + radius[..., 0] > 0)
        & (u - radius[..., 0] < width)
        & (v + radius[..., 1] > 0)
        & (v - radius[..., 1] < height)
    )
    keep = keep & on_image
    return torch.where(keep[..., None], radius, torch.zeros_like(radius)).to(torch.int32)


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    w2c: Tensor,
    K: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Project N 3D Gaussians into C pinhole cameras (EWA splatting, gsplat's classic rule).

    Args:
        means: (N, 3) world positions.
        quats: (N, 4) rotations (w, x, y, z), need not be normalised.
        scales: (N, 3) standard deviations along the local axes (activated, not logs).
        w2c: (C, 4, 4) world-to-camera transforms (OpenCV frame).
        K: (C, 3, 3) intrinsics in pixels.
        width, height: image size in pixels.
        eps2d: blur added to the diagonal of the 2D covariance.
        near_plane, far_plane: Gaussians whose camera depth is outside (near, far) are culled.

    Returns:
        means2d (C, N, 2) pixel coordinates of the projected means,
        conics (C, N, 3) upper triangle (a, b, c) of the inverse blurred 2D covariance,
        depths (C, N) camera-frame z of the means,
        radii (C, N, 2) int32 per-axis screen radii in pixels, 0 for culled Gaussians.
        All but radii are differentiable w.r.t. means, quats, scales and w2c.
    """
    R_cw = w2c[:, :3, :3]  # (C, 3, 3)
    t_cw = w2c[:, :3, 3]  # (C, 3)
    means_c = torch.einsum("cij,nj->cni", R_cw, means) + t_cw[:, None, :]  # (C, N, 3)
    depths = means_c[..., 2]

    # 3D covariance R S^2 R^T, then into the camera frame.
    M = quat_to_rotmat(quats) * scales[:, None, :]  # (N, 3, 3) = R diag(s)
    cov3d = M @ M.transpose(-1, -2)
    cov_c = torch.einsum("cij,njk,clk->cnil", R_cw, cov3d, R_cw)  # (C, N, 3, 3)

    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]  # (C, 1)
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    in_depth = (depths > near_plane) & (depths < far_plane)
    # Culled-by-depth Gaussians (possibly z = 0) get a harmless stand-in depth so nothing below divides by
    # zero; their outputs are unspecified and their gradients are zero.
    z = torch.where(in_depth, depths, torch.ones_like(depths))
    x, y = means_c[..., 0], means_c[..., 1]
    cov2d = _cov2d(means_c, z, cov_c, K, width, height)  # (C, N, 2, 2)

    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)  # (C, N, 2)

    sxx = cov2d[..., 0, 0] + eps2d
    syy = cov2d[..., 1, 1] + eps2d
    sxy = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    det = sxx * syy - sxy * sxy
    det_safe = det.clamp_min(1e-10)
    conics = torch.stack([syy / det_safe, -sxy / det_safe, sxx / det_safe], dim=-1)
    radii = _radii(means2d, sxx, syy, in_depth & (det > 0), width, height)
    return means2d, conics, depths, radii
