"""Which geometry prior a run uses: ``PriorConfig`` and ``make_prior``.

``classical`` (default) needs no weights; ``dust3r``, ``mast3r`` and ``vggt`` load official checkpoints
from a local file given with ``--prior.checkpoint``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from recon.cameras import Cameras
from recon.errors import ReconError
from recon.priors.base import Prior, PriorResult
from recon.priors.classical.prior import ClassicalConfig, ClassicalPrior, dense_for_cameras
from recon.views import Views

PriorName = Literal["classical", "dust3r", "mast3r", "vggt"]


@dataclass
class PriorConfig:
    name: PriorName = "classical"
    """Which geometry prior estimates cameras and point maps."""
    checkpoint: Path | None = None
    """Local checkpoint file of a learned prior (.pth or .safetensors; a config.json beside it sets sizes)."""
    classical: ClassicalConfig = field(default_factory=ClassicalConfig)


def make_prior(cfg: PriorConfig, device: torch.device | str = "cpu") -> Prior:
    """The prior named in ``cfg``, ready to call on views."""
    if cfg.name == "classical":
        return ClassicalPrior(cfg.classical)
    raise ReconError(f"prior '{cfg.name}' is not available in this build; use --prior.name classical")


def dense_prior_for_cameras(views: Views, cameras: Cameras, cfg: PriorConfig) -> PriorResult:
    """Point maps for known cameras (``--poses dataset``): the classical prior's dense stereo stage."""
    return dense_for_cameras(views, cameras, cfg.classical.dense)


__all__ = ["PriorConfig", "PriorResult", "Prior", "make_prior", "dense_prior_for_cameras", "PriorName"]
