"""Which geometry prior a run uses: ``make_prior(name, ...)`` returns a callable ``views -> PriorResult``.

``classical`` (default) needs no weights; ``dust3r``, ``mast3r`` and ``vggt`` load official checkpoints
from a local file (``--checkpoint PATH``); nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from recon.cameras import Cameras
from recon.errors import ReconError
from recon.priors.base import Prior, PriorResult
from recon.priors.classical.prior import ClassicalConfig, ClassicalPrior, dense_for_cameras
from recon.priors.config import PriorName  # noqa: E402,F401  (re-exported)
from recon.priors.learned import LearnedConfig, LearnedPrior
from recon.views import Views


def make_prior(
    name: PriorName,
    checkpoint: Path | None = None,
    classical: ClassicalConfig | None = None,
    learned: LearnedConfig | None = None,
    device: torch.device | str = "cpu",
) -> Prior:
    """The prior called ``name``, ready to call on views."""
    if name == "classical":
        return ClassicalPrior(classical or ClassicalConfig())
    if name in ("dust3r", "mast3r", "vggt"):
        return LearnedPrior(name, checkpoint, learned or LearnedConfig(), device)
    raise ReconError(f"unknown prior '{name}'; choose one of classical, dust3r, mast3r, vggt")


def dense_prior_for_cameras(views: Views, cameras: Cameras, classical: ClassicalConfig) -> PriorResult:
    """Point maps for known cameras (``--poses dataset``): the classical prior's dense stereo stage."""
    return dense_for_cameras(views, cameras, classical.dense)
