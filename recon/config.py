"""``ReconConfig``: everything a run needs, one dataclass per stage nested in it. Torch-free, so that the
CLI (tyro) builds its parser and answers ``--help`` without loading torch."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from recon.errors import ReconError
from recon.gaussians.config import InitConfig
from recon.optim.config import TrainConfig
from recon.options import NonNegativeInt, ranged
from recon.priors.classical.config import ClassicalConfig
from recon.priors.config import LearnedConfig, PriorName
from recon.refine.config import RefineConfig


@dataclass
class ReconConfig:
    """Everything a run needs; the CLI exposes every field (``recon run --help``)."""

    poses: Literal["prior", "dataset"] = "prior"
    """Camera poses: estimated by the geometry prior (pose-free, the default) or read from the dataset."""
    max_side: ranged(int, 64) = 512
    """Images are resized so that their long side is at most this many pixels."""
    test_every: NonNegativeInt = 0
    """Hold out every K-th image (index 0, K, 2K, ...) as a test view (LLFF uses 8); 0 keeps all."""
    test_pose_iters: NonNegativeInt = 300
    """With estimated poses, refine each held-out camera's pose against the frozen Gaussians for this many
    steps before scoring it (InstantSplat's protocol); the initial pose is the aligned reference pose."""
    device: str = "auto"
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N' (the N-th CUDA device)."""
    prior: PriorName = "classical"
    """Geometry prior: 'classical' (no weights, default) or a learned one that needs --checkpoint."""
    checkpoint: Path | None = None
    """Local checkpoint of a learned prior (.pth or .safetensors; a config.json beside it sets sizes)."""
    classical: ClassicalConfig = field(default_factory=ClassicalConfig)
    learned: LearnedConfig = field(default_factory=LearnedConfig)
    init: InitConfig = field(default_factory=InitConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    """Refinement after training: outlier pose correction (on) and diffusion-prior refinement (off)."""
    diffusion_model: Path | None = None
    """Local diffusers folder (model_index.json) of an image-to-image model (img2img or a single-step
    fixer) for diffusion-prior refinement of unseen regions; nothing is downloaded. Without it that stage
    is skipped."""
    train: Annotated[TrainConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """Raise :class:`ReconError` for settings no run can use (ranges of single options are declared
        in their types and checked by :func:`recon.options.validate_options`, which calls this)."""
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ReconError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.test_every == 1:
            raise ReconError("--test-every 1 would hold out every view; use 0 (none) or >= 2")
        self.learned.check()
