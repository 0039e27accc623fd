"""Gaussians from point clouds and from a prior's point maps (InstantSplat-style initialisation).

A prior gives one point per pixel per view, so every surface seen by k views is represented k times.
:func:`init_from_prior` keeps one sample per surface patch before training:

1. Rank the views by confidence (median or mean of their valid pixels); the most trusted view first.
2. Co-visibility downsampling: walk the views in rank order and drop every pixel that an earlier view
   already explains: its point projects inside that view (with ``prior.cameras``), in front of it, and
   the earlier view's point map has, at one of the four pixel centres around the projection, a valid
   point whose depth agrees within ``covis_depth_tol`` (relative). Occluded and newly seen surfaces
   fail the depth test and are kept.
3. Drop pixels with ``conf <= conf_threshold`` (and non-finite points).
4. Cap the count: an optional voxel grid, then a grid coarse enough for ``max_gaussians``, each keeping
   its most confident point.

:func:`init_from_points` turns the points into isotropic Gaussians: scale = mean distance to the ``knn``
nearest neighbours (clamped relative to the median so isolated outliers and duplicates stay sane),
identity rotation, a low opacity, DC colour from the point colour and zero higher-order SH.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree

from recon.cameras import camera_centers, project, transform_points
from recon.errors import ReconError
from recon.gaussians.config import InitConfig
from recon.gaussians.model import Gaussians, num_sh_bases, rgb_to_sh0
from recon.priors.base import PriorResult

__all__ = [
    "InitConfig",
    "InitStats",
    "ViewInitStats",
    "init_from_points",
    "init_from_prior",
    "knn_mean_distance",
    "rank_views",
    "covisibility_keep_mask",
    "voxel_downsample",
    "cap_points",
]


@dataclass
class ViewInitStats:
    """What happened to one view's pixels (point-map pixel counts; the last four add up to n_pixels).

    n_low_conf: conf <= threshold; n_invalid: confident but non-finite or behind the own camera;
    n_covisible: explained by an earlier-ranked view; n_kept: sent on to the cap.
    """

    name: str
    rank: int
    score: float
    n_pixels: int
    n_low_conf: int
    n_invalid: int
    n_covisible: int
    n_kept: int


@dataclass
class InitStats:
    """Diagnostics of :func:`init_from_prior` (``as_dict`` goes to metrics.json).

    Attributes:
        views: per view, in the prior's order.
        n_raw: all point-map pixels.
        n_after_covis: pixels surviving the confidence and co-visibility filters.
        n_final: Gaussians created (after the voxel / count cap).
        voxel_size: the grid finally used by the cap, or None when no grid was needed.
    """

    views: list[ViewInitStats] = field(default_factory=list)
    n_raw: int = 0
    n_after_covis: int = 0
    n_final: int = 0
    voxel_size: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Points -> Gaussians
# --------------------------------------------------------------------------------------------------


def knn_mean_distance(points: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """Mean Euclidean distance (M,) from each point (M, 3) to its ``k`` nearest other points.

    With fewer than ``k + 1`` points, uses all the others; a single point gets NaN.
    """
    P = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    m = len(P)
    k = min(int(k), m - 1)
    if k < 1:
        return np.full(m, np.nan)
    dist, _ = cKDTree(P).query(P, k=k + 1)  # column 0 is the point itself (distance 0)
    return dist[:, 1:].mean(axis=1)


def init_from_points(
    points: torch.Tensor,
    colors: torch.Tensor,
    sh_degree: int = 0,
    init_opacity: float = 0.1,
    knn: int = 3,
    scale_clamp: tuple[float, float] = (0.1, 10.0),
) -> Gaussians:
    """Isotropic Gaussians at ``points`` (M, 3) with RGB ``colors`` (M, 3) in [0, 1].

    Scales are the mean distance to the ``knn`` nearest neighbours, clamped to ``scale_clamp`` times
    the median of those distances (a duplicated point would otherwise get scale 0 and an isolated one
    a huge splat). Rotations are identity, opacities ``init_opacity``, ``sh0`` reproduces ``colors``
    exactly and ``shN`` (degree ``sh_degree``) is zero. Tensors are float32 on ``points.device``.
    """
    if points.dim() != 2 or points.shape[-1] != 3 or colors.shape != points.shape:
        raise ReconError(f"init_from_points needs (M, 3) points and colours, got {tuple(points.shape)} and "
                         f"{tuple(colors.shape)}")
    if len(points) == 0:
        raise ReconError("no points to initialise Gaussians from")
    if not 0.0 < init_opacity < 1.0:
        raise ReconError(f"init_opacity must be in (0, 1), got {init_opacity}")
    m, dev = len(points), points.device
    d = knn_mean_distance(points, knn)
    finite = d[np.isfinite(d)]
    med = float(np.median(finite)) if finite.size else 0.0
    if med <= 0.0:  # one point, or all points equal: fall back to a fraction of the cloud's size
        span = float(np.ptp(points.detach().cpu().numpy(), axis=0).max()) if m > 1 else 0.0
        med = 0.01 * span if span > 0 else 0.01
        d = np.full(m, med)
    d = np.clip(np.nan_to_num(d, nan=med), scale_clamp[0] * med, scale_clamp[1] * med)
    log_scales = torch.from_numpy(np.log(d)).float().to(dev)[:, None].expand(m, 3).contiguous()
    quats = torch.zeros(m, 4, device=dev)
    quats[:, 0] = 1.0
    logit = float(np.log(init_opacity / (1.0 - init_opacity)))
    return Gaussians(
        means=points.detach().float().clone(),
        quats=quats,
        log_scales=log_scales,
        opacity_logits=torch.full((m,), logit, device=dev),
        sh0=rgb_to_sh0(colors.detach().float())[:, None, :].clone(),
        shN=torch.zeros(m, num_sh_bases(sh_degree) - 1, 3, device=dev),
    )


# --------------------------------------------------------------------------------------------------
# Point maps -> points: ranking, co-visibility, caps
# --------------------------------------------------------------------------------------------------


def _valid_mask(prior: PriorResult, conf_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(confident & finite & in front of the own camera) masks (M, h, w) and the low-confidence mask."""
    finite = torch.isfinite(prior.pointmaps).all(-1)
    low = ~(prior.conf > conf_threshold)
    pm = torch.where(finite[..., None], prior.pointmaps, torch.zeros_like(prior.pointmaps))
    z = _view_depth(prior, pm)
    return finite & ~low & (z > 0), low


def _view_depth(prior: PriorResult, pointmaps: torch.Tensor) -> torch.Tensor:
    """z-depth (M, h, w) of every view's own points in its own camera frame (from the point maps)."""
    M, h, w, _ = pointmaps.shape
    X = transform_points(prior.cameras.w2c.double(), pointmaps.reshape(M, -1, 3).double())
    return X[..., 2].reshape(M, h, w)


def rank_views(
    conf: torch.Tensor, valid: torch.Tensor, rank_by: str = "median"
) -> tuple[list[int], list[float]]:
    """View indices, most confident first, and each view's score (in the input order).

    The score is the median (or mean) confidence of the view's valid pixels; a view without valid
    pixels scores -inf. Ties keep the input order.
    """
    scores = []
    for c, v in zip(conf, valid, strict=True):
        vals = c[v]
        if vals.numel() == 0:
            scores.append(float("-inf"))
        elif rank_by == "median":
            scores.append(float(vals.float().median()))
        elif rank_by == "mean":
            scores.append(float(vals.float().mean()))
        else:
            raise ReconError(f"unknown rank_by {rank_by!r}; use 'median' or 'mean'")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order, scores


def covisibility_keep_mask(
    prior: PriorResult, valid: torch.Tensor, order: list[int], depth_tol: float = 0.03, max_views: int = 0
) -> torch.Tensor:
    """Keep mask (M, h, w): valid pixels that no earlier view in ``order`` already explains.

    A pixel of view v is explained by an earlier view u when its point projects (with u's K, w2c from
    ``prior.cameras``) in front of u, inside u's image, and at least one of the four point-map pixel
    centres around the projection is valid in u with a depth within ``depth_tol`` (relative) of the
    point's depth in u. Valid, not kept, pixels of u still explain later views: their surface is
    represented by an even earlier view. With ``max_views`` > 0 only that many earlier views, the nearest
    by camera centre, are asked (the others see little of v), which keeps the cost linear in the number
    of views.
    """
    M, h, w, _ = prior.pointmaps.shape
    cams = prior.cameras
    K = cams.K.double()
    w2c = cams.w2c.double()
    # point-map pixels per image pixel (point maps may be smaller than the images)
    scale = torch.stack([w / cams.sizes[:, 0].double(), h / cams.sizes[:, 1].double()], dim=-1)  # (M, 2)
    depth = _view_depth(prior, torch.nan_to_num(prior.pointmaps))
    keep = torch.zeros(M, h, w, dtype=torch.bool)
    centers = camera_centers(w2c)
    for r, v in enumerate(order):
        cand = valid[v].reshape(-1).clone()
        X = prior.pointmaps[v].reshape(-1, 3).double()
        earlier = order[:r]
        if 0 < max_views < len(earlier):
            dist = (centers[earlier] - centers[v]).norm(dim=1)
            nearest = set(dist.argsort()[:max_views].tolist())
            earlier = [u for k, u in enumerate(earlier) if k in nearest]  # still in ranking order
        for u in earlier:
            idx = cand.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            uv, z = project(X[idx], K[u], w2c[u])
            uv = uv * scale[u] - 0.5  # continuous point-map coordinates with pixel centres at integers
            j0, i0 = uv[:, 0].floor().long(), uv[:, 1].floor().long()
            explained = torch.zeros(idx.numel(), dtype=torch.bool)
            for di in (0, 1):
                for dj in (0, 1):
                    i, j = i0 + di, j0 + dj
                    ok = (z > 0) & (i >= 0) & (i < h) & (j >= 0) & (j < w)
                    ii, jj = i.clamp(0, h - 1), j.clamp(0, w - 1)
                    zu = depth[u, ii, jj]
                    ok &= valid[u, ii, jj] & ((z - zu).abs() <= depth_tol * zu)
                    explained |= ok
            cand[idx[explained]] = False
        keep[v] = cand.reshape(h, w)
    return keep


def voxel_downsample(points: np.ndarray, score: np.ndarray, voxel_size: float) -> np.ndarray:
    """Indices (sorted) of the highest-``score`` point in each occupied voxel of edge ``voxel_size``.

    Ties are broken by the lower index.
    """
    if voxel_size <= 0:
        raise ReconError(f"voxel_size must be > 0, got {voxel_size}")
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    cell = np.floor((points - points.min(0)) / voxel_size).astype(np.int64)
    dims = cell.max(0) + 1
    if float(np.prod(dims.astype(np.float64))) < 2.0**62:  # one int64 key per voxel: a fast 1-D sort
        key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    else:
        key = np.unique(cell, axis=0, return_inverse=True)[1].reshape(-1)
    # sort by voxel, then by descending score, then by index; the first of each voxel wins
    order = np.lexsort((np.arange(len(points)), -score, key))
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order[1:]] != key[order[:-1]]
    return np.sort(order[first])


def cap_points(
    points: np.ndarray, score: np.ndarray, max_points: int, voxel_size: float | None = None
) -> tuple[np.ndarray, float | None]:
    """Indices of at most ``max_points`` points, and the voxel size used (None when none was needed).

    Applies ``voxel_size`` when given, then, while too many points remain, the finest voxel grid (found
    by bisection on a log scale) that leaves at most ``max_points``, keeping the best-scoring point
    per voxel, so the cap thins dense regions and keeps the coverage of sparse ones.
    """
    if max_points < 1:
        raise ReconError(f"max_gaussians must be >= 1, got {max_points}")
    idx = np.arange(len(points))
    used = None
    if voxel_size is not None:
        idx = voxel_downsample(points, score, voxel_size)
        used = float(voxel_size)
    if len(idx) <= max_points:
        return idx, used
    P, S = points[idx], score[idx]
    span = float(np.ptp(P, axis=0).max())
    lo = used if used is not None else span * 1e-6  # too fine (or already applied)
    hi = span * 1.01  # one voxel holds everything
    best = voxel_downsample(P, S, hi)
    # a surface sampled densely fills about (span / v)^2 voxels: bracket the answer around that
    guess = span / np.sqrt(max_points)
    for v in (guess / 4, guess * 4):
        if lo < v < hi:
            sel = voxel_downsample(P, S, v)
            if len(sel) > max_points:
                lo = v
            else:
                hi, best = v, sel
    for _ in range(30):
        if hi / lo < 1.02:
            break
        mid = float(np.sqrt(lo * hi))
        sel = voxel_downsample(P, S, mid)
        if len(sel) <= max_points:
            hi, best = mid, sel
            if len(sel) >= 0.98 * max_points:
                break
        else:
            lo = mid
    return idx[best], hi


def init_from_prior(prior: PriorResult, cfg: InitConfig | None = None) -> tuple[Gaussians, InitStats]:
    """Initial Gaussians from a prior's point maps: ranking, co-visibility, confidence, cap (module doc).

    Returns the Gaussians (float32, CPU) and :class:`InitStats` with per-view counts.
    """
    cfg = InitConfig() if cfg is None else cfg
    M = len(prior.cameras)
    if M == 0:
        raise ReconError("the prior placed no views; nothing to initialise Gaussians from")
    if cfg.covis_depth_tol <= 0:
        raise ReconError(f"covis_depth_tol must be > 0, got {cfg.covis_depth_tol}")
    valid, low = _valid_mask(prior, cfg.conf_threshold)
    order, scores = rank_views(prior.conf, valid, cfg.rank_by)
    keep = (covisibility_keep_mask(prior, valid, order, cfg.covis_depth_tol, cfg.covis_max_views) if cfg.covis
            else valid.clone())

    stats = InitStats(n_raw=int(valid.numel()))
    for r, v in enumerate(order):
        stats.views.append(
            ViewInitStats(
                name=prior.cameras.names[v],
                rank=r,
                score=scores[v],
                n_pixels=int(valid[v].numel()),
                n_low_conf=int(low[v].sum()),
                n_invalid=int((~valid[v] & ~low[v]).sum()),
                n_covisible=int((valid[v] & ~keep[v]).sum()),
                n_kept=int(keep[v].sum()),
            )
        )
    stats.views.sort(key=lambda s: prior.cameras.names.index(s.name))

    # points in rank order (the most trusted view first)
    sel = [keep[v] for v in order]
    points = torch.cat([prior.pointmaps[v][m] for v, m in zip(order, sel, strict=True)]).float()
    colors = torch.cat([prior.colors[v][m] for v, m in zip(order, sel, strict=True)]).float()
    conf = torch.cat([prior.conf[v][m] for v, m in zip(order, sel, strict=True)]).float()
    stats.n_after_covis = len(points)
    if len(points) == 0:
        raise ReconError(
            f"no prior point has confidence above {cfg.conf_threshold}; lower the init conf_threshold"
        )
    idx, stats.voxel_size = cap_points(points.numpy(), conf.numpy(), cfg.max_gaussians, cfg.voxel_size)
    idx_t = torch.from_numpy(idx)
    gaussians = init_from_points(
        points[idx_t], colors[idx_t].clamp(0, 1), cfg.sh_degree, cfg.init_opacity, cfg.knn, cfg.scale_clamp
    )
    stats.n_final = len(gaussians)
    return gaussians, stats
