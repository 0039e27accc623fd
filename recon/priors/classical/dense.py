"""Dense multi-view stereo for known cameras: per-view depth, world point maps and a confidence per pixel.

The classical prior's second half (the first is sparse SfM, which gives the cameras). For every
reference view:

1. **Plane sweep.** Fronto-parallel planes of the reference camera, uniform in inverse depth between the
   view's (near, far) range. For each plane the source views are warped onto the reference image with the
   plane-induced mapping ``p_s ~ K_s (R_rs d K_r^-1 p_r + t_rs)`` (one ``grid_sample`` per plane chunk).
2. **Photometric cost.** Windowed zero-mean NCC between the reference and each warped source, with the
   window means (E[J], E[J^2], E[IJ]) computed by box filters on the warped stack. Windows whose centre
   lands closer than half a window to the source image border (or behind the camera) are missing.
3. **Aggregation over views.** Per pixel and plane, the mean of the best ``top_k`` source scores among
   the sources that see the window: a view that is occluded at a pixel does not drag the score down as
   long as ``top_k`` others see it, and one whose frame does not cover the pixel is left out (counting
   it as -1 instead cost a fifth of the kept pixels on 3-view scenes). A small box filter over the score
   volume adds a little spatial support.
   (``top_k=1`` is more complete on the synthetic scenes, whose wide baselines and grazing walls defeat
   fronto-parallel windows in the farther view, but it is markedly sparser on real LLFF views, where
   averaging two views suppresses chance matches in foliage; hence the default of 2.)
4. **Winner-take-all** over the planes, refined to sub-plane precision by a parabola through the best
   score and its two neighbours (in inverse depth, where the planes are uniform). The ratio of the
   best to the second-best *separate* minimum of the cost (outside a few planes of the winner) measures
   how unique the match is.
5. **Geometric consistency.** Every depth is reprojected into each of its source views, the source's own
   depth is read there (nearest pixel, so depths across an edge are never blended), lifted back and
   reprojected into the reference. A view agrees when the forward-backward pixel error and the relative
   depth difference are both under tolerance; pixels with fewer than ``min_consistent`` agreeing views
   are dropped.
6. **Confidence** in [0, 1]: the geometric mean of a photometric term (NCC mapped from ``ncc_min`` ->
   0 to ``ncc_good`` -> 1), a uniqueness term (cost ratio mapped from 1 -> 0 to ``ratio_good`` -> 1) and
   a multi-view term (agreeing views / ``min(n_sources, consistent_target)``). Pixels that fail any hard
   test (NCC below ``ncc_min``, textureless window, not consistent, depth outside the swept range) get
   exactly 0 and depth 0.

Everything runs at a reduced resolution (long side ``max_side``; cameras scaled with
:meth:`recon.cameras.Cameras.scaled`) on plain torch, vectorised over chunks of planes, so the default
configuration of a 3-view, 504x378 scene (LLFF fern, working at 320x240, 67-84 planes) takes about 8 s of
CPU time on two cores. Slanted plane families (Gallup et al.'s multi-direction sweeps) were tried: on the
synthetic rooms they raised the fraction of correct winners by only 2 points at 7x the cost.

Conventions (``shared/CONVENTIONS.md``): OpenCV cameras, ``w2c`` extrinsics, pixel centres at
``(j + 0.5, i + 0.5)``; depth is the camera-frame z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recon.cameras import Cameras, pixel_centers, project, unproject_depth
from recon.errors import ReconError
from recon.priors.classical.config import DenseConfig

Tensor = torch.Tensor

# ITU-R BT.601 luma weights: NCC runs on one grey channel (colour adds little to NCC and costs 3x).
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class DenseResult:
    """Dense geometry at the working resolution (h, w) = round((H, W) * scale).

    Attributes:
        pointmaps: (N, h, w, 3) float32 world points; (0, 0, 0) where ``conf == 0``.
        conf: (N, h, w) float32 confidence in [0, 1]; 0 means "no point here".
        depth: (N, h, w) float32 camera-frame z-depth; 0 where ``conf == 0``.
        colors: (N, h, w, 3) float32 image colours in [0, 1] at the working resolution.
        cameras: the input cameras scaled to (w, h) (same w2c).
        neighbors: the source views used for each reference view.
        depth_range: (N, 2) (near, far) that was swept per view.
        info: diagnostics (plane counts, seconds, kept fractions).
    """

    pointmaps: Tensor
    conf: Tensor
    depth: Tensor
    colors: Tensor
    cameras: Cameras
    neighbors: list[list[int]]
    depth_range: Tensor
    info: dict


# --------------------------------------------------------------------------------------------------
# Geometry: view selection and depth ranges
# --------------------------------------------------------------------------------------------------


def _optical_axes(w2c: Tensor) -> Tensor:
    """(N, 3) world directions of the cameras' +z axes (third row of R)."""
    return w2c[:, 2, :3]


def estimate_depth_range(cameras: Cameras, overlap_disparity: float = 0.25) -> Tensor:
    """A robust default (near, far) per view (N, 2) from camera geometry alone, for when no points exist.

    - **Converging cameras** (object-centric captures): the point closest, in least squares, to all
      optical axes is taken as the scene centre; with ``z_c`` its depth in a view, the range is
      ``[z_c / 3, 3 z_c]``.
    - **Near-parallel axes** (forward-facing captures, where that point is ill-defined): ``far`` is
      effectively infinite (1e3 x the baseline scale) and ``near`` is the depth at which the view and its
      nearest camera would see a point ``overlap_disparity`` of an image width apart,
      ``near = f * b / (overlap_disparity * W)``: anything nearer could barely be matched anyway.

    Both are only a fallback: sparse SfM points give far tighter ranges (fewer planes, fewer outliers).
    """
    C = cameras.centers.double()
    a = _optical_axes(cameras.w2c.double())
    n = len(cameras)
    if n < 2:
        raise ReconError("dense stereo needs at least 2 views")
    P = torch.eye(3, dtype=torch.float64) - a[:, :, None] * a[:, None, :]  # projectors orthogonal to axes
    A = P.sum(0)
    b = (P @ C[:, :, None]).sum(0)[:, 0]
    evals = torch.linalg.eigvalsh(A)
    ranges = torch.empty(n, 2, dtype=torch.float64)
    converging = False
    # Axes spread by > ~10 degrees make A well conditioned (its smallest eigenvalue ~ n sin^2 of the spread).
    if evals[0] > n * math.sin(math.radians(10.0)) ** 2:
        X = torch.linalg.solve(A, b)
        z_c = ((X[None] - C) * a).sum(-1)
        if bool((z_c > 0).all()):
            ranges[:, 0], ranges[:, 1] = z_c / 3.0, z_c * 3.0
            converging = True
    if not converging:
        dist = torch.cdist(C, C) + torch.eye(n, dtype=torch.float64) * 1e30
        base = dist.min(1).values.clamp_min(1e-9)
        f = cameras.K[:, 0, 0].double()
        W = cameras.sizes[:, 0].double()
        ranges[:, 0] = f * base / (overlap_disparity * W)
        ranges[:, 1] = base.median() * 1e3
    return ranges.float()


def select_neighbors(
    cameras: Cameras, depth_range: Tensor, n_neighbors: int, angle_deg: float = 5.0
) -> list[list[int]]:
    """Source views per reference view, ranked by the triangulation angle they give at the scene.

    For view r the scene point is on its optical axis at the geometric mean of its depth range. A
    candidate s must see that point in front of it and inside its image, with optical axes less than 90
    degrees apart; its score is MVSNet's ``exp(-(theta - angle)^2 / (2 sigma^2))`` of the triangulation
    angle ``theta``, with sigma = 1 degree below ``angle`` (tiny baselines give poor depth) and 10 above
    (wide baselines change appearance). Views that fail the visibility test are used only when fewer
    than ``n_neighbors`` pass, closest camera centre first.
    """
    n = len(cameras)
    C = cameras.centers.double()
    axes = _optical_axes(cameras.w2c.double())
    z_mid = (depth_range[:, 0].double() * depth_range[:, 1].double()).sqrt()
    X = C + axes * z_mid[:, None]  # (N, 3) one scene point per reference view
    out: list[list[int]] = []
    for r in range(n):
        uv, z = project(X[r][None].expand(n, 3)[:, None], cameras.K.double(), cameras.w2c.double())
        uv, z = uv[:, 0], z[:, 0]
        W, H = cameras.sizes[:, 0].double(), cameras.sizes[:, 1].double()
        inside = (z > 0) & (uv[:, 0] > 0) & (uv[:, 0] < W) & (uv[:, 1] > 0) & (uv[:, 1] < H)
        inside &= (axes @ axes[r]) > 0
        v_r = torch.nn.functional.normalize(X[r] - C[r], dim=-1)
        v_s = torch.nn.functional.normalize(X[r][None] - C, dim=-1)
        theta = torch.rad2deg(torch.arccos((v_s @ v_r).clamp(-1, 1)))
        sigma = torch.where(theta < angle_deg, 1.0, 10.0)
        score = torch.exp(-((theta - angle_deg) ** 2) / (2 * sigma**2))
        dist = (C - C[r]).norm(dim=-1)
        # rank: visible views by score, then the rest by distance; never the view itself
        key = torch.where(inside, 2.0 + score, 1.0 / (1.0 + dist))
        key[r] = -1.0
        order = torch.argsort(key, descending=True)
        out.append([int(i) for i in order[: min(n_neighbors, n - 1)]])
    return out


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


def _sweep(
    gray: Tensor, cams: Cameras, r: int, srcs: list[int], near: float, far: float, cfg: DenseConfig
) -> _Sweep:
    """Plane-sweep NCC stereo of view ``r`` against ``srcs`` on grey images (N, h, w)."""
    h, w = gray.shape[1:]
    k = cfg.window
    n_planes = cfg.n_planes or _auto_planes(cams, r, srcs, near, far, cfg)
    inv_d = torch.linspace(1.0 / near, 1.0 / far, n_planes, dtype=torch.float64)  # near -> far
    depths = (1.0 / inv_d).float()

    # Reference window statistics, fixed for all planes.
    I = gray[r][None, None]  # noqa: E741  (1, 1, h, w)
    mu_I = _box(I, k)
    sigma_I = (_box(I * I, k) - mu_I**2).clamp_min(0).sqrt()

    # Plane-induced warp: p_s ~ d * (K_s R_rs K_r^-1 p_r) + K_s t_rs. Both terms are folded with the
    # pixel -> grid_sample normalisation (x * 2 / W - 1, which commutes with the perspective division
    # as a row operation on the homogeneous coordinates), so per plane one multiply-add and one divide.
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
    S = len(srcs)
    A = torch.stack(A_maps)[:, None]  # (S, 1, 3, h, w)
    bvec = torch.stack(b_vecs)[:, None, :, None, None]  # (S, 1, 3, 1, 1)
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

    if cfg.aggregate_window > 1:
        scores = _box(scores[:, None], cfg.aggregate_window)[:, 0]

    best_score, best = scores.max(0)  # (h, w)
    # Sub-plane refinement: parabola through the scores at best-1, best, best+1 (uniform in inverse depth).
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

    # Uniqueness: best cost vs the best cost further than a few planes away.
    idx = torch.arange(n_planes)[:, None, None]
    far_from_best = (idx - best[None]).abs() > cfg.uniqueness_planes
    second = torch.where(far_from_best, scores, torch.full_like(scores, -1.0)).max(0).values
    ratio = (1.0 - second) / (1.0 - best_score).clamp_min(1e-3)

    # Textureless reference windows: NCC is noise there.
    texture = sigma_I[0, 0] >= cfg.min_texture_std
    keep = texture & (best_score >= cfg.ncc_min) & (depth > 0)
    depth = torch.where(keep, depth, torch.zeros_like(depth))
    return _Sweep(depth=depth, score=best_score, ratio=ratio, n_planes=n_planes)


# --------------------------------------------------------------------------------------------------
# Geometric consistency
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def working_size(W: int, H: int, max_side: int) -> float:
    """Scale factor to the working resolution: long side at most ``max_side``, never upscaling."""
    return min(1.0, max_side / max(W, H))


@torch.no_grad()
def dense_pointmaps(
    images: Tensor,
    cameras: Cameras,
    cfg: DenseConfig | None = None,
    depth_range: Tensor | None = None,
    neighbors: list[list[int]] | None = None,
) -> DenseResult:
    """Dense per-view depth, world point maps and confidence by multi-view plane-sweep stereo.

    Args:
        images: (N, H, W, 3) float in [0, 1]; ``cameras.sizes`` must be (W, H) for every view.
        cameras: N cameras (K for the images' size, w2c) in the project's conventions.
        cfg: options; defaults to ``DenseConfig()``.
        depth_range: (N, 2) per-view (near, far) z-depths to sweep (e.g. from sparse SfM points), or None
            for :func:`estimate_depth_range`'s camera-geometry default.
        neighbors: per reference view, the indices of its source views, best first (the first
            ``cfg.n_neighbors`` are used); None, or an empty list for a view, selects them with
            :func:`select_neighbors`.

    Returns:
        :class:`DenseResult` at the working resolution (long side ``cfg.max_side``, same aspect ratio).

    Raises:
        ReconError: for fewer than 2 views, mismatched shapes or invalid ranges/neighbours.
    """
    import time

    t0 = time.perf_counter()
    cfg = cfg or DenseConfig()
    cfg.validate()
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ReconError(f"dense stereo needs images of shape (N, H, W, 3), got {tuple(images.shape)}")
    n, H, W = images.shape[:3]
    if n < 2:
        raise ReconError(f"dense stereo needs at least 2 views with cameras, got {n}")
    if len(cameras) != n:
        raise ReconError(f"dense stereo got {n} images but {len(cameras)} cameras")
    if not bool((cameras.sizes == torch.tensor([W, H])).all()):
        raise ReconError(f"camera sizes {cameras.sizes.tolist()} do not match the images' (W, H) = {(W, H)}")

    factor = working_size(W, H, cfg.max_side)
    cams = cameras.scaled(factor) if factor < 1.0 else cameras.clone()
    cams = Cameras(cams.K.float(), cams.w2c.float(), cams.sizes, cams.names)
    w, h = int(cams.sizes[0, 0]), int(cams.sizes[0, 1])
    colors = _resize(images.float(), h, w)
    gray = _to_gray(colors)

    if depth_range is None:
        depth_range = estimate_depth_range(cams)
    depth_range = torch.as_tensor(depth_range, dtype=torch.float32)
    if depth_range.shape != (n, 2) or not bool(torch.isfinite(depth_range).all()):
        raise ReconError(f"depth_range must be a finite (N, 2) = ({n}, 2) tensor of (near, far)")
    if not bool(((depth_range[:, 0] > 0) & (depth_range[:, 1] > depth_range[:, 0])).all()):
        raise ReconError("depth_range needs 0 < near < far for every view")

    by_geometry = select_neighbors(cams, depth_range, cfg.n_neighbors, cfg.neighbor_angle_deg)
    if neighbors is None:
        neighbors = by_geometry
    if len(neighbors) != n:
        raise ReconError(f"neighbors must list source views for each of the {n} views, got {len(neighbors)}")
    srcs_all: list[list[int]] = []
    for r, nb in enumerate(neighbors):
        srcs = [int(s) for s in nb if int(s) != r]
        if any(not 0 <= s < n for s in srcs):
            raise ReconError(f"neighbors[{r}] has a view index outside 0..{n - 1}: {list(nb)}")
        # A view that shares no sparse points with any other (an empty list) still gets sources by geometry.
        srcs = list(dict.fromkeys(srcs))[: cfg.n_neighbors] or by_geometry[r]
        srcs_all.append(srcs)

    sweeps = []
    for r in range(n):
        near, far = float(depth_range[r, 0]), float(depth_range[r, 1])
        sweeps.append(_sweep(gray, cams, r, srcs_all[r], near, far, cfg))
    t_sweep = time.perf_counter() - t0

    depths = torch.stack([s.depth for s in sweeps])
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
    depth_out = torch.where(conf > 0, depths, torch.zeros_like(depths))
    c2w = cams.c2w
    pointmaps = torch.stack([unproject_depth(depth_out[r], cams.K[r], c2w[r]) for r in range(n)])
    pointmaps = torch.where((conf > 0)[..., None], pointmaps, torch.zeros_like(pointmaps))

    info = {
        "n_planes": [s.n_planes for s in sweeps],
        "size": [w, h],
        "seconds_sweep": round(t_sweep, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "kept_fraction": [round(float((conf[r] > 0).float().mean()), 4) for r in range(n)],
    }
    return DenseResult(
        pointmaps=pointmaps,
        conf=conf,
        depth=depth_out,
        colors=colors,
        cameras=cams,
        neighbors=srcs_all,
        depth_range=depth_range,
        info=info,
    )
