"""Pose-only fitting against frozen Gaussians: registers held-out views for evaluation (InstantSplat's
test-pose optimisation) and re-fits outlier poses.

A configuration of the one training loop (:func:`recon.optim.trainer.train` with the Gaussians frozen):
all cameras are optimised at once, each step renders the whole batch in one rasteriser call, coarse to
fine. The parameterisation is the trainer's (left-multiplied se(3) deltas on w2c, translation in units of
the scene extent), so the learning rate means the same in every scene.
"""

from __future__ import annotations

import torch

from recon.cameras import Cameras
from recon.errors import ReconError
from recon.gaussians import Gaussians
from recon.optim.config import TrainConfig
from recon.optim.losses import photometric_loss
from recon.optim.params import scene_extent
from recon.optim.trainer import train
from recon.render.gaussians import render_images

Tensor = torch.Tensor


def fit_poses(
    gaussians: Gaussians,
    cameras: Cameras,
    images: Tensor,
    iters: int = 300,
    lr: float = 1e-2,
    lr_final: float = 1e-4,
    *,
    ssim_lambda: float = 0.2,
    background: Tensor | tuple[float, float, float] | None = None,
    extent: float | None = None,
    sh_degree: int | None = None,
    return_losses: bool = False,
    max_batch: int = 8,
    coarse_levels: int = 2,
    coarse_fraction: float = 0.6,
    coarse_min_side: int = 128,
    crop_until: float = 0.9,
) -> Cameras | tuple[Cameras, Tensor]:
    """Refine the w2c of ``cameras`` so that the frozen ``gaussians`` render like ``images``.

    Args:
        gaussians: the scene (not modified, no gradients).
        cameras: C cameras with initial w2c (e.g. reference test poses aligned into the scene's frame);
            all of one image size.
        images: (C, H, W, 3) target images in [0, 1].
        iters, lr, lr_final: Adam steps and the exponentially decaying learning rate (radians; translation
            in units of ``extent``). The defaults bring 3 degree / 5% errors below 0.05 degrees in 300
            steps on the synthetic scene.
        extent: scene length scale (default: :func:`recon.optim.params.scene_extent` of these cameras and
            the Gaussians).
        return_losses: also return the final per-camera photometric loss (C,), e.g. to flag failures.
        max_batch: cameras rendered together per step; more are fitted in consecutive chunks.
        coarse_levels, coarse_fraction, coarse_min_side, crop_until: coarse-to-fine schedule and
            full-resolution crops (see ``TrainConfig``):
            a step on low-resolution images is cheap and its pose gradient smooth; the last steps at full
            resolution settle the pose to the pixel.

    Returns cameras with refined w2c (same K, sizes, names), and optionally the losses.
    """
    if len(cameras) == 0:  # nothing to fit (e.g. an empty test split)
        return (cameras, torch.zeros(0)) if return_losses else cameras
    if images.dim() != 4 or images.shape[0] != len(cameras) or images.shape[-1] != 3:
        got = tuple(images.shape)
        raise ReconError(f"fit_poses needs (C, H, W, 3) images for {len(cameras)} cameras, got {got}")
    H, W = int(images.shape[1]), int(images.shape[2])
    if not bool((cameras.sizes[:, 0] == W).all() and (cameras.sizes[:, 1] == H).all()):
        raise ReconError(f"camera sizes do not match the {W}x{H} images given to fit_poses")
    ext = float(extent) if extent else scene_extent(cameras, gaussians.means)
    if len(cameras) > max_batch:  # independent problems: fit them in chunks to bound memory
        chunks = [list(range(i, min(i + max_batch, len(cameras)))) for i in range(0, len(cameras), max_batch)]
        kw = dict(ssim_lambda=ssim_lambda, background=background, extent=ext, sh_degree=sh_degree,
                  return_losses=True, max_batch=max_batch, coarse_levels=coarse_levels,
                  coarse_fraction=coarse_fraction, coarse_min_side=coarse_min_side, crop_until=crop_until)
        parts = [fit_poses(gaussians, cameras.subset(c), images[c], iters, lr, lr_final, **kw)
                 for c in chunks]
        merged = Cameras.cat([p[0] for p in parts])
        return (merged, torch.cat([p[1] for p in parts])) if return_losses else merged
    cfg = TrainConfig(
        iters=iters, optimize_gaussians=False, pose_lr=lr, pose_lr_final=lr_final, ssim_lambda=ssim_lambda,
        sh_degree=gaussians.sh_degree if sh_degree is None else sh_degree, sh_increase_every=0,
        batch_size=len(cameras), scene_extent=ext, coarse_levels=coarse_levels,
        coarse_fraction=coarse_fraction, coarse_min_side=coarse_min_side, crop_until=crop_until,
        checkpoint_every=0, callback_every=0, log_every=max(iters, 1), background=background,
    )
    device = gaussians.means.device
    fitted = train(gaussians.detach(), cameras, images.to(device), cfg, progress=False).cameras
    result = fitted.to(cameras.w2c.device)
    if not return_losses:
        return result
    with torch.no_grad():
        rgb = render_images(gaussians, fitted.to(device), background)
        target = images.to(device=device, dtype=torch.float32)
        losses = torch.stack([photometric_loss(rgb[c], target[c], ssim_lambda) for c in range(len(cameras))])
    return result, losses.cpu()
