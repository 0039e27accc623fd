"""The refinement-stage protocol: a stage takes the current scene (Gaussians and the training cameras they
were fitted with) and the shared inputs, and returns a refined scene and its metrics. The pipeline runs a
list of stages in order (:func:`recon.refine.stages.refine`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from recon.cameras import Cameras
from recon.gaussians import Gaussians
from recon.optim.config import TrainConfig

if TYPE_CHECKING:
    from recon.gaussians.init import InitConfig
    from recon.optim.trainer import TrainState
    from recon.priors.base import PriorResult

Tensor = torch.Tensor

__all__ = ["RefineContext", "RefineStage", "Scene"]


@dataclass
class Scene:
    """What refinement stages pass along: the Gaussians and the training cameras (optimised w2c, same
    order as the training images), on the working device."""

    gaussians: Gaussians
    cameras: Cameras


@dataclass
class RefineContext:
    """Inputs every stage may read (none modifies them).

    Attributes:
        images: (N, H, W, 3) training images in [0, 1] on the Gaussians' device.
        train_cfg: the first training round's configuration (learning rates, iterations, background).
        extent: the trainer's scene extent (pose translations and position learning rates use it; 0:
            :func:`recon.refine.stages.refine` recomputes it as the trainer does).
        prior: the geometry prior the first round started from (camera names matching the scene's), if any.
        init_cfg: initialisation settings for a stage that re-initialises from the prior.
        progress: show progress bars of re-optimisations.
        callback: passed to re-optimisations (live viewer).
        log: where the one-line stage messages go.
    """

    images: Tensor
    train_cfg: TrainConfig
    extent: float = 0.0
    prior: PriorResult | None = None
    init_cfg: InitConfig | None = None
    progress: bool = True
    callback: Callable[[TrainState], None] | None = None
    log: Callable[[str], None] = print


class RefineStage(Protocol):
    """One refinement stage.

    Attributes:
        name: its key in the metrics (``"poses"``, ``"diffusion"``).
        active: whether it will do work (the pipeline then keeps the scene as it was before it).
    """

    name: str
    active: bool

    def __call__(self, scene: Scene, ctx: RefineContext) -> tuple[Scene, dict]:
        """The refined scene (the input itself when nothing changed) and the stage's metrics."""
        ...
