"""Learned priors (DUSt3R, MASt3R, VGGT) from local checkpoints: network inference, alignment, and the
way back to the views' pixels. ``LearnedPrior(kind, checkpoint, cfg, device)(views) -> PriorResult``.

DUSt3R / MASt3R (pairwise networks):

1. Every view becomes a network input as the released models were trained (:func:`prepare_image`: long
   side = ``resolution`` (512), centred crop to multiples of 16, pixels in [-1, 1]); the views share one
   size, hence one :class:`NetworkCrop`.
2. A pair graph (:func:`pair_graph`): complete up to ``complete_max_views`` views, else a sliding window
   over the views' order plus a complete graph on a few evenly spaced keyframes (long-range links that
   keep drift in check). Both orders (i, j) and (j, i) are predicted: the decoder is asymmetric and the
   alignment needs every view as the first view of some pair.
3. :func:`predict_pairs` encodes each image once and decodes the pairs in batches of ``batch_size``.
   Each prediction is pooled by an integer ``stride`` (confidence-weighted mean over stride x stride
   blocks) onto the alignment grid, whose long side is at most ``map_max_side`` and at most the images'.
   MASt3R is used through its ``pts3d`` / ``conf`` exactly like DUSt3R (its descriptors are not needed).
4. :func:`~recon.priors.align.global_align` puts all pairs in one world frame (view 0's camera) and
   gives every view a c2w, a focal (centred principal point) and a z-depth map on the grid.

VGGT (all views in one forward pass; no pairwise alignment): the official preprocessing
(:func:`~recon.priors.networks.vggt.prepare_images`: width ``resolution`` (518), height rounded to a
multiple of 14, [0, 1]); ``pose_enc`` -> w2c, K of the network input
(:func:`~recon.priors.networks.vggt.pose_encoding_to_w2c_K`); per-pixel depth and its confidence (or the
point head, ``vggt_points='pointmap'``).

Back to the views (both, :func:`assemble_result`):

- ``cameras.K`` is for the views' image size: the network-input K mapped through
  :meth:`NetworkCrop.K_to_image` (resize and crop undone); ``w2c`` in the OpenCV convention.
- Point maps, conf, colours and depth live on an *output grid* with the images' aspect: it covers the
  whole image even where the network crop cut a few pixels (or a 4:3 window of a square image) away.
  Each output pixel takes depth and confidence from the network-grid pixel under its centre (nearest:
  no depth blending across object edges); pixels outside the crop get conf 0. Points are the output
  pixels' rays times that depth (:func:`~recon.cameras.unproject_depth`), so every point projects exactly
  onto its own pixel centre with the returned cameras. When the crop keeps the image's aspect (the usual
  case) the output grid *is* the alignment grid and the point maps are the aligned ones.
- Colours: the image averaged over each output pixel's footprint.

Garbage in (e.g. random weights): non-finite depths or confidences get conf 0, depths are clamped to
``[1e-3, 1e3]`` x the view's median depth, VGGT field-of-view outputs to [1, 175] degrees; cameras that
are still not finite raise a ReconError. Nothing here knows about any particular checkpoint.

Cost (``PriorResult.info``): wall time of the stage and of its parts, the process's peak RSS
(``resource.getrusage``; a process-wide high-water mark) or, on CUDA, ``torch.cuda.max_memory_allocated``
during the stage, and the number of pairs and network batches.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.cameras import Cameras, invert_rigid, pixel_centers, scale_K, unproject_depth
from recon.errors import ReconError
from recon.priors.align import PairPrediction, global_align
from recon.priors.base import PriorResult
from recon.priors.checkpoints import load_network
from recon.priors.config import LearnedConfig
from recon.priors.networks.network_input import NetworkCrop, prepare_image
from recon.views import Views

LearnedKind = Literal["dust3r", "mast3r", "vggt"]

DEPTH_RANGE = 1e3
"""Depths are clamped to [median / DEPTH_RANGE, median * DEPTH_RANGE] per view."""
VGGT_FOV_RANGE_DEG = (1.0, 175.0)
"""VGGT field-of-view outputs are clamped to this range before they become focal lengths."""

# Official release file names per network (first = the recommended one), looked up in the local
# checkpoint folders as ``<stem>.safetensors|.pth|.pt`` or as a folder ``<stem>/`` holding the weights.
OFFICIAL_CHECKPOINTS: dict[str, tuple[str, ...]] = {
    "dust3r": (
        "DUSt3R_ViTLarge_BaseDecoder_512_dpt",
        "DUSt3R_ViTLarge_BaseDecoder_512_linear",
        "DUSt3R_ViTLarge_BaseDecoder_224_linear",
    ),
    "mast3r": ("MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric",),
    "vggt": ("VGGT-1B",),
}
_OFFICIAL_FILE_HINT = {
    "dust3r": "the official DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth (or .safetensors)",
    "mast3r": "the official MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth (or .safetensors)",
    "vggt": "the official VGGT-1B model.pt (or model.safetensors) from facebook/VGGT-1B",
}
_CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")
CHECKPOINT_DIR_ENV = "RECON_CHECKPOINT_DIR"
DEFAULT_CHECKPOINT_DIR = "~/.cache/recon/checkpoints"


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def checkpoint_dirs() -> list[Path]:
    """Local folders searched for official checkpoints: ``$RECON_CHECKPOINT_DIR`` (when set), then
    ``~/.cache/recon/checkpoints``. Nothing is ever downloaded."""
    dirs = []
    if env := os.environ.get(CHECKPOINT_DIR_ENV):
        dirs.append(Path(env).expanduser())
    dirs.append(Path(DEFAULT_CHECKPOINT_DIR).expanduser())
    return dirs


def find_checkpoint(kind: str) -> Path | None:
    """The first official ``kind`` checkpoint in :func:`checkpoint_dirs`: ``<stem>.safetensors|.pth|.pt``
    or a folder ``<stem>/`` for the stems in :data:`OFFICIAL_CHECKPOINTS`, else a folder ``<kind>/``."""
    for d in checkpoint_dirs():
        for stem in OFFICIAL_CHECKPOINTS[kind]:
            for suffix in _CHECKPOINT_SUFFIXES:
                if (d / f"{stem}{suffix}").is_file():
                    return d / f"{stem}{suffix}"
            if (d / stem).is_dir():
                return d / stem
        if (d / kind).is_dir():
            return d / kind
    return None


def missing_checkpoint_message(kind: str) -> str:
    """The one-line error for a learned prior without a checkpoint: which file, and where we looked."""
    env = os.environ.get(CHECKPOINT_DIR_ENV)
    where = [
        f"${CHECKPOINT_DIR_ENV} ({env})" if env else f"${CHECKPOINT_DIR_ENV} (unset)",
        DEFAULT_CHECKPOINT_DIR,
    ]
    stems = ", ".join(f"{s}.*" for s in OFFICIAL_CHECKPOINTS[kind])
    return (
        f"the {kind} prior needs a checkpoint: pass --checkpoint PATH to {_OFFICIAL_FILE_HINT[kind]}; "
        f"looked for {stems} and {kind}/ in {', '.join(where)} (nothing is downloaded)"
    )


# --------------------------------------------------------------------------------------------------
# Pair graph and pairwise inference (DUSt3R / MASt3R)
# --------------------------------------------------------------------------------------------------


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


def _autocast(device: torch.device, precision: str):
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
        with _autocast(device, precision):
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
        with _autocast(device, precision):
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


# --------------------------------------------------------------------------------------------------
# Back to the views' pixels
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Cost accounting
# --------------------------------------------------------------------------------------------------


def peak_rss_mb() -> float | None:
    """The process's peak resident set size so far (MiB), or None where ``resource`` is unavailable."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


@contextmanager
def measure_stage(device: torch.device, info: dict) -> Iterator[None]:
    """Record the block's wall time (``seconds``), the process's peak RSS after it (``peak_rss_mb``) and,
    on CUDA, the peak allocated GPU memory during it (``peak_cuda_mb``) into ``info``."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if cuda:
            torch.cuda.synchronize(device)
            info["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        info["seconds"] = round(time.perf_counter() - t0, 3)
        rss1 = peak_rss_mb()
        if rss1 is not None:
            info["peak_rss_mb"] = round(rss1, 1)
            info["peak_rss_mb_before"] = round(rss0, 1)


# --------------------------------------------------------------------------------------------------
# The prior
# --------------------------------------------------------------------------------------------------


class LearnedPrior:
    """A learned geometry prior: ``LearnedPrior(kind, checkpoint, cfg, device)(views) -> PriorResult``.

    ``checkpoint`` None: the first official file found by :func:`find_checkpoint`, else a ReconError that
    names the file. The network is loaded (safely, :func:`~recon.priors.checkpoints.load_network`) on the
    first call and kept for later calls. See the module docstring for what a call does.
    """

    def __init__(
        self, kind: str, checkpoint: Path | str | None, cfg: LearnedConfig, device: torch.device | str
    ):
        if kind not in OFFICIAL_CHECKPOINTS:
            raise ReconError(
                f"unknown learned prior {kind!r}; choose one of {', '.join(OFFICIAL_CHECKPOINTS)}"
            )
        cfg.check()
        path = Path(checkpoint).expanduser() if checkpoint is not None else find_checkpoint(kind)
        if path is None:
            raise ReconError(missing_checkpoint_message(kind))
        self.kind, self.checkpoint, self.cfg = kind, path, cfg
        self.device = torch.device(device)
        self._model: nn.Module | None = None

    @property
    def model(self) -> nn.Module:
        """The network on ``device`` in eval mode (loaded on first use)."""
        if self._model is None:
            self._model = load_network(self.kind, self.checkpoint, self.device).float().eval()  # type: ignore[arg-type]
        return self._model

    def __call__(self, views: Views) -> PriorResult:
        if len(views) < 2:
            raise ReconError(f"the {self.kind} prior needs at least 2 views, got {len(views)}")
        info: dict = {
            "prior": self.kind,
            "checkpoint": str(self.checkpoint),
            "device": str(self.device),
            "views": len(views),
        }
        with measure_stage(self.device, info):
            t0 = time.perf_counter()
            model = self.model
            info["seconds_load"] = round(time.perf_counter() - t0, 3)
            run = self._vggt if self.kind == "vggt" else self._pairwise
            result = run(model, views, info)
        return result

    # DUSt3R / MASt3R ------------------------------------------------------------------------------

    def prepare(self, model: nn.Module, views: Views) -> tuple[Tensor, NetworkCrop]:
        """(N, 3, h, w) network inputs in [-1, 1] and their shared crop (module docstring, step 1)."""
        size = self.cfg.resolution or max(model.cfg.img_size)
        try:
            prepared = [prepare_image(im, size=size, patch_size=model.cfg.patch_size) for im in views.images]
        except ValueError as e:
            raise ReconError(f"{e}; use larger images or set --learned.resolution") from None
        return torch.stack([x for x, _ in prepared]), prepared[0][1]

    def _pairwise(self, model: nn.Module, views: Views, info: dict) -> PriorResult:
        cfg = self.cfg
        x, crop = self.prepare(model, views)
        h, w = x.shape[-2:]
        stride = alignment_stride(h, w, min(cfg.map_max_side, max(views.size)))
        pairs = pair_graph(len(views), cfg.complete_max_views, cfg.window, cfg.keyframes)
        t0 = time.perf_counter()
        preds, stats = predict_pairs(model, x, pairs, cfg.batch_size, self.device, stride, cfg.precision)
        t1 = time.perf_counter()
        aligned = global_align(len(views), preds, cfg.align)
        t2 = time.perf_counter()
        gh, gw = aligned.depth.shape[-2:]
        cams = aligned.cameras(gw, gh, list(views.names))
        info.update(
            stats,
            network_size=[int(w), int(h)],
            grid_stride=stride,
            seconds_network=round(t1 - t0, 3),
            seconds_align=round(t2 - t1, 3),
            align_loss=float(aligned.loss),
        )
        sx, sy = crop.scale
        return assemble_result(
            views,
            crop,
            stride,
            cams.w2c,
            scale_K(cams.K.double(), stride),  # grid pixels -> network-input pixels
            aligned.depth,
            aligned.conf,
            output_size(views.size, (sx / stride, sy / stride)),
            info=info,
        )

    # VGGT -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _vggt(self, model: nn.Module, views: Views, info: dict) -> PriorResult:
        from recon.priors.networks.vggt import pose_encoding_to_w2c_K, prepare_images

        cfg = self.cfg
        mcfg = model.cfg
        if not (
            mcfg.enable_camera and (mcfg.enable_depth if cfg.vggt_points == "depth" else mcfg.enable_point)
        ):
            raise ReconError(
                f"{self.checkpoint} lacks the VGGT camera or {cfg.vggt_points} head that the prior needs"
            )
        width = cfg.resolution or mcfg.img_size
        width -= width % mcfg.patch_size
        x, crop = prepare_images(views.images, width, cfg.vggt_preprocess, mcfg.patch_size)
        h, w = x.shape[-2:]
        t0 = time.perf_counter()
        with _autocast(self.device, cfg.precision):
            out = model(x.to(self.device))
        out = {k: v[0].float().cpu() for k, v in out.items() if k != "pose_enc_list"}
        t1 = time.perf_counter()
        pose_enc, n_clamped = guard_pose_encoding(out["pose_enc"])
        w2c, K_net = pose_encoding_to_w2c_K(pose_enc.double(), (h, w))
        if cfg.vggt_points == "depth":
            depth, conf, points = out["depth"][..., 0], out["depth_conf"], None
        else:
            points, conf = out["world_points"], out["world_points_conf"]
            depth = torch.ones_like(conf)  # unused: depth comes from the points
        info.update(
            pairs=0,
            batches=1,
            network_size=[int(w), int(h)],
            grid_stride=1,
            seconds_network=round(t1 - t0, 3),
            fov_clamped=n_clamped,
        )
        sx, sy = crop.scale
        W, H = views.size
        r = min(sx, sy, 1.0, cfg.map_max_side / max(W, H))
        return assemble_result(
            views,
            crop,
            1,
            w2c,
            K_net,
            depth,
            conf,
            output_size((W, H), (r, r)),
            world_points=points,
            info=info,
        )


def guard_pose_encoding(pose_enc: Tensor) -> tuple[Tensor, int]:
    """VGGT pose encodings (S, 9) with FoVs clamped to :data:`VGGT_FOV_RANGE_DEG`; returns the count of
    clamped values. Raises ReconError for non-finite encodings or a zero quaternion (no rotation)."""
    if not torch.isfinite(pose_enc).all() or bool((pose_enc[:, 3:7].norm(dim=-1) < 1e-8).any()):
        raise ReconError("the VGGT network predicted non-finite cameras; the checkpoint may be damaged")
    lo, hi = (math.radians(d) for d in VGGT_FOV_RANGE_DEG)
    fov = pose_enc[:, 7:9]
    n = int(((fov < lo) | (fov > hi)).sum())
    return torch.cat((pose_enc[:, :7], fov.clamp(lo, hi)), dim=-1), n
