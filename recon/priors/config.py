"""Configuration of the geometry priors (torch-free: the CLI builds its parser from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from recon.errors import ReconError
from recon.options import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, ranged

PriorName = Literal["classical", "dust3r", "mast3r", "vggt"]


@dataclass
class AlignConfig:
    iters: NonNegativeInt = 300
    """Adam steps of the joint optimisation (0: initialisation only)."""
    lr: PositiveFloat = 0.01
    conf_min: NonNegativeFloat = 1.5
    """Pixels with confidence below this are ignored (DUSt3R confidences start at 1)."""
    conf_power: NonNegativeFloat = 1.0
    """Residual weight = conf ** conf_power (conf is clipped at 1e3 to avoid single-pixel dominance)."""
    optimize_focal: bool = True
    shared_focal: bool = False
    """One focal for all views (same camera), else one per view."""


@dataclass
class LearnedConfig:
    """Settings of the learned priors (``--learned.<field>`` on the command line)."""

    batch_size: PositiveInt = 4
    """DUSt3R/MASt3R: image pairs per decoder pass (and images per encoder pass). VGGT sees all views in
    one pass (its global attention needs them together)."""
    resolution: ranged(int, 16, optional=True) = None
    """Network input size: the long side for DUSt3R/MASt3R, the width for VGGT. None: the checkpoint's
    training size (512 for the released DUSt3R/MASt3R 512 models, 224 for the 224 one, 518 for VGGT)."""
    map_max_side: ranged(int, 4) = 128
    """Long side of the returned point maps and of DUSt3R/MASt3R's alignment grid (never more than the
    images' long side). The alignment runs on the CPU; its cost grows with the square of this."""
    complete_max_views: ranged(int, 2) = 12
    """Pair graph: every pair of views up to this many views; beyond, a sliding window + keyframes."""
    window: PositiveInt = 3
    """Sliding window: each view is paired with the next ``window`` views in the input order."""
    keyframes: ranged(int, 0, optional=True) = None
    """Evenly spaced views (first and last included) paired with each other as long-range links in the
    sliding-window graph. None: round(sqrt(N))."""
    vggt_points: Literal["depth", "pointmap"] = "depth"
    """VGGT point maps from the depth head + predicted cameras (consistent with the cameras; the official
    recommendation) or from the point head."""
    vggt_preprocess: Literal["crop", "pad"] = "crop"
    """VGGT input layout: the official default 'crop' (width = resolution) or 'pad' (square canvas)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Network precision on CUDA (autocast); the CPU always runs in float32."""
    align: AlignConfig = field(default_factory=AlignConfig)

    def check(self) -> None:
        """Raise ReconError on values that cannot work."""
        if self.batch_size < 1:
            raise ReconError(f"--learned.batch-size must be >= 1, got {self.batch_size}")
        if self.resolution is not None and self.resolution < 16:
            raise ReconError(f"--learned.resolution must be >= 16 pixels, got {self.resolution}")
        if self.map_max_side < 4:
            raise ReconError(f"--learned.map-max-side must be >= 4 pixels, got {self.map_max_side}")
        if self.complete_max_views < 2 or self.window < 1:
            raise ReconError("--learned.complete-max-views must be >= 2 and --learned.window >= 1")
        if self.keyframes is not None and self.keyframes < 0:
            raise ReconError(f"--learned.keyframes must be >= 0, got {self.keyframes}")
