"""Pairwise networks (DUSt3R / MASt3R) over many views: the pair graph and batched pair inference.

:func:`pair_graph` chooses the ordered view pairs, :func:`predict_pairs` encodes each image once and
decodes the pairs in batches, pooling every prediction onto the alignment grid (:func:`pool_pair_maps`,
:func:`alignment_stride`). :mod:`recon.priors.learned` describes the whole prior and drives this.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.priors.align import PairPrediction


def pair_graph(
    n: int, complete_max_views: int = 12, window: int = 3, keyframes: int | None = None
) -> list[tuple[int, int]]:
    """Ordered view pairs (i, j), i != j, both orders of every edge, sorted.

    ``n <= complete_max_views``: all pairs. Otherwise: (i, i + d) for d = 1..``window`` (the input order is
    the capture order for sequences and the sorted file names for folders), plus all pairs among
    ``keyframes`` evenly spaced views (default round(sqrt(n)), always including the first and last view).
    The graph is connected for any ``window`` >= 1.
    """
    if n < 2:
        return []
    edges: set[tuple[int, int]] = set()
    if n <= complete_max_views:
        edges = {(i, j) for i in range(n) for j in range(i + 1, n)}
    else:
        edges = {(i, i + d) for i in range(n) for d in range(1, window + 1) if i + d < n}
        k = round(math.sqrt(n)) if keyframes is None else keyframes
        k = min(max(k, 0), n)
        if k >= 2:
            keys = sorted({round(x * (n - 1) / (k - 1)) for x in range(k)})
            edges |= {(a, b) for ai, a in enumerate(keys) for b in keys[ai + 1 :]}
    return sorted(edges | {(j, i) for i, j in edges})


def inference_autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast on CUDA for ``precision`` "bf16"/"fp16"; a no-op on other devices and for "fp32"."""
    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def pool_pair_maps(pts: Tensor, conf: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """Point maps (B, H, W, 3) and confidences (B, H, W) -> the grid ``stride`` times coarser.

    Non-finite points or confidences get confidence 0 (and point 0). Each coarse pixel is the
    confidence-weighted mean of its stride x stride block (its footprint's centre is the block's centre,
    so a coarse pixel keeps the pinhole geometry of the finer grid) with the block's mean confidence.
    """
    ok = torch.isfinite(pts).all(-1) & torch.isfinite(conf)
    conf = torch.where(ok, conf.clamp_min(0), torch.zeros_like(conf))
    pts = torch.where(ok[..., None], pts, torch.zeros_like(pts))
    if stride > 1:
        c = conf[:, None]
        csum = F.avg_pool2d(c, stride)
        p = F.avg_pool2d(pts.permute(0, 3, 1, 2) * c, stride) / csum.clamp_min(1e-12)
        pts, conf = p.permute(0, 2, 3, 1), csum[:, 0]
        ok = torch.isfinite(pts).all(-1) & torch.isfinite(conf)  # products of huge values may overflow
        conf = torch.where(ok, conf, torch.zeros_like(conf))
        pts = torch.where(ok[..., None], pts, torch.zeros_like(pts))
    return pts.contiguous(), conf.contiguous()


@torch.no_grad()
def predict_pairs(
    model: nn.Module,
    images: Tensor,
    pairs: list[tuple[int, int]],
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    stride: int = 1,
    precision: str = "fp32",
) -> tuple[list[PairPrediction], dict]:
    """Run a DUSt3R/MASt3R network on ordered view pairs.

    Args:
        model: a :class:`~recon.priors.networks.dust3r.DUSt3R` (or MASt3R) on ``device``.
        images: (N, 3, H, W) network inputs in [-1, 1] (:func:`prepare_image`), all the same size.
        pairs: ordered (i, j): view i's frame is the pair's frame.
        batch_size: images per encoder pass and pairs per decoder pass.
        stride: pooling of the outputs onto the alignment grid (:func:`pool_pair_maps`).

    Returns:
        One :class:`PairPrediction` per pair (on the CPU, float32, (H / stride, W / stride) maps) and
        ``{"pairs", "batches", "encoder_batches"}``. Each image is encoded once (an image's encoding does
        not depend on its partner). Networks without a confidence output get a uniform confidence of
        ``2.0`` (above the default alignment threshold).
    """
    device = torch.device(device)
    N, _, H, W = images.shape
    # Landscape-only networks (official ManyAR layout) take portrait images transposed (see croco.py).
    transpose = bool(getattr(model, "landscape_only", False)) and H > W
    tensor_hw = (W, H) if transpose else (H, W)
    shape = torch.tensor([[H, W]], device=device)
    feats, poss = [], []
    for s in range(0, N, batch_size):
        x = images[s : s + batch_size].to(device=device, dtype=torch.float32)
        if transpose:
            x = x.transpose(-1, -2)
        with inference_autocast(device, precision):
            f, p = model.encode(x, shape.expand(len(x), 2))
        feats.append(f)
        poss.append(p)
    feat, pos = torch.cat(feats), torch.cat(poss)

    preds: list[PairPrediction] = []
    batches = 0
    for s in range(0, len(pairs), batch_size):
        batch = pairs[s : s + batch_size]
        ii = torch.tensor([i for i, _ in batch], device=device)
        jj = torch.tensor([j for _, j in batch], device=device)
        ts = shape.expand(len(batch), 2)
        with inference_autocast(device, precision):
            res1, res2 = model.decode_pair(feat[ii], pos[ii], feat[jj], pos[jj], tensor_hw, tensor_hw, ts, ts)
        batches += 1
        maps = []
        for res, key in ((res1, "pts3d"), (res2, "pts3d_in_other_view")):
            pts = res[key].float()
            conf = res["conf"].float() if "conf" in res else torch.full_like(pts[..., 0], 2.0)
            if transpose:
                pts, conf = pts.transpose(1, 2), conf.transpose(1, 2)
            maps.append(tuple(t.cpu() for t in pool_pair_maps(pts, conf, stride)))
        (p1, c1), (p2, c2) = maps
        for b, (i, j) in enumerate(batch):
            preds.append(PairPrediction(i, j, p1[b], p2[b], c1[b], c2[b]))
    return preds, {"pairs": len(pairs), "batches": batches, "encoder_batches": len(feats)}


def alignment_stride(height: int, width: int, max_side: int) -> int:
    """The smallest power-of-two stride dividing (height, width) that brings their long side to at most
    ``max_side`` (or the largest such stride when none does)."""
    g = 1
    while max(height, width) / g > max_side and height % (2 * g) == 0 and width % (2 * g) == 0:
        g *= 2
    return g
