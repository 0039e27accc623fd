"""What one training step sees: the coarse-to-fine image pyramid, random full-resolution crops, and the
order in which views are drawn (all randomness from the trainer's one ``torch.Generator``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recon.cameras import Cameras
from recon.errors import ReconError

Tensor = torch.Tensor


@dataclass
class _Level:
    """The training images and intrinsics at one resolution of the coarse-to-fine pyramid."""

    images: Tensor  # (N, h, w, 3)
    K: Tensor  # (N, 3, 3) for the (w, h) images
    width: int
    height: int
    depths: Tensor | None  # (N, h, w) or None


def image_pyramid(
    images: Tensor, K: Tensor, levels: int, depths: Tensor | None = None, min_side: int = 1
) -> list[_Level]:
    """Level k (0 = the input) holds the images area-averaged to round(size / 2^k) and K scaled to match
    (with the pixel-corner origin of CONVENTIONS, focal and principal point scale alike), for k up to
    ``levels`` while the long side stays >= ``min_side``. Depths, when given, are subsampled (nearest), so
    no depth is invented at a depth edge."""
    H, W = int(images.shape[1]), int(images.shape[2])
    out = [_Level(images, K, W, H, depths)]
    for k in range(1, levels + 1):
        h, w = max(1, round(H / 2**k)), max(1, round(W / 2**k))
        if max(h, w) < min_side:
            break
        imgs = F.interpolate(images.permute(0, 3, 1, 2), size=(h, w), mode="area").permute(0, 2, 3, 1)
        S = torch.diag(K.new_tensor([w / W, h / H, 1.0]))
        d = None if depths is None else F.interpolate(depths[:, None], size=(h, w), mode="nearest")[:, 0]
        out.append(_Level(imgs.contiguous(), S @ K, w, h, d))
    return out


def _random_crop(level: _Level, scale: float, gen: torch.Generator, min_side: int = 1) -> _Level:
    """A random window of ``scale`` times each side of ``level``'s images (the same for every view), with
    the principal point moved to the window's corner so that it renders as that part of the image. Images
    whose window would have a long side under ``min_side`` are returned whole (too little to fit)."""
    cw, ch = max(1, round(level.width * scale)), max(1, round(level.height * scale))
    if (cw >= level.width and ch >= level.height) or max(cw, ch) < min_side:
        return level
    x0 = int(torch.randint(0, level.width - cw + 1, (1,), generator=gen))
    y0 = int(torch.randint(0, level.height - ch + 1, (1,), generator=gen))
    K = level.K.clone()
    K[:, 0, 2] -= x0
    K[:, 1, 2] -= y0
    d = None if level.depths is None else level.depths[:, y0 : y0 + ch, x0 : x0 + cw]
    return _Level(level.images[:, y0 : y0 + ch, x0 : x0 + cw], K, cw, ch, d)


def check_inputs(n_gaussians: int, cameras: Cameras, images: Tensor, depths: Tensor | None) -> None:
    """One-line errors for training inputs that do not fit together (images (N,H,W,3) of the cameras'
    size, depths (N,H,W), at least one Gaussian)."""
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ReconError(f"training images must be (N, H, W, 3), got {tuple(images.shape)}")
    if images.shape[0] != len(cameras):
        raise ReconError(f"{images.shape[0]} training images for {len(cameras)} cameras")
    H, W = images.shape[1:3]
    if not bool((cameras.sizes[:, 0] == W).all() and (cameras.sizes[:, 1] == H).all()):
        raise ReconError(
            f"camera sizes {cameras.sizes.tolist()[:3]}... do not match the {W}x{H} images; scale the cameras"
        )
    if n_gaussians == 0:
        raise ReconError("no Gaussians to optimise: the initialisation produced an empty point cloud")
    if depths is not None and depths.shape[:3] != images.shape[:3]:
        raise ReconError(f"depth priors {tuple(depths.shape)} do not match images {tuple(images.shape)}")


class ViewSampler:
    """Which views a step renders, drawn from the trainer's generator.

    ``"epoch"``: random order without replacement, reshuffled each epoch (the main training: every view
    is seen equally often). ``"uniform"``: independent uniform draws (with replacement), as the diffusion
    stage fine-tunes. ``extra`` > 0 adds one of ``extra`` further views (pseudo views, indices n .. n+extra-1)
    drawn uniformly after the batch.
    """

    def __init__(self, n: int, generator: torch.Generator, mode: str = "epoch", extra: int = 0):
        if mode not in ("epoch", "uniform"):
            raise ValueError(f"unknown view sampling {mode!r}")
        self.n = n
        self.gen = generator
        self.mode = mode
        self.extra = extra
        self.queue: list[int] = []

    def _epoch(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if not self.queue:
                self.queue = torch.randperm(self.n, generator=self.gen).tolist()
            v = self.queue.pop()
            if v not in out:
                out.append(v)
        return out

    def next(self, k: int) -> list[int]:
        """Indices of the next batch: ``min(k, n)`` views, then the extra view when there are extras."""
        k = min(k, self.n)
        if self.mode == "epoch":
            out = self._epoch(k)
        else:
            out = [int(torch.randint(self.n, (1,), generator=self.gen)) for _ in range(k)]
        if self.extra > 0:
            out.append(self.n + int(torch.randint(self.extra, (1,), generator=self.gen)))
        return out
