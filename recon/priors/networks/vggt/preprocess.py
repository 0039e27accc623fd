"""Input images as the released VGGT expects them, and VGGT outputs back on the original photo's pixels.

The official loader (``load_and_preprocess_images``) reads 8-bit RGB photos and, in its default
``'crop'`` mode, resizes each to width 518 and height ``round(H * 518 / W / 14) * 14`` (PIL bicubic),
then keeps the central 518 rows of taller (portrait) results. In ``'pad'`` mode the long side becomes
518, the short side is rounded to a multiple of 14 likewise, and the result is centred on a 518 x 518
white (1.0) canvas. Pixels are in [0, 1]; the ImageNet normalisation happens inside the network.

The resize + crop/pad is recorded as a :class:`~recon.priors.networks.network_input.NetworkCrop` (a per-axis
scale and an offset: a crop has a positive offset, padding a negative one), which maps K and per-pixel
maps between the network input and the original image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from recon.errors import ReconError
from recon.priors.networks.network_input import NetworkCrop
from recon.priors.networks.vggt.pose_encoding import pose_encoding_to_w2c_K

PreprocessMode = Literal["crop", "pad"]
PAD_VALUE = 1.0  # the official loader pads with white


def _rounded_side(side: int, other: int, target: int, patch: int) -> int:
    # Python's round(), as the official loader: the short side to the nearest multiple of the patch size.
    return round(side * (target / other) / patch) * patch


def network_crop(
    image_size: tuple[int, int], target_width: int = 518, mode: PreprocessMode = "crop", patch_size: int = 14
) -> NetworkCrop:
    """How an image of ``image_size`` (W, H) becomes a VGGT input (module docstring for the rules)."""
    W0, H0 = image_size
    if target_width <= 0 or target_width % patch_size:
        raise ValueError(f"target_width {target_width} must be a positive multiple of {patch_size}")
    t = target_width
    if mode == "crop":
        W1, H1 = t, _rounded_side(H0, W0, t, patch_size)
        y0 = (H1 - t) // 2 if H1 > t else 0
        offset, size = (0, y0), (W1, min(H1, t))
    elif mode == "pad":
        if W0 >= H0:
            W1, H1 = t, _rounded_side(H0, W0, t, patch_size)
        else:
            W1, H1 = _rounded_side(W0, H0, t, patch_size), t
        offset, size = (-((t - W1) // 2), -((t - H1) // 2)), (t, t)
    else:
        raise ValueError(f"unknown VGGT preprocessing mode {mode!r}; use 'crop' or 'pad'")
    if min(W1, H1) <= 0:
        raise ReconError(
            f"image size {W0}x{H0} is too elongated for VGGT at width {target_width} "
            f"(its short side would round to 0 px); crop it closer to 1:1"
        )
    return NetworkCrop((W0, H0), (W1, H1), offset, size)


def prepare_images(
    images: Tensor | np.ndarray,
    target_width: int = 518,
    mode: PreprocessMode = "crop",
    patch_size: int = 14,
) -> tuple[Tensor, NetworkCrop]:
    """Resize and crop (or pad) same-size RGB images the way the released VGGT expects them.

    ``images`` (N, H, W, 3), float in [0, 1] or uint8. Float images are rounded to 8 bits first so that
    photos read from 8-bit files give exactly the official inputs (PIL bicubic on 8-bit RGB). Returns
    ``(tensor (N, 3, h, w) float32 in [0, 1], crop)``: h, w are multiples of ``patch_size``, w =
    ``target_width`` in ``'crop'`` mode, h = w = ``target_width`` in ``'pad'`` mode.
    """
    a = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if a.ndim != 4 or a.shape[-1] != 3 or a.shape[0] == 0:
        raise ReconError(f"VGGT takes a batch of RGB images (N, H, W, 3), got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    N, H0, W0, _ = a.shape
    crop = network_crop((W0, H0), target_width, mode, patch_size)
    (W1, H1), (x0, y0), (w, h) = crop.resized_size, crop.offset, crop.size
    out = torch.full((N, 3, h, w), PAD_VALUE, dtype=torch.float32)
    # Region of the resized image inside the network input (all of it when padding, rows when cropping).
    sx0, sy0 = max(x0, 0), max(y0, 0)
    dx0, dy0 = max(-x0, 0), max(-y0, 0)
    cw, ch = min(W1 - sx0, w - dx0), min(H1 - sy0, h - dy0)
    for i in range(N):
        pil = Image.fromarray(a[i])
        if (W1, H1) != (W0, H0):
            pil = pil.resize((W1, H1), Image.Resampling.BICUBIC)
        r = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out[i, :, dy0 : dy0 + ch, dx0 : dx0 + cw] = r[:, sy0 : sy0 + ch, sx0 : sx0 + cw]
    return out, crop


@dataclass
class VGGTPrediction:
    """VGGT outputs for S views in the project's conventions on the original images' (H, W) pixels.

    Geometry is in the first view's camera frame (OpenCV), up to one global scale. Fields of heads that
    the network does not have are None.
    """

    w2c: Tensor | None
    """(S, 4, 4) world-to-camera."""
    K: Tensor | None
    """(S, 3, 3) intrinsics in pixels of the original images."""
    depth: Tensor | None
    """(S, H, W) z-depth."""
    depth_conf: Tensor | None
    """(S, H, W) >= 1, higher is better."""
    world_points: Tensor | None
    """(S, H, W, 3) point map in the world (first camera) frame."""
    world_points_conf: Tensor | None
    """(S, H, W) >= 1."""
    valid: Tensor
    """(S, H, W) bool: False where the network input did not cover the pixel (cropped away)."""


def outputs_to_image(pred: Mapping[str, Tensor], crop: NetworkCrop, mode: str = "bilinear") -> VGGTPrediction:
    """Map one sequence of :class:`~recon.priors.networks.vggt.VGGT` outputs (batch size 1) to the
    original images: cameras to ``w2c`` / ``K`` (K through ``crop.K_to_image``), per-pixel maps resampled
    onto the original pixel grid with ``crop.to_image`` (``mode`` 'bilinear' or 'nearest')."""

    def one(key: str) -> Tensor | None:
        if key not in pred:
            return None
        v = pred[key]
        if v.shape[0] != 1:
            raise ValueError(f"expected one sequence (batch size 1), got {tuple(v.shape)} for {key}")
        return v[0]

    w2c = K = None
    if (enc := one("pose_enc")) is not None:
        w2c, K_net = pose_encoding_to_w2c_K(enc, (crop.size[1], crop.size[0]))
        K = crop.K_to_image(K_net)
    maps: dict[str, Tensor | None] = {}
    valid: Tensor | None = None
    for key in ("depth", "depth_conf", "world_points", "world_points_conf"):
        v = one(key)
        if v is None:
            maps[key] = None
            continue
        if key == "depth":
            v = v[..., 0]
        res = [crop.to_image(frame, mode=mode) for frame in v]
        maps[key] = torch.stack([r[0] for r in res])
        valid = torch.stack([r[1] for r in res])
    if valid is None:
        S = w2c.shape[0] if w2c is not None else 0
        W, H = crop.image_size
        valid = torch.ones(S, H, W, dtype=torch.bool)
    return VGGTPrediction(w2c=w2c, K=K, valid=valid, **maps)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    images: Tensor | np.ndarray,
    target_width: int = 518,
    mode: PreprocessMode = "crop",
    interp: str = "bilinear",
) -> VGGTPrediction:
    """Run VGGT on one sequence of same-size RGB images (N, H, W, 3) in [0, 1] (or uint8) and return its
    outputs on the original pixels (:func:`prepare_images`, the model, :func:`outputs_to_image`)."""
    param = next(model.parameters())
    patch = getattr(getattr(model, "cfg", None), "patch_size", 14)
    x, crop = prepare_images(images, target_width, mode, patch)
    pred = model(x.to(device=param.device, dtype=param.dtype))
    pred = {k: v.float().cpu() for k, v in pred.items()}
    return outputs_to_image(pred, crop, mode=interp)
