"""Held-out view evaluation: bring reference test cameras into the reconstruction's frame, optionally
refine their poses against the frozen Gaussians (as InstantSplat does), render, and score.

Below the pipeline (which scores held-out views of a run) and ``eval`` (which runs it per scene), so both
may use it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recon.cameras import Cameras, camera_centers, sim3_transform_w2c, umeyama
from recon.gaussians import Gaussians
from recon.metrics import psnr, ssim
from recon.optim.pose import fit_poses
from recon.render.gaussians import render_images


def reference_to_estimate(est: Cameras, ref: Cameras) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The similarity (s, R, t), float64, mapping the reference world to the estimated one (X_est = s R X_ref
    + t), fitted on matching cameras (same order in ``est`` and ``ref``).

    Umeyama on their centres and on a point one baseline along each optical axis, so that the rotation is
    well determined even for 2-3 nearly collinear cameras.
    """
    def anchors(w2c: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        centers = camera_centers(w2c)
        axes = w2c[:, 2, :3]  # optical axis (camera z) in world coordinates
        return torch.cat([centers, centers + length * axes])

    ref_c = camera_centers(ref.w2c.double())
    est_c = camera_centers(est.w2c.double())
    ref_len = (ref_c - ref_c.mean(0)).norm(dim=1).mean().clamp_min(1e-6)
    est_len = (est_c - est_c.mean(0)).norm(dim=1).mean().clamp_min(1e-6)
    return umeyama(anchors(ref.w2c.double(), ref_len), anchors(est.w2c.double(), est_len))


def align_reference_cameras(est: Cameras, ref: Cameras, others: Cameras) -> Cameras:
    """Express reference-frame cameras ``others`` in the frame of the estimated cameras ``est``, with the
    similarity of :func:`reference_to_estimate` fitted on the matching cameras ``est`` / ``ref``."""
    s, R, t = reference_to_estimate(est, ref)
    w2c = sim3_transform_w2c(others.w2c.double(), s, R, t).float()
    return others.with_w2c(w2c)


@dataclass
class ViewScores:
    psnr: float
    ssim: float
    per_view: dict[str, dict[str, float]]


def score_views(renders: torch.Tensor, targets: torch.Tensor, names: list[str]) -> ViewScores:
    """Mean PSNR/SSIM of renders (N,H,W,3) against targets, plus per-view values."""
    per = {}
    for i, n in enumerate(names):
        per[n] = {"psnr": float(psnr(renders[i], targets[i])), "ssim": float(ssim(renders[i], targets[i]))}
    p = sum(v["psnr"] for v in per.values()) / max(len(per), 1)
    s = sum(v["ssim"] for v in per.values()) / max(len(per), 1)
    return ViewScores(p, s, per)


def evaluate_test_views(
    gaussians: Gaussians,
    cameras: Cameras,
    images: torch.Tensor,
    fit_pose_iters: int = 0,
    background: torch.Tensor | tuple[float, float, float] | None = None,
) -> tuple[ViewScores, torch.Tensor, Cameras]:
    """Render ``cameras`` (already in the reconstruction's frame), optionally after refining their poses
    against the frozen Gaussians for ``fit_pose_iters`` steps, and score against ``images`` (N,H,W,3).

    Returns the scores, the renders and the (refined) cameras.
    """
    if fit_pose_iters > 0:
        cameras = fit_poses(gaussians, cameras, images, iters=fit_pose_iters, background=background)
    with torch.no_grad():
        renders = render_images(gaussians, cameras, background)
    return score_views(renders, images, cameras.names), renders, cameras
