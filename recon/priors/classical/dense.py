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

Steps 1-4 live in :mod:`recon.priors.classical.plane_sweep`, steps 5-6 in
:mod:`recon.priors.classical.consistency`; this module picks the source views and depth ranges and
drives both (:func:`dense_pointmaps`).

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
import time
from dataclasses import dataclass

import torch

from recon.cameras import Cameras, project, unproject_depth
from recon.errors import ReconError
from recon.priors.classical.config import DenseConfig
from recon.priors.classical.consistency import confidence
from recon.priors.classical.plane_sweep import _resize, _sweep, _to_gray

Tensor = torch.Tensor


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
# Public entry point
# --------------------------------------------------------------------------------------------------


def working_size(W: int, H: int, max_side: int) -> float:
    """Scale factor to the working resolution: long side at most ``max_side``, never upscaling."""
    return min(1.0, max_side / max(W, H))


def _check_inputs(images: Tensor, cameras: Cameras) -> tuple[int, int, int]:
    """(N, H, W) of the images, after checking them against the cameras."""
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ReconError(f"dense stereo needs images of shape (N, H, W, 3), got {tuple(images.shape)}")
    n, H, W = images.shape[:3]
    if n < 2:
        raise ReconError(f"dense stereo needs at least 2 views with cameras, got {n}")
    if len(cameras) != n:
        raise ReconError(f"dense stereo got {n} images but {len(cameras)} cameras")
    if not bool((cameras.sizes == torch.tensor([W, H])).all()):
        raise ReconError(f"camera sizes {cameras.sizes.tolist()} do not match the images' (W, H) = {(W, H)}")
    return n, H, W


def _check_depth_range(depth_range: Tensor | None, cams: Cameras, n: int) -> Tensor:
    """The (N, 2) float32 (near, far) to sweep: the given one, checked, or :func:`estimate_depth_range`."""
    if depth_range is None:
        depth_range = estimate_depth_range(cams)
    depth_range = torch.as_tensor(depth_range, dtype=torch.float32)
    if depth_range.shape != (n, 2) or not bool(torch.isfinite(depth_range).all()):
        raise ReconError(f"depth_range must be a finite (N, 2) = ({n}, 2) tensor of (near, far)")
    if not bool(((depth_range[:, 0] > 0) & (depth_range[:, 1] > depth_range[:, 0])).all()):
        raise ReconError("depth_range needs 0 < near < far for every view")
    return depth_range


def _source_views(
    neighbors: list[list[int]] | None, by_geometry: list[list[int]], n: int, cfg: DenseConfig
) -> list[list[int]]:
    """The source views of each reference view: ``neighbors`` (checked, deduplicated, at most
    ``cfg.n_neighbors``) where given and non-empty, else ``by_geometry``."""
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
    return srcs_all


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
    t0 = time.perf_counter()
    cfg = cfg or DenseConfig()
    cfg.validate()
    n, H, W = _check_inputs(images, cameras)

    factor = working_size(W, H, cfg.max_side)
    cams = cameras.scaled(factor) if factor < 1.0 else cameras.clone()
    cams = Cameras(cams.K.float(), cams.w2c.float(), cams.sizes, cams.names)
    w, h = int(cams.sizes[0, 0]), int(cams.sizes[0, 1])
    colors = _resize(images.float(), h, w)
    gray = _to_gray(colors)

    depth_range = _check_depth_range(depth_range, cams, n)
    by_geometry = select_neighbors(cams, depth_range, cfg.n_neighbors, cfg.neighbor_angle_deg)
    srcs_all = _source_views(neighbors, by_geometry, n, cfg)

    sweeps = []
    for r in range(n):
        near, far = float(depth_range[r, 0]), float(depth_range[r, 1])
        sweeps.append(_sweep(gray, cams, r, srcs_all[r], near, far, cfg))
    t_sweep = time.perf_counter() - t0

    depths = torch.stack([s.depth for s in sweeps])
    conf = confidence(sweeps, depths, cams, srcs_all, cfg)
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
