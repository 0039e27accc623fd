"""Learned priors (DUSt3R, MASt3R, VGGT) from local checkpoints: network inference + global alignment.

Work in progress: the networks and the alignment exist (``networks/``, ``align.py``); the wrapper that
runs them on a pair graph and returns a ``PriorResult`` is being written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from recon.errors import ReconError
from recon.priors.align import AlignConfig
from recon.priors.base import PriorResult
from recon.views import Views


@dataclass
class LearnedConfig:
    batch_size: int = 4
    """Image pairs per network forward pass."""
    align: AlignConfig = field(default_factory=AlignConfig)


class LearnedPrior:
    def __init__(self, kind: str, checkpoint: Path | None, cfg: LearnedConfig, device: torch.device | str):
        self.kind, self.checkpoint, self.cfg, self.device = kind, checkpoint, cfg, device

    def __call__(self, views: Views) -> PriorResult:
        raise ReconError(f"the {self.kind} prior is not wired into the pipeline yet; use --prior classical")
