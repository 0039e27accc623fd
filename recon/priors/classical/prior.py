"""The classical dense-stereo prior: sparse SfM for cameras, then multi-view stereo for point maps.

Needs no weights and no GPU; it is recon's default prior.
"""

from __future__ import annotations

import time

import torch

from recon.cameras import Cameras, transform_points
from recon.priors.base import PriorResult
from recon.priors.classical.config import ClassicalConfig
from recon.priors.classical.dense import DenseConfig, dense_pointmaps
from recon.priors.classical.sfm import run_sfm
from recon.views import Views


def depth_ranges(cameras: Cameras, points: torch.Tensor, margin: float = 0.25) -> torch.Tensor | None:
    """Per-view (near, far) z range (N, 2) from the sparse points visible in front of each camera.

    Uses the 1st/99th percentiles widened by ``margin`` (relative) so that surfaces just beyond the
    sparse points are still swept; None when there are too few points.
    """
    if points.shape[0] < 10:
        return None
    ranges = []
    for i in range(len(cameras)):
        z = transform_points(cameras.w2c[i].double(), points.double())[:, 2]
        z = z[z > 0]
        if z.numel() < 10:
            return None
        lo, hi = torch.quantile(z, torch.tensor([0.01, 0.99], dtype=z.dtype))
        ranges.append(torch.stack([lo * (1 - margin), hi * (1 + margin)]))
    return torch.stack(ranges).float()


def dense_for_cameras(
    views: Views,
    cameras: Cameras,
    cfg: DenseConfig,
    points: torch.Tensor | None = None,
    neighbors: list[list[int]] | None = None,
    failed: dict[str, str] | None = None,
    info: dict | None = None,
) -> PriorResult:
    """Dense point maps for known ``cameras`` (a subset of ``views`` by name) as a PriorResult."""
    sub = views.subset(cameras.names) if cameras.names != views.names else views
    rng = depth_ranges(cameras, points) if points is not None else None
    dense = dense_pointmaps(sub.images, cameras, cfg, rng, neighbors)
    return PriorResult(
        cameras=cameras,
        pointmaps=dense.pointmaps,
        conf=dense.conf,
        colors=dense.colors,
        depth=dense.depth,
        failed=dict(failed or {}),
        info=dict(info or {}),
    )


class ClassicalPrior:
    """``ClassicalPrior(cfg)(views) -> PriorResult``; never reads ``views.cameras``."""

    def __init__(self, cfg: ClassicalConfig | None = None) -> None:
        self.cfg = cfg or ClassicalConfig()

    def __call__(self, views: Views) -> PriorResult:
        sfm = run_sfm(views, self.cfg.sfm)
        points = torch.as_tensor(sfm.points3d, dtype=torch.float32)
        t0 = time.perf_counter()
        result = dense_for_cameras(
            views, sfm.cameras, self.cfg.dense, points, sfm.neighbors, sfm.failed, {"sfm": sfm.info}
        )
        result.info["dense_s"] = time.perf_counter() - t0
        result.info["confidence"] = dict(sfm.info.get("confidence", {}))  # per placed view, in [0, 1]
        result.info["low_confidence"] = list(sfm.info.get("verification", {}).get("low_confidence", []))
        return result
