"""The result of the pipeline: optimised cameras and Gaussians, the prior they started from, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from recon.cameras import Cameras
from recon.gaussians import Gaussians
from recon.priors.base import PriorResult
from recon.views import Views


@dataclass
class Reconstruction:
    """Attributes:
    cameras: optimised cameras of the training views.
    initial_cameras: the cameras training started from (the prior's, or the dataset's).
    gaussians: optimised Gaussians.
    views: the training views (images) the reconstruction was fitted to.
    prior: the geometry prior's output, when one ran.
    metrics: numbers for metrics.json (train/test PSNR and SSIM, seconds, stage diagnostics).
    refine_before: the (Gaussians, cameras) before each refinement stage that ran ("poses",
        "diffusion"), so that each stage's effect can be measured (``recon eval --refine-effect``).
    """

    cameras: Cameras
    initial_cameras: Cameras
    gaussians: Gaussians
    views: Views
    prior: PriorResult | None = None
    metrics: dict = field(default_factory=dict)
    refine_before: dict[str, tuple[Gaussians, Cameras]] = field(default_factory=dict)
