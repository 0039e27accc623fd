"""Pure-PyTorch reference rasteriser for 3D Gaussians, in two stages (the interface every backend shares).

Semantics follow gsplat 1.5.3's "classic" 3DGS rasteriser (``shared/CONVENTIONS.md``):

Stage 1, :func:`project_gaussians` (EWA splatting, pinhole camera; in :mod:`recon.render.torch_project`):
  * camera-frame mean ``m_c = R m + t`` from ``w2c``; ``depth = m_c.z``;
  * 3D covariance ``R_q S S^T R_q^T`` (quaternion wxyz, normalised inside) rotated into the camera frame;
  * 2D covariance ``J Sigma_c J^T`` with the perspective Jacobian ``J`` evaluated at ``m_c`` whose x/y are
    clamped to 1.3x the half field of view (as gsplat does, to keep huge off-screen splats bounded);
  * a blur ``eps2d * I`` added to the 2D covariance (no compensation: classic mode);
  * conic = upper triangle ``(a, b, c)`` of the inverse blurred covariance, so that the Mahalanobis
    power at pixel offset ``d = mean2d - pixel`` is ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy``;
  * per-axis integer radii ``ceil(3.33 sqrt(Sigma2d_xx))``, ``ceil(3.33 sqrt(Sigma2d_yy))``; radii are 0
    (the Gaussian is culled) when ``depth <= near_plane``, ``depth >= far_plane``, the blurred determinant
    is not positive, or the radius box lies entirely off the image.  3.33 sigma is where a Gaussian with
    opacity 1 falls below the 1/255 alpha threshold, so the box never cuts a visible contribution; it only
    decides which tiles a Gaussian is tested against.

Stage 2, :func:`rasterize_to_pixels` (front-to-back alpha compositing):
  * pixel (row i, col j) is sampled at its centre ``(j + 0.5, i + 0.5)``;
  * ``alpha = min(ALPHA_MAX, opacity * exp(-sigma))``; a Gaussian is skipped for a pixel when
    ``sigma < 0`` or ``alpha < ALPHA_MIN``;
  * Gaussians are composited in increasing depth order; a pixel stops *before* the Gaussian whose
    contribution would bring the transmittance to ``<= T_MIN`` (that Gaussian is not added);
  * outputs ``sum w_i c_i``, ``sum w_i`` (alpha) and ``sum w_i z_i`` (accumulated depth) with weights
    ``w_i = alpha_i T_i``.  The expected depth is ``sum w_i z_i / sum w_i`` (done by the caller).

The one documented difference from gsplat 1.5.3: gsplat clamps alpha at 0.999, the project (CONVENTIONS)
at ``ALPHA_MAX = 0.99``; results differ only where ``opacity * exp(-sigma) > 0.99``.

Culled Gaussians (``radii == 0`` on either axis) never reach a pixel; their ``means2d``/``conics`` are
finite but otherwise unspecified (exactly as in gsplat's CUDA kernels, which leave them unwritten).

The tile-bucketed stage 2 has an analytic backward (it keeps the forward's per-tile terms when they fit in
``SAVE_TERMS_BYTES``, else recomputes them like gsplat's kernels) so that training at 128 px with ~10-20k
Gaussians fits in memory and time on a CPU; the all-pairs :func:`rasterize_dense` is the autograd oracle
that the tests compare it with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from recon.render.torch_project import RADIUS_SIGMAS, project_gaussians

__all__ = [
    "ALPHA_MAX",
    "ALPHA_MIN",
    "CHUNK_ELEMENTS",
    "DEFAULT_TILE_SIZE",
    "RADIUS_SIGMAS",
    "SAVE_TERMS_BYTES",
    "T_MIN",
    "project_gaussians",
    "rasterize_dense",
    "rasterize_to_pixels",
]

Tensor = torch.Tensor

#: Upper clamp of a single Gaussian's alpha (CONVENTIONS; gsplat 1.5.3 uses 0.999).
ALPHA_MAX = 0.99
#: A Gaussian contributes to a pixel only when its alpha is at least this (gsplat's ALPHA_THRESHOLD).
ALPHA_MIN = 1.0 / 255.0
#: A pixel stops before the Gaussian that would bring its transmittance to <= T_MIN.
T_MIN = 1e-4
#: Elements (tiles x pixels x Gaussians) processed at once by the tile rasteriser.  Small enough that a
#: chunk's temporaries stay in cache (measured fastest on CPU), and bounds peak memory.
CHUNK_ELEMENTS = 1 << 16
#: The forward keeps its per-chunk terms for the backward (instead of recomputing them, ~30% faster) when
#: they take at most this many bytes (8 tensors of tiles x pixels x Gaussians).
SAVE_TERMS_BYTES = 256 << 20
#: Tile size the torch backend uses when the caller leaves it open: the work is ~(2 radius + tile)^2
#: pixel-Gaussian pairs per Gaussian, so 8 px tiles do 2-3x less work than gsplat's 16 at 128 px.
DEFAULT_TILE_SIZE = 8


# --------------------------------------------------------------------------------------------------
# Stage 2 building blocks shared by the tile and the dense rasteriser
# --------------------------------------------------------------------------------------------------


def _mask(compare, x: Tensor, threshold: float) -> Tensor:
    """``compare(x, threshold)`` as a float 0/1 tensor (constant for autograd).

    Float masks applied by multiplication are an order of magnitude faster on CPU than bool masks with
    ``torch.where`` at these sizes, and give the same values and gradients for finite inputs.
    """
    return compare(x.detach(), threshold, out=torch.empty_like(x, requires_grad=False))


def _gaussian_alpha(dx: Tensor, dy: Tensor, conic: tuple[Tensor, Tensor, Tensor], opacity: Tensor):
    """Per (pixel, Gaussian) alpha from offsets ``d = mean2d - pixel`` (all arguments broadcast).

    Returns (alpha after the clamp and the skip rule, ``exp(-sigma)``, 0/1 mask where alpha depends
    smoothly on its inputs: not skipped and not clamped).
    """
    a, b, c = conic
    # sigma = 0.5 a dx^2 + b dx dy + 0.5 c dy^2, written with fewer full-size temporaries.
    sigma = torch.addcmul(dx * torch.addcmul(b * dy, 0.5 * a, dx), 0.5 * c * dy, dy)
    gexp = torch.exp(-sigma)
    raw = opacity * gexp
    alpha = raw.clamp_max(ALPHA_MAX)
    keep = _mask(torch.ge, sigma, 0.0) * _mask(torch.ge, alpha, ALPHA_MIN)
    return alpha * keep, gexp, keep * _mask(torch.le, raw, ALPHA_MAX)


def _composite_weights(alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Blending weights along the last (depth-sorted) axis with gsplat's early-stop rule.

    Returns (weights ``alpha_i T_i`` of the Gaussians actually added, transmittance ``T_i`` before each,
    0/1 mask of added Gaussians).  Skipped Gaussians have alpha 0: a factor of exactly 1 in the product.
    """
    t_after = torch.cumprod(1.0 - alpha, dim=-1)
    live = _mask(torch.gt, t_after, T_MIN)  # non-increasing along the axis: once stopped, stays stopped
    t_before = torch.cat([torch.ones_like(t_after[..., :1]), t_after[..., :-1]], dim=-1)
    return alpha * t_before * live, t_before, live


def _depth_order(depths: Tensor, valid: Tensor) -> Tensor:
    """Flat indices into ``depths.flatten()`` of the valid entries, stably sorted by depth.

    The one ordering rule both rasterisers use (ties keep index order), so they agree exactly.
    """
    cand = valid.flatten().nonzero().squeeze(1)
    order = torch.argsort(depths.flatten()[cand], stable=True)
    return cand[order]


def _broadcast_inputs(means2d, conics, opacities, colors, depths):
    C, N = depths.shape
    if opacities.dim() == 1:
        opacities = opacities.expand(C, N)
    if colors.dim() == 2:
        colors = colors.expand(C, N, colors.shape[-1])
    if means2d.shape != (C, N, 2) or conics.shape != (C, N, 3) or opacities.shape != (C, N):
        raise ValueError(
            f"rasterize_to_pixels: inconsistent shapes means2d {tuple(means2d.shape)}, conics "
            f"{tuple(conics.shape)}, opacities {tuple(opacities.shape)}, depths {tuple(depths.shape)}"
        )
    if colors.shape[:2] != (C, N):
        raise ValueError(f"rasterize_to_pixels: colors {tuple(colors.shape)} do not match depths {(C, N)}")
    return opacities, colors


# --------------------------------------------------------------------------------------------------
# Stage 2: tile-bucketed rasteriser
# --------------------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """A group of tiles rasterised together, each padded to ``M`` Gaussians.

    tiles: (nt,) global tile ids (camera * tiles_per_image + tile); gauss: (nt, M) flat Gaussian ids
    (camera * N + gaussian) in depth order; valid: (nt, M) False on padding.
    """

    tiles: Tensor
    gauss: Tensor
    valid: Tensor


@dataclass
class _TileBins:
    tile_size: int
    tiles_x: int
    tiles_y: int
    chunks: list[_Chunk]


@torch.no_grad()
def _bin_gaussians(
    means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int, budget: int
) -> _TileBins:
    """Assign Gaussians to the tiles their radius box touches (gsplat's rule) and group tiles in chunks."""
    C, N = depths.shape
    device = means2d.device
    tiles_x = math.ceil(width / tile_size)
    tiles_y = math.ceil(height / tile_size)
    n_tiles = tiles_x * tiles_y
    pix = tile_size * tile_size

    cand = _depth_order(depths, (radii > 0).all(-1))  # flat ids, depth-sorted
    m = means2d.reshape(C * N, 2)[cand].to(torch.float64)
    r = radii.reshape(C * N, 2)[cand].to(torch.float64)
    lo = torch.floor((m - r) / tile_size).long()
    hi = torch.ceil((m + r) / tile_size).long()
    bounds = torch.tensor([tiles_x, tiles_y], device=device)
    lo = torch.minimum(lo.clamp_min(0), bounds)
    hi = torch.minimum(hi.clamp_min(0), bounds)
    extent = (hi - lo).clamp_min(0)
    counts = extent.prod(-1)
    total = int(counts.sum())
    if total == 0:
        return _TileBins(tile_size, tiles_x, tiles_y, [])

    # One row per (Gaussian, tile) intersection, generated in depth order.
    rep = torch.repeat_interleave(torch.arange(len(cand), device=device), counts)
    k = torch.arange(total, device=device) - (torch.cumsum(counts, 0) - counts)[rep]
    bw = extent[rep, 0]
    tx = lo[rep, 0] + k % bw
    ty = lo[rep, 1] + k // bw
    cam = cand[rep] // N
    tile = cam * n_tiles + ty * tiles_x + tx
    tile, perm = torch.sort(tile, stable=True)  # stable: depth order survives within each tile
    gauss = cand[rep][perm]

    per_tile = torch.bincount(tile, minlength=C * n_tiles)
    offsets = torch.cumsum(per_tile, 0) - per_tile
    busy = per_tile.nonzero().squeeze(1)
    busy = busy[torch.argsort(per_tile[busy], descending=True, stable=True)]
    busy_counts = per_tile[busy].tolist()

    # Greedy chunks of tiles with similar load (sorted by load, so the first tile sets the padding).
    chunks = []
    i = 0
    while i < len(busy_counts):
        M = busy_counts[i]
        nt = max(1, budget // (pix * M))
        tiles = busy[i : i + nt]
        slot = torch.arange(M, device=device)
        valid = slot[None, :] < per_tile[tiles][:, None]
        idx = (offsets[tiles][:, None] + slot[None, :]).clamp_max(total - 1)
        chunks.append(_Chunk(tiles, gauss[idx], valid))
        i += nt
    return _TileBins(tile_size, tiles_x, tiles_y, chunks)


def _tile_pixel_centres(tiles: Tensor, bins: _TileBins, dtype) -> tuple[Tensor, Tensor]:
    """Pixel centres (nt, P) x and y of the tiles with global ids ``tiles`` (row-major inside a tile)."""
    ts = bins.tile_size
    local = tiles % (bins.tiles_x * bins.tiles_y)
    tx = (local % bins.tiles_x).to(dtype)
    ty = (local // bins.tiles_x).to(dtype)
    p = torch.arange(ts * ts, device=tiles.device)
    px = (p % ts).to(dtype) + 0.5
    py = (p // ts).to(dtype) + 0.5
    return tx[:, None] * ts + px[None, :], ty[:, None] * ts + py[None, :]


def _chunk_terms(chunk: _Chunk, bins: _TileBins, means2d, conics, opacities):
    """Per (tile, pixel, Gaussian) terms of one chunk, shapes (nt, P, M), shared by forward and backward.

    Returns dx, dy, the gathered conic (a, b, c) and opacity (each (nt, 1, M)), alpha, exp(-sigma), the
    smooth-alpha mask, weights, transmittance before each Gaussian and the mask of added Gaussians.
    """
    g = chunk.gauss
    m = means2d[g]  # (nt, M, 2)
    q = conics[g]  # (nt, M, 3)
    conic = (q[:, None, :, 0], q[:, None, :, 1], q[:, None, :, 2])
    opac = torch.where(chunk.valid, opacities[g], 0.0)[:, None, :]  # padding: opacity 0, never drawn
    px, py = _tile_pixel_centres(chunk.tiles, bins, means2d.dtype)
    dx = m[:, None, :, 0] - px[:, :, None]
    dy = m[:, None, :, 1] - py[:, :, None]
    alpha, gexp, smooth = _gaussian_alpha(dx, dy, conic, opac)
    weights, t_before, live = _composite_weights(alpha)
    return dx, dy, conic, opac, alpha, gexp, smooth, weights, t_before, live


class _TileRasterize(torch.autograd.Function):
    """Tile-bucketed compositing with an analytic backward (per-chunk terms kept or recomputed)."""

    @staticmethod
    def forward(
        ctx, means2d, conics, opacities, features, bins: _TileBins, n_tile_rows: int, keep_terms: bool
    ):
        # means2d (I, 2), conics (I, 3), opacities (I,), features (I, F): flattened over (camera, Gaussian).
        pix = bins.tile_size**2
        out = means2d.new_zeros(n_tile_rows, pix, features.shape[-1])
        acc = means2d.new_zeros(n_tile_rows, pix)
        kept = []
        for chunk in bins.chunks:
            terms = _chunk_terms(chunk, bins, means2d, conics, opacities)
            weights = terms[7]
            out[chunk.tiles] = torch.einsum("tpm,tmf->tpf", weights, features[chunk.gauss])
            acc[chunk.tiles] = weights.sum(-1)
            if keep_terms:
                kept.append(terms)
        ctx.save_for_backward(means2d, conics, opacities, features)
        ctx.bins = bins
        ctx.kept = kept
        return out, acc

    @staticmethod
    def backward(ctx, grad_out, grad_acc):
        means2d, conics, opacities, features = ctx.saved_tensors
        bins: _TileBins = ctx.bins
        g_means2d = torch.zeros_like(means2d)
        g_conics = torch.zeros_like(conics)
        g_opac = torch.zeros_like(opacities)
        g_feat = torch.zeros_like(features)
        for i, chunk in enumerate(bins.chunks):
            terms = ctx.kept[i] if ctx.kept else _chunk_terms(chunk, bins, means2d, conics, opacities)
            dx, dy, (a, b, c), opac, alpha, gexp, smooth, weights, t_before, live = terms
            gauss = chunk.gauss.flatten()
            feats = features[chunk.gauss]  # (nt, M, F)
            g_o = grad_out[chunk.tiles]  # (nt, P, F)
            g_a = grad_acc[chunk.tiles]  # (nt, P)
            g_feat.index_add_(0, gauss, torch.einsum("tpm,tpf->tmf", weights, g_o).flatten(0, 1))
            # d out / d alpha_k = T_k f_k - (sum_{j>k} w_j f_j) / (1 - alpha_k), contracted with the
            # incoming gradient (of the features and of alpha, which is a feature identically 1).
            g_dot = torch.baddbmm(g_a[:, :, None], g_o, feats.transpose(1, 2))  # (nt, P, M)
            s = weights * g_dot
            after = s.flip(-1).cumsum(-1).flip(-1) - s  # sum over the Gaussians behind, exact order
            g_alpha = t_before * g_dot - after / (1.0 - alpha)
            # Gradient reaches opacity * exp(-sigma) only where the Gaussian was added and alpha is
            # neither clamped nor skipped (those masks are piecewise constant).
            g_raw = g_alpha * (live * smooth) * gexp  # d loss / d opacity, per pixel
            g_opac.index_add_(0, gauss, g_raw.sum(1).flatten())
            # d raw / d sigma = -opacity * exp(-sigma); opacity is constant over the tile's pixels so it
            # multiplies the pixel sums afterwards.
            gx, gy = g_raw * dx, g_raw * dy
            sx, sy = gx.sum(1), gy.sum(1)
            sxx, sxy, syy = (gx * dx).sum(1), (gx * dy).sum(1), (gy * dy).sum(1)
            o, a, b, c = opac[:, 0], a[:, 0], b[:, 0], c[:, 0]
            gm = -o[..., None] * torch.stack([a * sx + b * sy, b * sx + c * sy], -1)
            gc = -o[..., None] * torch.stack([0.5 * sxx, sxy, 0.5 * syy], -1)
            g_means2d.index_add_(0, gauss, gm.flatten(0, 1))
            g_conics.index_add_(0, gauss, gc.flatten(0, 1))
        ctx.kept = []
        return g_means2d, g_conics, g_opac, g_feat, None, None, None


def _untile(x: Tensor, C: int, bins: _TileBins, width: int, height: int) -> Tensor:
    """(C * tiles, P, F) tile layout -> (C, H, W, F) image layout (cropping the partial border tiles)."""
    ts = bins.tile_size
    F = x.shape[-1]
    img = x.reshape(C, bins.tiles_y, bins.tiles_x, ts, ts, F).permute(0, 1, 3, 2, 4, 5)
    img = img.reshape(C, bins.tiles_y * ts, bins.tiles_x * ts, F)
    return img[:, :height, :width]


def rasterize_to_pixels(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    colors: Tensor,
    depths: Tensor,
    radii: Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite projected Gaussians into C images, front to back (tile-bucketed, vectorised).

    Args:
        means2d: (C, N, 2) projected means (pixels).
        conics: (C, N, 3) upper triangle of the inverse 2D covariance.
        opacities: (N,) or (C, N) opacities in [0, 1].
        colors: (C, N, D) (or (N, D)) per-Gaussian features.
        depths: (C, N) camera-frame depths (sort key and the depth channel).
        radii: (C, N, 2) int screen radii from stage 1 (0 = culled); only used to bin and cull.
        width, height: image size; tile_size: tile edge in pixels.

    Returns:
        render_colors (C, H, W, D) ``sum w_i c_i``, render_alphas (C, H, W, 1) ``sum w_i``,
        accum_depth (C, H, W, 1) ``sum w_i z_i``; differentiable w.r.t. means2d, conics, opacities,
        colors and depths.
    """
    opacities, colors = _broadcast_inputs(means2d, conics, opacities, colors, depths)
    C, N = depths.shape
    D = colors.shape[-1]
    bins = _bin_gaussians(means2d.detach(), radii, depths.detach(), width, height, tile_size, CHUNK_ELEMENTS)
    features = torch.cat([colors, depths[..., None]], dim=-1).reshape(C * N, D + 1)
    wants_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, opacities, colors, depths)
    )
    pairs = sum(chunk.valid.numel() for chunk in bins.chunks) * tile_size * tile_size
    keep_terms = wants_grad and 8 * pairs * means2d.element_size() <= SAVE_TERMS_BYTES
    out, acc = _TileRasterize.apply(
        means2d.reshape(C * N, 2),
        conics.reshape(C * N, 3),
        opacities.reshape(C * N),
        features,
        bins,
        C * bins.tiles_x * bins.tiles_y,
        keep_terms,
    )
    img = _untile(torch.cat([out, acc[..., None]], dim=-1), C, bins, width, height)
    return img[..., :D], img[..., D + 1 :], img[..., D : D + 1]


# --------------------------------------------------------------------------------------------------
# Stage 2: all-pairs oracle (tests only)
# --------------------------------------------------------------------------------------------------


def rasterize_dense(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    colors: Tensor,
    depths: Tensor,
    radii: Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as :func:`rasterize_to_pixels`, computed for every pixel x every non-culled Gaussian
    (globally depth-sorted) with plain autograd.  Memory is O(C H W N): for small test scenes only.
    ``tile_size`` is accepted for signature parity and ignored.
    """
    del tile_size
    opacities, colors = _broadcast_inputs(means2d, conics, opacities, colors, depths)
    C, N = depths.shape
    pix = torch.stack(
        torch.meshgrid(
            torch.arange(height, dtype=means2d.dtype, device=means2d.device) + 0.5,
            torch.arange(width, dtype=means2d.dtype, device=means2d.device) + 0.5,
            indexing="ij",
        )[::-1],
        dim=-1,
    ).reshape(-1, 2)  # (HW, 2) as (x, y)
    rgbs, alphas, accs = [], [], []
    for ci in range(C):
        ids = _depth_order(depths[ci], (radii[ci] > 0).all(-1))
        m, q, o = means2d[ci, ids], conics[ci, ids], opacities[ci, ids]
        dx = m[None, :, 0] - pix[:, None, 0]
        dy = m[None, :, 1] - pix[:, None, 1]
        alpha, _, _ = _gaussian_alpha(dx, dy, (q[None, :, 0], q[None, :, 1], q[None, :, 2]), o[None, :])
        weights, _, _ = _composite_weights(alpha)  # (HW, K)
        rgbs.append(weights @ colors[ci, ids])
        alphas.append(weights.sum(-1, keepdim=True))
        accs.append(weights @ depths[ci, ids][:, None])
    shape = (C, height, width, -1)
    return (
        torch.stack(rgbs).reshape(shape),
        torch.stack(alphas).reshape(shape),
        torch.stack(accs).reshape(shape),
    )
