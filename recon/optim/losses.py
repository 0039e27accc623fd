"""Training losses: L1, D-SSIM and their 3DGS mixture, and a scale-invariant depth-correlation loss.

Images are (..., H, W, 3) float in [0, 1]; SSIM comes from :mod:`recon.metrics` (its one home).
"""

from __future__ import annotations

import torch

from recon.metrics import ssim

Tensor = torch.Tensor


def l1_loss(img: Tensor, ref: Tensor) -> Tensor:
    """Mean absolute error over all elements."""
    return (img - ref).abs().mean()


def dssim_loss(img: Tensor, ref: Tensor) -> Tensor:
    """1 - SSIM with reflected borders (every pixel gets a gradient); images (H, W, 3) or (N, H, W, 3)."""
    return 1.0 - ssim(img, ref, padding="reflect")


def photometric_loss(img: Tensor, ref: Tensor, ssim_lambda: float = 0.2) -> Tensor:
    """3DGS's image loss (1 - lambda) * L1 + lambda * (1 - SSIM), lambda = 0.2 by default."""
    loss = l1_loss(img, ref)
    if ssim_lambda > 0:
        loss = (1.0 - ssim_lambda) * loss + ssim_lambda * dssim_loss(img, ref)
    return loss


def pearson_depth_loss(depth: Tensor, prior: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """1 - Pearson correlation between rendered depth and a prior depth, per view, averaged over views.

    Invariant to an affine change (scale and shift) of either depth, so it accepts monocular or relative
    depth priors whose scale does not match the scene's (as in FSGS/SparseGS). Shapes: (N, H, W) or
    (N, H, W, 1) (or unbatched (H, W)); ``mask`` (same shape, bool) selects the pixels that count, e.g.
    where the render is opaque and the prior valid. Views with fewer than 2 valid pixels contribute 0.
    """
    if depth.dim() == 2:
        depth, prior = depth[None], prior[None]
        mask = None if mask is None else mask[None]
    d = depth.reshape(depth.shape[0], -1)
    p = prior.reshape(prior.shape[0], -1).to(d.dtype)
    w = torch.ones_like(d) if mask is None else mask.reshape(mask.shape[0], -1).to(d.dtype)
    n = w.sum(1)
    valid = n >= 2
    n = n.clamp_min(1.0)
    d_c = (d - (w * d).sum(1, keepdim=True) / n[:, None]) * w
    p_c = (p - (w * p).sum(1, keepdim=True) / n[:, None]) * w
    corr = (d_c * p_c).sum(1) / ((d_c.square().sum(1) * p_c.square().sum(1)).sqrt() + eps)
    return torch.where(valid, 1.0 - corr, torch.zeros_like(corr)).mean()
