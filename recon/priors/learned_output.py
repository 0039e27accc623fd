"""Learned-prior outputs back on the views' pixels: per-view network-grid depth and cameras -> PriorResult.

:func:`assemble_result` maps cameras estimated on the network input to the views' image size and puts
depth, confidence and colours on an output grid covering the whole image (:func:`grid_lookup`,
:func:`output_size`), after :func:`sanitize_depth` made the depths safe. :mod:`recon.priors.learned`
describes the mapping in its module docstring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.cameras import Cameras, invert_rigid, pixel_centers, scale_K, unproject_depth
from recon.errors import ReconError
from recon.priors.base import PriorResult
from recon.priors.networks.network_input import NetworkCrop
from recon.views import Views

DEPTH_RANGE = 1e3
"""Depths are clamped to [median / DEPTH_RANGE, median * DEPTH_RANGE] per view."""


def sanitize_depth(depth: Tensor, conf: Tensor) -> tuple[Tensor, Tensor, int]:
    """Depth (N, h, w) and confidence (N, h, w) safe for every later stage.

    Pixels with a non-finite or non-positive depth or a non-finite confidence get confidence 0 and the
    view's median depth; all depths are clamped to [median / DEPTH_RANGE, median * DEPTH_RANGE]; negative
    confidences become 0. Returns (depth, conf, number of pixels that were invalid).
    """
    ok = torch.isfinite(depth) & (depth > 0) & torch.isfinite(conf)
    conf = torch.where(ok, conf.clamp_min(0), torch.zeros_like(conf))
    out = torch.empty_like(depth)
    for v in range(depth.shape[0]):
        good = depth[v][ok[v]]
        med = good.median() if good.numel() else depth.new_tensor(1.0)
        out[v] = torch.where(ok[v], depth[v], med).clamp(med / DEPTH_RANGE, med * DEPTH_RANGE)
    return out, conf, int((~ok).sum())


def output_size(image_size: tuple[int, int], density: tuple[float, float]) -> tuple[int, int]:
    """(w, h) of an output grid covering an image of (W, H) with ``density`` = output pixels per image
    pixel along (x, y)."""
    W, H = image_size
    return max(1, round(W * density[0])), max(1, round(H * density[1]))


def grid_lookup(
    crop: NetworkCrop, stride: int, grid_hw: tuple[int, int], out_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """For each pixel of an output grid of ``out_size`` (w, h) covering the original image, the index of
    the network-grid pixel under its centre.

    The network grid is the network input pooled by ``stride`` (grid pixel (i, j) covers input pixels
    [stride*i, stride*(i+1)) x [stride*j, stride*(j+1))). Returns flat indices (h, w) into the
    (grid_h * grid_w) grid and a (h, w) bool mask, False where the centre lies outside the network input
    (cropped away).
    """
    W, H = crop.image_size
    w_o, h_o = out_size
    gh, gw = grid_hw
    uv = pixel_centers(h_o, w_o, dtype=torch.float64) * torch.tensor([W / w_o, H / h_o], dtype=torch.float64)
    g = crop.image_to_network(uv) / stride
    j, i = torch.floor(g[..., 0]).long(), torch.floor(g[..., 1]).long()
    valid = (j >= 0) & (j < gw) & (i >= 0) & (i < gh)
    return i.clamp(0, gh - 1) * gw + j.clamp(0, gw - 1), valid


def assemble_result(
    views: Views,
    crop: NetworkCrop,
    stride: int,
    w2c: Tensor,
    K_net: Tensor,
    depth: Tensor,
    conf: Tensor,
    out_size: tuple[int, int],
    world_points: Tensor | None = None,
    info: dict | None = None,
) -> PriorResult:
    """A :class:`PriorResult` on the views' pixels from per-view network-grid outputs.

    Args:
        views: the N views (names, images).
        crop: how the images became network inputs; ``stride``: network-grid pooling (1 = input pixels).
        w2c: (N, 4, 4) world-to-camera; K_net: (N, 3, 3) intrinsics of the network *input* (not pooled).
        depth, conf: (N, gh, gw) z-depth and confidence on the network grid (sanitised here).
        out_size: (w, h) of the output grid covering the whole image.
        world_points: optional (N, gh, gw, 3) world points to use instead of unprojected depth.

    The module docstring describes the mapping; returns cameras for the views' image size.
    """
    N, gh, gw = depth.shape
    W, H = views.size
    w_o, h_o = out_size
    names = list(views.names)
    K_img = crop.K_to_image(K_net.double())
    w2c = w2c.double()
    if not (torch.isfinite(K_img).all() and torch.isfinite(w2c).all()) or bool((K_img[:, 0, 0] <= 0).any()):
        raise ReconError(
            "the network predicted non-finite or degenerate cameras; the checkpoint may be damaged or of an "
            "unsupported variant"
        )
    idx, valid = grid_lookup(crop, stride, (gh, gw), out_size)
    K_out = scale_K(K_img, w_o / W, h_o / H)
    c2w = invert_rigid(w2c)
    if world_points is None:
        depth, conf, n_invalid = sanitize_depth(depth.double(), conf.double())
        depth_o = depth.reshape(N, -1)[:, idx]
        pts = torch.stack([unproject_depth(depth_o[v], K_out[v], c2w[v]) for v in range(N)])
    else:
        pts = world_points.double().reshape(N, -1, 3)[:, idx]
        ok = torch.isfinite(pts).all(-1)
        pts = torch.where(ok[..., None], pts, torch.zeros_like(pts))
        depth_o = (pts.reshape(N, -1, 3) @ w2c[:, :3, :3].transpose(-1, -2) + w2c[:, None, :3, 3]).reshape(
            N, h_o, w_o, 3
        )[..., 2]
        conf = conf.double()
        conf = torch.where(torch.isfinite(conf), conf.clamp_min(0), torch.zeros_like(conf))
        ok = ok & (depth_o > 0)
        n_invalid = int((~ok).sum())
    conf_o = conf.reshape(N, -1)[:, idx] * valid
    if world_points is not None:
        conf_o = conf_o * ok
    colors = F.interpolate(views.images.permute(0, 3, 1, 2).float(), size=(h_o, w_o), mode="area")
    cameras = Cameras(K_img.float(), w2c.float(), torch.tensor([[W, H]] * N), names)
    info = {} if info is None else info
    info.update(
        map_size=[w_o, h_o],
        invalid_pixels=n_invalid,
        covered_fraction=float(valid.float().mean()),
    )
    return PriorResult(
        cameras=cameras,
        pointmaps=pts.float(),
        conf=conf_o.float(),
        colors=colors.permute(0, 2, 3, 1).clamp(0, 1).contiguous(),
        depth=depth_o.float(),
        info=info,
    )
