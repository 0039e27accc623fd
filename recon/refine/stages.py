"""Refinement after the first optimisation round: outlier pose correction (on by default) and diffusion-
prior refinement of unseen regions (off unless a model folder is given). Entry point: :func:`refine`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from recon.cameras import Cameras, invert_rigid, transform_points
from recon.gaussians import Gaussians
from recon.gaussians.init import InitConfig, init_from_prior
from recon.optim.trainer import TrainConfig, TrainState, scene_extent, train
from recon.priors.base import PriorResult
from recon.refine.config import RefineConfig
from recon.refine.diffusion import Enhancer, run_diffusion_stage
from recon.refine.poses import correct_outliers
from recon.render.gaussians import background_tensor

Tensor = torch.Tensor

__all__ = ["RefineResult", "refine", "reposition_prior", "prior_depths"]


@dataclass
class RefineResult:
    """Output of :func:`refine`: the refined scene, cameras (corrected where accepted) and metrics
    (``{"poses": ..., "diffusion": ...}`` for metrics.json)."""

    gaussians: Gaussians
    cameras: Cameras
    metrics: dict
    seconds: float
    before: dict[str, tuple[Gaussians, Cameras]] = field(default_factory=dict)
    """The scene as it was before each stage that ran: ``"poses"`` (the trained input) and ``"diffusion"``
    (after pose correction). Comparing it with the next state measures that stage's effect."""


def reposition_prior(prior: PriorResult, cameras: Cameras) -> PriorResult:
    """The prior with each view's point map moved rigidly from its prior pose to ``cameras``' pose.

    A prior's per-view geometry (depth in the camera frame) is usually right even when its pose is not,
    so re-expressing every point map with the corrected (and first-round optimised) poses turns a
    misplaced copy of the outlier's surfaces into a consistent one. ``cameras`` are matched by name.
    """
    cams = cameras.subset(prior.cameras.names).to("cpu")
    T = invert_rigid(cams.w2c.double()) @ prior.cameras.w2c.double()  # (M,4,4): old world -> new world
    pts = torch.stack([transform_points(T[m], pm.double().reshape(-1, 3)).reshape(pm.shape)
                       for m, pm in enumerate(prior.pointmaps)]).float()
    return dataclasses.replace(prior, cameras=cams.with_w2c(cams.w2c), pointmaps=pts)


def prior_depths(prior: PriorResult, H: int, W: int) -> Tensor:
    """The prior's z-depth (M, H, W) of each view at the image size (0 where unknown or unconfident).

    Uses ``prior.depth`` when present, else the point maps' z in the prior's cameras; resized with
    nearest neighbours (depth must not be blurred across edges).
    """
    if prior.depth is not None:
        d = prior.depth.float()
    else:
        w2c = prior.cameras.w2c.double()
        M = prior.pointmaps.shape[0]
        flat = prior.pointmaps.double().reshape(M, -1, 3)
        d = torch.stack([transform_points(w2c[m], flat[m])[:, 2] for m in range(M)])
        d = d.reshape(prior.pointmaps.shape[:3]).float()
    d = torch.where(prior.conf > 0, d, torch.zeros_like(d)) if prior.conf is not None else d
    if tuple(d.shape[1:]) != (H, W):
        d = F.interpolate(d[:, None], size=(H, W), mode="nearest")[:, 0]
    return d.clamp_min(0)


def refine(
    gaussians: Gaussians,
    cameras: Cameras,
    images: Tensor,
    cfg: RefineConfig,
    train_cfg: TrainConfig,
    *,
    prior: PriorResult | None = None,
    init_cfg: InitConfig | None = None,
    extent: float | None = None,
    enhancer: Enhancer | None = None,
    progress: bool = True,
    callback: Callable[[TrainState], None] | None = None,
    log: Callable[[str], None] = print,
) -> RefineResult:
    """Run the refinement stages on a trained reconstruction.

    Args:
        gaussians: the first training round's Gaussians (their device is the working device).
        cameras: its training cameras (optimised w2c), same order as ``images``.
        images: (N, H, W, 3) training images in [0, 1].
        cfg: which stages run and how.
        train_cfg: the first round's configuration (learning rates, iterations of the re-optimisation).
        prior: the geometry prior the first round started from (names matching ``cameras``). With it, a
            pose correction re-initialises the Gaussians from the repositioned prior before re-optimising
            (the misplaced copy of the outlier's surfaces disappears); the diffusion stage takes its depth
            for the depth-correlation term.
        init_cfg: initialisation settings for that re-initialisation.
        extent: the trainer's scene extent (default: recomputed like the trainer does).
        enhancer: stands in for ``cfg.diffusion.model`` (tests, custom models).
        callback: passed to the trainer of the re-optimisation after a pose correction (live viewer).
        log: where the one-line stage messages go.

    Returns a :class:`RefineResult`; with no outlier and no diffusion model the inputs come back as they were.
    """
    t0 = time.perf_counter()
    device = gaussians.means.device
    images = images.to(device, torch.float32)
    ext = float(extent) if extent else scene_extent(cameras, gaussians.means)
    metrics: dict = {}
    before: dict[str, tuple[Gaussians, Cameras]] = {}
    if cfg.poses.enabled:
        before["poses"] = (gaussians, cameras)
        bg = background_tensor(train_cfg.background, device)
        tp = time.perf_counter()
        new_cams, pm = correct_outliers(gaussians, cameras, images, cfg.poses, ext, bg)
        if pm.get("corrected"):
            log(f"recon: corrected the pose of {', '.join(pm['corrected'])}; re-optimising")
            iters = cfg.poses.reopt_iters or train_cfg.iters
            reopt_cfg = dataclasses.replace(train_cfg, iters=iters)
            if prior is not None:
                start, _ = init_from_prior(reposition_prior(prior, new_cams), init_cfg or InitConfig())
                start = start.to(device)
                pm["reinitialised"] = True
            else:
                start = gaussians
                pm["reinitialised"] = False
            res = train(start, new_cams.to(device), images, reopt_cfg, progress=progress, callback=callback)
            gaussians, cameras = res.gaussians, res.cameras
            pm["reopt_iters"] = iters
        pm["seconds"] = time.perf_counter() - tp
        metrics["poses"] = pm
    else:
        metrics["poses"] = {"skipped": "disabled"}
    depths = None
    if prior is not None and cfg.diffusion.depth_lambda > 0:
        order = [prior.cameras.names.index(n) for n in cameras.names] if set(cameras.names) <= set(
            prior.cameras.names) else None
        if order is not None:
            depths = prior_depths(prior, int(images.shape[1]), int(images.shape[2]))[order]
    if cfg.diffusion.model is not None or enhancer is not None:
        before["diffusion"] = (gaussians, cameras)
    gaussians, metrics["diffusion"] = run_diffusion_stage(
        gaussians, cameras, images, cfg.diffusion, train_cfg, extent=ext, depths=depths, enhancer=enhancer,
        log=log,
    )
    return RefineResult(gaussians, cameras, metrics, time.perf_counter() - t0, before)
