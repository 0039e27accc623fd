"""Plane-sweep stereo for one reference view: the photometric cost volume of :mod:`dense` (steps 1-4).

Fronto-parallel planes of the reference camera, uniform in inverse depth between (near, far); the
source views warped onto each plane (one ``grid_sample`` per chunk of planes); windowed zero-mean NCC
against the reference, aggregated over the best ``top_k`` sources that see the window; winner-take-all
with sub-plane refinement and a uniqueness ratio. :mod:`recon.priors.classical.dense` describes the
method and drives it over the views; the image helpers here are shared with its other steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recon.cameras import Cameras, pixel_centers, project
from recon.priors.classical.config import DenseConfig

Tensor = torch.Tensor

# ITU-R BT.601 luma weights: NCC runs on one grey channel (colour adds little to NCC and costs 3x).
_LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------------------------------
# Image helpers
# --------------------------------------------------------------------------------------------------


def _box(x: Tensor, k: int) -> Tensor:
    """Mean over k x k windows of (..., H, W) maps (stride 1, same size; over the in-image part at borders).

    Separable sums of shifted slices: O(k) adds per pixel and contiguous memory access, which on CPU is
    about twice as fast as ``avg_pool2d`` (O(k^2) per pixel) for the window sizes used here.
    """
    r = k // 2
    H, W = x.shape[-2:]
    rows = x.clone()
    for i in range(1, r + 1):  # add the neighbours i to the right and i to the left (zero outside)
        rows[..., : W - i] += x[..., i:]
        rows[..., i:] += x[..., : W - i]
    out = rows.clone()
    for i in range(1, r + 1):
        out[..., : H - i, :] += rows[..., i:, :]
        out[..., i:, :] += rows[..., : H - i, :]

    def count(n: int) -> Tensor:  # in-image samples of each window along one axis
        j = torch.arange(n)
        return ((j + r).clamp_max(n - 1) - (j - r).clamp_min(0) + 1).to(x.dtype)

    return out / (count(H)[:, None] * count(W)[None, :])


def _to_gray(images: Tensor) -> Tensor:
    """(N, H, W, 3) -> (N, H, W)."""
    w = torch.tensor(_LUMA, dtype=images.dtype)
    return images @ w


def _resize(images: Tensor, h: int, w: int) -> Tensor:
    """(N, H, W, 3) -> (N, h, w, 3) with antialiased bilinear interpolation (area-like when shrinking)."""
    if images.shape[1:3] == (h, w):
        return images.contiguous()
    x = images.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def _to_grid(uv: Tensor, W: int, H: int) -> Tensor:
    """Pixel coordinates (..., 2) (corner origin) -> grid_sample coordinates with align_corners=False."""
    scale = torch.tensor([2.0 / W, 2.0 / H], dtype=uv.dtype)
    return uv * scale - 1.0


# --------------------------------------------------------------------------------------------------
# Plane sweep for one reference view
# --------------------------------------------------------------------------------------------------


@dataclass
class _Sweep:
    depth: Tensor  # (h, w) WTA depth (sub-plane refined)
    score: Tensor  # (h, w) aggregated NCC at the winner
    ratio: Tensor  # (h, w) second-best cost / best cost (>= 1)
    n_planes: int


def _relative_pose(w2c_r: Tensor, w2c_s: Tensor) -> tuple[Tensor, Tensor]:
    """(R_rs, t_rs) mapping reference-camera points into the source camera."""
    T = w2c_s @ torch.linalg.inv(w2c_r)
    return T[:3, :3], T[:3, 3]


def _auto_planes(cams: Cameras, r: int, srcs: list[int], near: float, far: float, cfg: DenseConfig) -> int:
    """Plane count so that consecutive planes shift a source pixel by about ``cfg.plane_step_px``.

    The shift is measured at a 5x5 grid of reference pixels between the near and far planes; the largest
    over pixels and sources decides (inverse-depth spacing makes the shift per plane nearly uniform).
    """
    W, H = int(cams.sizes[r, 0]), int(cams.sizes[r, 1])
    g = torch.linspace(0.05, 0.95, 5, dtype=torch.float64)
    uv = torch.stack(torch.meshgrid(g * W, g * H, indexing="xy"), -1).reshape(-1, 2)
    rays = torch.cat([uv, torch.ones_like(uv[:, :1])], -1) @ torch.linalg.inv(cams.K[r].double()).T
    c2w = torch.linalg.inv(cams.w2c[r].double())
    X = torch.cat([rays * near, rays * far]) @ c2w[:3, :3].T + c2w[:3, 3]
    shift = 0.0
    for s in srcs:
        p, z = project(X, cams.K[s].double(), cams.w2c[s].double())
        d = (p[: len(uv)] - p[len(uv) :]).norm(dim=-1)
        ok = (z[: len(uv)] > 0) & (z[len(uv) :] > 0)
        if ok.any():
            shift = max(shift, float(d[ok].max()))
    n = math.ceil(shift / cfg.plane_step_px) + 1
    return int(min(max(n, cfg.min_planes), cfg.max_planes))


def _plane_warps(cams: Cameras, r: int, srcs: list[int], h: int, w: int) -> tuple[Tensor, Tensor]:
    """Plane-induced warps of the sources, folded for ``grid_sample``: A (S, 1, 3, h, w), b (S, 1, 3, 1, 1).

    p_s ~ d * (K_s R_rs K_r^-1 p_r) + K_s t_rs. Both terms are folded with the pixel -> grid_sample
    normalisation (x * 2 / W - 1, which commutes with the perspective division as a row operation on the
    homogeneous coordinates), so per plane one multiply-add and one divide: ``hom = A * d + b``.
    """
    uv_r = pixel_centers(h, w, dtype=torch.float64)
    p_r = torch.cat([uv_r, torch.ones_like(uv_r[..., :1])], -1).reshape(-1, 3)  # (h*w, 3)
    Kr_inv = torch.linalg.inv(cams.K[r].double())
    N = torch.tensor([[2.0 / w, 0.0, -1.0], [0.0, 2.0 / h, -1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    A_maps, b_vecs = [], []
    for s in srcs:
        R_rs, t_rs = _relative_pose(cams.w2c[r].double(), cams.w2c[s].double())
        Ks = N @ cams.K[s].double()
        A_maps.append((Ks @ R_rs @ Kr_inv @ p_r.T).reshape(3, h, w).float())
        b_vecs.append((Ks @ t_rs).float())
    A = torch.stack(A_maps)[:, None]  # (S, 1, 3, h, w)
    bvec = torch.stack(b_vecs)[:, None, :, None, None]  # (S, 1, 3, 1, 1)
    return A, bvec


def _plane_scores(
    gray: Tensor, r: int, srcs: list[int], depths: Tensor, warps: tuple[Tensor, Tensor], cfg: DenseConfig
) -> tuple[Tensor, Tensor]:
    """Aggregated NCC per plane (n_planes, h, w) in [-1, 1] and the reference windows' std (1, 1, h, w)."""
    h, w = gray.shape[1:]
    k = cfg.window
    n_planes = depths.numel()
    A, bvec = warps
    # Reference window statistics, fixed for all planes.
    I = gray[r][None, None]  # noqa: E741  (1, 1, h, w)
    mu_I = _box(I, k)
    sigma_I = (_box(I * I, k) - mu_I**2).clamp_min(0).sqrt()
    S = len(srcs)
    # Sources carry a second channel that is 1 where a whole window fits inside the image: sampling it
    # with zero padding tells, for free, where a warped window is (almost) entirely valid.
    inner = torch.zeros(h, w)
    inner[k // 2 : h - k // 2, k // 2 : w - k // 2] = 1.0
    src = torch.stack([gray[srcs], inner.expand(S, h, w)], 1)  # (S, 2, h, w)
    top_k = min(cfg.top_k, S)

    scores = torch.empty(n_planes, h, w)
    for c0 in range(0, n_planes, cfg.chunk_planes):
        d = depths[c0 : c0 + cfg.chunk_planes]
        C = d.numel()
        hom = A * d[None, :, None, None, None] + bvec  # (S, C, 3, h, w) homogeneous grid coordinates
        z = hom[:, :, 2:].clamp_min(1e-6)  # behind the source camera -> far outside the grid
        grid = (hom[:, :, :2] / z).permute(0, 1, 3, 4, 2).reshape(S, C * h, w, 2)
        warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        warped = warped.reshape(S, 2, C, h, w)
        J = warped[:, 0].reshape(S * C, 1, h, w)
        stats = _box(torch.cat([J, J * J, J * I], 1), k)  # E[J], E[J^2], E[JI] per window
        mu_J = stats[:, 0:1]
        var_J = torch.addcmul(stats[:, 1:2], mu_J, mu_J, value=-1.0).clamp_min_(0)
        cov = torch.addcmul(stats[:, 2:3], mu_J, mu_I, value=-1.0)
        ncc = cov / (var_J.sqrt_().mul_(sigma_I).add_(1e-4))
        ncc = ncc.reshape(S, C, h, w)
        # Sources that cannot see a window (outside their frame) are missing, not evidence against it: the
        # mean runs over the valid ones among the best top_k (-2 sorts invalid ones last).
        valid = warped[:, 1] > 0.999
        ncc = torch.where(valid, ncc, -2.0)
        best = ncc.topk(top_k, dim=0).values if top_k < S else ncc
        n_valid = (best > -1.5).sum(0)
        agg = torch.where(best > -1.5, best, 0.0).sum(0) / n_valid.clamp_min(1)
        agg = torch.where(n_valid > 0, agg, -1.0)
        scores[c0 : c0 + C] = agg
    scores.clamp_(-1.0, 1.0)
    return scores, sigma_I


def _winner(scores: Tensor, inv_d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Winner-take-all over the planes: (depth (h, w), 0 where the winner is the first or last plane,
    best score (h, w), best plane index (h, w)).

    The depth is refined to sub-plane precision by a parabola through the scores at best-1, best,
    best+1 (uniform in inverse depth).
    """
    n_planes = scores.shape[0]
    best_score, best = scores.max(0)  # (h, w)
    lo = (best - 1).clamp_min(0)
    hi = (best + 1).clamp_max(n_planes - 1)
    s_lo = scores.gather(0, lo[None])[0]
    s_hi = scores.gather(0, hi[None])[0]
    denom = s_lo - 2 * best_score + s_hi
    in_range = (best > 0) & (best < n_planes - 1)
    peaked = in_range & (denom < -1e-6)
    offset = torch.where(peaked, 0.5 * (s_lo - s_hi) / denom.clamp_max(-1e-6), torch.zeros_like(denom))
    offset = offset.clamp(-0.5, 0.5)
    step = (inv_d[1] - inv_d[0]).float() if n_planes > 1 else torch.tensor(0.0)
    inv_best = inv_d.float()[best] + offset * step
    depth = 1.0 / inv_best.clamp_min(1e-12)
    # A winner at the first or last plane is a surface outside the swept range: not a measurement.
    depth = torch.where(in_range, depth, torch.zeros_like(depth))
    return depth, best_score, best


def _uniqueness(scores: Tensor, best: Tensor, best_score: Tensor, cfg: DenseConfig) -> Tensor:
    """Ratio (h, w) of the best cost to the best cost further than ``cfg.uniqueness_planes`` planes away."""
    idx = torch.arange(scores.shape[0])[:, None, None]
    far_from_best = (idx - best[None]).abs() > cfg.uniqueness_planes
    second = torch.where(far_from_best, scores, torch.full_like(scores, -1.0)).max(0).values
    return (1.0 - second) / (1.0 - best_score).clamp_min(1e-3)


def _sweep(
    gray: Tensor, cams: Cameras, r: int, srcs: list[int], near: float, far: float, cfg: DenseConfig
) -> _Sweep:
    """Plane-sweep NCC stereo of view ``r`` against ``srcs`` on grey images (N, h, w)."""
    h, w = gray.shape[1:]
    n_planes = cfg.n_planes or _auto_planes(cams, r, srcs, near, far, cfg)
    inv_d = torch.linspace(1.0 / near, 1.0 / far, n_planes, dtype=torch.float64)  # near -> far
    depths = (1.0 / inv_d).float()
    scores, sigma_I = _plane_scores(gray, r, srcs, depths, _plane_warps(cams, r, srcs, h, w), cfg)
    if cfg.aggregate_window > 1:
        scores = _box(scores[:, None], cfg.aggregate_window)[:, 0]
    depth, best_score, best = _winner(scores, inv_d)
    ratio = _uniqueness(scores, best, best_score, cfg)
    # Textureless reference windows: NCC is noise there.
    texture = sigma_I[0, 0] >= cfg.min_texture_std
    keep = texture & (best_score >= cfg.ncc_min) & (depth > 0)
    depth = torch.where(keep, depth, torch.zeros_like(depth))
    return _Sweep(depth=depth, score=best_score, ratio=ratio, n_planes=n_planes)
