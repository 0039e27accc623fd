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

Modules: the pair graph and pairwise inference are in :mod:`recon.priors.learned_pairs`, the way back to
the views' pixels in :mod:`recon.priors.learned_output` (both re-exported here); this module holds the
checkpoint lookup, the cost accounting and :class:`LearnedPrior`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from recon.cameras import scale_K
from recon.errors import ReconError
from recon.priors.align import global_align
from recon.priors.base import PriorResult
from recon.priors.checkpoints import load_network
from recon.priors.config import LearnedConfig
from recon.priors.learned_output import DEPTH_RANGE, assemble_result, grid_lookup, output_size, sanitize_depth
from recon.priors.learned_pairs import (
    alignment_stride,
    inference_autocast,
    pair_graph,
    pool_pair_maps,
    predict_pairs,
)
from recon.priors.networks.network_input import NetworkCrop, prepare_image
from recon.views import Views

__all__ = [
    "CHECKPOINT_DIR_ENV",
    "DEFAULT_CHECKPOINT_DIR",
    "DEPTH_RANGE",
    "OFFICIAL_CHECKPOINTS",
    "VGGT_FOV_RANGE_DEG",
    "LearnedConfig",
    "LearnedKind",
    "LearnedPrior",
    "alignment_stride",
    "assemble_result",
    "checkpoint_dirs",
    "find_checkpoint",
    "grid_lookup",
    "guard_pose_encoding",
    "measure_stage",
    "missing_checkpoint_message",
    "output_size",
    "pair_graph",
    "peak_rss_mb",
    "pool_pair_maps",
    "predict_pairs",
    "sanitize_depth",
]

LearnedKind = Literal["dust3r", "mast3r", "vggt"]

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
        with inference_autocast(self.device, cfg.precision):
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
