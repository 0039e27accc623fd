"""Configuration of the Gaussian initialisation (torch-free: the CLI builds its parser from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from recon.options import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, ranged


@dataclass
class InitConfig:
    """How point maps become the initial Gaussians.

    Attributes:
        max_gaussians: upper bound on the number of Gaussians after initialisation.
        voxel_size: world-unit voxel grid applied after co-visibility downsampling (the most confident
            point per voxel survives); None applies a grid only when needed to meet ``max_gaussians``.
        init_opacity: opacity of every new Gaussian (stored as its logit).
        knn: neighbours whose mean distance sets each Gaussian's scale.
        sh_degree: SH degree of the ``shN`` buffer, allocated as zeros. 0 by default: with a handful of
            views view-dependent colour mostly overfits; a trainer that wants a higher degree passes it
            here (or pads ``shN`` when it raises the active degree).
        conf_threshold: pixels with ``conf <= conf_threshold`` are dropped (0 keeps all with conf > 0;
            learned priors' confidences start at 1, so e.g. 1.5 drops their least certain pixels).
        covis: run co-visibility downsampling (off: keep every confident pixel of every view).
        covis_depth_tol: relative depth agreement for a pixel to count as already explained.
        covis_max_views: earlier views (nearest by camera centre) a pixel is checked against; 0: all.
        rank_by: view ranking statistic of the confidences of a view's valid pixels.
        scale_clamp: (lo, hi) multiples of the median kNN distance that bound every scale.
    """

    max_gaussians: PositiveInt = 100_000
    voxel_size: ranged(float, 0, lo_open=True, optional=True) = None
    init_opacity: ranged(float, 0, 1, lo_open=True, hi_open=True) = 0.1
    knn: PositiveInt = 3
    sh_degree: ranged(int, 0, 3) = 0
    conf_threshold: NonNegativeFloat = 0.0
    covis: bool = True
    covis_depth_tol: PositiveFloat = 0.03
    covis_max_views: NonNegativeInt = 16
    rank_by: Literal["median", "mean"] = "median"
    scale_clamp: ranged(float, 0, lo_open=True, count=2) = (0.1, 10.0)
