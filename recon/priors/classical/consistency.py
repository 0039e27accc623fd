"""Geometric consistency and confidence of plane-sweep depths: steps 5-6 of :mod:`dense`.

Every depth is reprojected into each of its source views, the source's own depth is read there and
lifted back into the reference (forward-backward check); the confidence combines the photometric score,
the uniqueness of the match and the number of agreeing views. :mod:`recon.priors.classical.dense`
describes the method and drives it over the views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recon.cameras import Cameras, pixel_centers, project, unproject_depth
from recon.priors.classical.config import DenseConfig
from recon.priors.classical.plane_sweep import _Sweep, _to_grid

Tensor = torch.Tensor


def _consistent_views(depths: Tensor, cams: Cameras, r: int, srcs: list[int], cfg: DenseConfig) -> Tensor:
    """(h, w) number of source views whose depth map agrees with view r's (0 where r has no depth).

    Forward-backward check: reference pixel -> world -> source pixel; the source depth there (nearest
    pixel) lifts a point that must land back within ``consistency_px`` of the start with a depth within
    ``consistency_rel_depth`` of the reference depth.
    """
    h, w = depths.shape[1:]
    d_r = depths[r]
    valid_r = d_r > 0
    c2w = cams.c2w
    X = unproject_depth(d_r, cams.K[r], c2w[r]).reshape(-1, 3)  # (h*w, 3)
    uv_r = pixel_centers(h, w).reshape(-1, 2)
    count = torch.zeros(h * w)
    for s in srcs:
        uv_s, z_s = project(X, cams.K[s], cams.w2c[s])
        grid = _to_grid(uv_s, w, h).reshape(1, 1, -1, 2)
        d_s = F.grid_sample(depths[s][None, None], grid, mode="nearest", align_corners=False)
        d_s = d_s.reshape(-1)
        # Lift the source pixel with the source's depth; back into the reference.
        rays = torch.cat([uv_s, torch.ones_like(uv_s[:, :1])], -1) @ torch.linalg.inv(cams.K[s]).T
        X_back = (rays * d_s[:, None]) @ c2w[s, :3, :3].T + c2w[s, :3, 3]
        uv_back, z_back = project(X_back, cams.K[r], cams.w2c[r])
        px_err = (uv_back - uv_r).norm(dim=-1)
        rel = (z_back - d_r.reshape(-1)).abs() / d_r.reshape(-1).clamp_min(1e-9)
        ok = (z_s > 0) & (d_s > 0) & (px_err < cfg.consistency_px) & (rel < cfg.consistency_rel_depth)
        count += ok.float()
    return torch.where(valid_r, count.reshape(h, w), torch.zeros(h, w))


def confidence(
    sweeps: list[_Sweep], depths: Tensor, cams: Cameras, srcs_all: list[list[int]], cfg: DenseConfig
) -> Tensor:
    """Confidence (N, h, w) in [0, 1] of the stacked sweep depths (N, h, w); 0 where a hard test fails.

    The geometric mean of a photometric term (NCC from ``ncc_min`` -> 0 to ``ncc_good`` -> 1), a uniqueness
    term (cost ratio from 1 -> 0 to ``ratio_good`` -> 1) and a multi-view term (agreeing views /
    ``min(n_sources, consistent_target)``); pixels without depth or with fewer than ``min_consistent``
    agreeing views get 0.
    """
    n, h, w = depths.shape
    conf = torch.zeros(n, h, w)
    for r in range(n):
        n_ok = _consistent_views(depths, cams, r, srcs_all[r], cfg)
        sw = sweeps[r]
        photo = ((sw.score - cfg.ncc_min) / (cfg.ncc_good - cfg.ncc_min)).clamp(0, 1)
        unique = ((sw.ratio - 1.0) / (cfg.ratio_good - 1.0)).clamp(0, 1)
        multi = (n_ok / min(len(srcs_all[r]), cfg.consistent_target)).clamp(0, 1)
        c = (photo * unique * multi).pow(1.0 / 3.0)
        keep = (depths[r] > 0) & (n_ok >= cfg.min_consistent)
        conf[r] = torch.where(keep, c, torch.zeros_like(c))
    return conf
