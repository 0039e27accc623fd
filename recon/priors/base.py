"""The geometry-prior interface: every prior (classical or learned) returns a :class:`PriorResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from recon.cameras import Cameras
from recon.views import Views


@dataclass
class PriorResult:
    """Cameras and dense geometry for the views a prior could place.

    Attributes:
        cameras: (M views) K (for the ``Views`` image size), w2c, sizes, names: the placed views only.
        pointmaps: (M, h, w, 3) float32 world points per pixel; h, w may be smaller than the images' but
            keep their aspect ratio (pixel (i, j) of the point map covers the same image area).
        conf: (M, h, w) float32 confidence >= 0; 0 means "no point here".
        colors: (M, h, w, 3) float32 in [0, 1], the image colour of each point-map pixel.
        depth: optional (M, h, w) z-depth in each view's camera frame.
        failed: name -> one-line reason, for the views the prior could not place.
        info: free-form diagnostics (timings, match counts) written to metrics.json.
    """

    cameras: Cameras
    pointmaps: torch.Tensor
    conf: torch.Tensor
    colors: torch.Tensor
    depth: torch.Tensor | None = None
    failed: dict[str, str] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = len(self.cameras)
        if self.pointmaps.shape[0] != m or self.pointmaps.shape[-1] != 3:
            raise ValueError(f"pointmaps {tuple(self.pointmaps.shape)} for {m} cameras")
        if self.conf.shape != self.pointmaps.shape[:-1] or self.colors.shape != self.pointmaps.shape:
            raise ValueError("conf/colors must match pointmaps' (M, h, w)")


class Prior(Protocol):
    """A geometry prior: ``prior(views) -> PriorResult``. It never reads ``views.cameras`` poses."""

    def __call__(self, views: Views) -> PriorResult: ...
