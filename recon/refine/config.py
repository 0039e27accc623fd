"""Configuration of the refinement stages (torch-free: the CLI builds its parser from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from recon.options import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
    ranged,
)


@dataclass
class PoseCorrectionConfig:
    """Detection and re-placement of outlier training cameras (on by default; a no-op without outliers)."""

    enabled: bool = True
    """Detect and correct badly placed training cameras after the first optimisation round."""
    mad_k: PositiveFloat = 4.0
    """A view is flagged when a score exceeds median + mad_k * 1.4826 * MAD over the views."""
    min_reproj_frac: NonNegativeFloat = 0.02
    """...and its match reprojection error (median, as a fraction of the image diagonal) exceeds this."""
    min_photo_ratio: PositiveFloat = 1.5
    """...or its photometric loss exceeds this many times the median view's (and the MAD rule)."""
    max_features: PositiveInt = 2000
    """SIFT keypoints per view for the match-based score and PnP."""
    match_ratio: ranged(float, 0, 1, lo_open=True) = 0.85
    """Lowe ratio of the SIFT matching."""
    grid_steps: PositiveInt = 13
    """Azimuth steps of the rotation grid about the scene centre (per inlier camera)."""
    grid_margin_deg: NonNegativeFloat = 10.0
    """The grid extends this far beyond the azimuth range of the inlier cameras on each side."""
    top_k: PositiveInt = 3
    """Candidates kept after the discrete search for continuous refinement."""
    refine_iters: NonNegativeInt = 150
    """Pose-only refinement steps of each kept candidate against the frozen Gaussians."""
    refine_lr: PositiveFloat = 1e-2
    """Initial learning rate of that refinement (radians; translation in scene-extent units)."""
    accept_ratio: ranged(float, 0, 1, lo_open=True) = 0.8
    """Accept a new pose only when its loss is below this fraction of the (refined) current pose's loss."""
    support_depth_tol: PositiveFloat = 0.05
    """A Gaussian belongs to the inliers' scene when it lies within this relative depth of an inlier's
    rendered surface."""
    reopt_iters: NonNegativeInt = 0
    """Joint re-optimisation steps after a correction; 0 repeats the first round's ``iters``."""
    max_outlier_frac: Fraction = 0.34
    """At most this fraction of the views is treated as outliers (the most deviant first)."""


@dataclass
class DiffusionConfig:
    """Diffusion-prior refinement (off unless a model folder is given)."""

    model: Path | None = None
    """Local diffusers folder of an image-to-image model (model_index.json inside); None skips the stage."""
    mode: Literal["auto", "img2img", "fixer"] = "auto"
    """'img2img': multi-step image-to-image pipeline; 'fixer': one denoising step with the pipeline's
    VAE/UNet/scheduler (SD-Turbo-style fixers); 'auto': img2img when the pipeline has an image-to-image
    form, else fixer."""
    rounds: NonNegativeInt = 3
    """Refresh rounds: pseudo views are re-rendered and re-enhanced at the start of each."""
    steps_per_round: PositiveInt = 200
    """Training steps between refreshes (Difix3D+'s K)."""
    num_pseudo: PositiveInt = 8
    """Pseudo views per round, spread over the path through (and beyond) the training cameras."""
    extrapolate: NonNegativeFloat = 0.25
    """How far the pseudo-view path extends beyond the first/last training camera (in camera spacings)."""
    pseudo_weight: NonNegativeFloat = 0.3
    """Weight of a pseudo view's loss relative to a training view's."""
    strength_start: Fraction = 0.5
    """Denoising strength of the first round (fraction of the noise schedule)."""
    strength_end: Fraction = 0.2
    """Strength of the last round (linear in between): later renders are cleaner and need less change."""
    inference_steps: PositiveInt = 10
    """img2img: scheduler steps for strength 1 (the pipeline runs about strength x this many)."""
    guidance_scale: NonNegativeFloat = 1.0
    """img2img classifier-free guidance (<= 1 disables it: the prompt is empty anyway)."""
    prompt: str = ""
    """Text prompt for text-conditioned models."""
    batch_size: PositiveInt = 4
    """Images per diffusion call."""
    depth_lambda: NonNegativeFloat = 0.05
    """Weight of the Pearson correlation of the training views' rendered depth with the prior's depth."""
    lr_scale: NonNegativeFloat = 0.1
    """Position learning rate of the stage relative to the first round's initial one (fine-tuning)."""
    seed: Seed = 0
    """Seed of the diffusion noise and of the view order."""


@dataclass
class RefineConfig:
    """Refinement stages run after the first training round."""

    poses: PoseCorrectionConfig = field(default_factory=PoseCorrectionConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
