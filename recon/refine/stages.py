"""Refinement after the first optimisation round: a list of stages (:class:`recon.refine.base.RefineStage`)
run in order on the trained scene. The default list (:func:`build_stages`) is outlier pose correction
(:mod:`recon.refine.poses`, on by default) then diffusion-prior refinement of unseen regions
(:mod:`recon.refine.diffusion`, off unless a model folder is given)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from recon.cameras import Cameras
from recon.gaussians import Gaussians
from recon.optim.params import scene_extent
from recon.refine.base import RefineContext, RefineStage, Scene
from recon.refine.config import RefineConfig
from recon.refine.diffusion import DiffusionRefinement, Enhancer, prior_depths
from recon.refine.poses import PoseCorrection, reposition_prior

__all__ = ["RefineResult", "build_stages", "refine", "reposition_prior", "prior_depths"]


@dataclass
class RefineResult:
    """Output of :func:`refine`: the refined scene, cameras (corrected where accepted) and metrics
    (``{"poses": ..., "diffusion": ...}`` for metrics.json: one entry per stage)."""

    gaussians: Gaussians
    cameras: Cameras
    metrics: dict
    seconds: float
    before: dict[str, tuple[Gaussians, Cameras]] = field(default_factory=dict)
    """The scene as it was before each stage that ran: ``"poses"`` (the trained input) and ``"diffusion"``
    (after pose correction). Comparing it with the next state measures that stage's effect."""


def build_stages(cfg: RefineConfig, enhancer: Enhancer | None = None) -> list[RefineStage]:
    """The default stages of ``cfg``: pose correction, then diffusion refinement (``enhancer`` stands in
    for ``cfg.diffusion.model``)."""
    return [PoseCorrection(cfg.poses), DiffusionRefinement(cfg.diffusion, enhancer)]


def refine(scene: Scene, ctx: RefineContext, stages: Sequence[RefineStage]) -> RefineResult:
    """Run ``stages`` in order on ``scene`` (the first training round's Gaussians and cameras).

    ``ctx.images`` are moved to the Gaussians' device; a non-positive ``ctx.extent`` is recomputed like the
    trainer does. With nothing to correct and no active stage the input comes back as it was.
    """
    t0 = time.perf_counter()
    device = scene.gaussians.means.device
    ext = ctx.extent if ctx.extent and ctx.extent > 0 else scene_extent(scene.cameras, scene.gaussians.means)
    ctx = dataclasses.replace(ctx, images=ctx.images.to(device), extent=float(ext))
    metrics: dict = {}
    before: dict[str, tuple[Gaussians, Cameras]] = {}
    for stage in stages:
        if stage.active:
            before[stage.name] = (scene.gaussians, scene.cameras)
        scene, metrics[stage.name] = stage(scene, ctx)
    return RefineResult(scene.gaussians, scene.cameras, metrics, time.perf_counter() - t0, before)
