"""Network inputs of the DUSt3R/MASt3R priors: the released models' resize and crop
(:func:`prepare_image`) and the way back to the original pixels (:class:`NetworkCrop`, also used by VGGT's
preprocessing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


@dataclass(frozen=True)
class NetworkCrop:
    """How an image was turned into a network input: an aspect-preserving resize, then a crop.

    Coordinates follow CONVENTIONS (pixel-corner origin, pixel (i, j) centred at (j + 0.5, i + 0.5)), so
    a point ``u`` of the original image lands at ``u * scale - crop_offset`` in the network image:

        u_net = sx * u_img - x0,   v_net = sy * v_img - y0
        K_net = [[sx fx, 0, sx cx - x0], [0, sy fy, sy cy - y0], [0, 0, 1]]

    ``sx``, ``sy`` are the per-axis resize factors (equal up to the rounding of the resized size). The
    network image covers the original region ``[x0/sx, (x0 + w)/sx) x [y0/sy, (y0 + h)/sy)``; the part of
    the image outside it (at most a few pixels per side, plus a 4:3 crop of square images) has no
    prediction (see :meth:`to_image`).
    """

    image_size: tuple[int, int]
    """(W, H) of the original image."""
    resized_size: tuple[int, int]
    """(W, H) after the resize."""
    offset: tuple[int, int]
    """(x0, y0): top-left corner of the crop in resized pixels."""
    size: tuple[int, int]
    """(w, h) of the network input."""

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy) = resized / original size."""
        return (self.resized_size[0] / self.image_size[0], self.resized_size[1] / self.image_size[1])

    def image_to_network(self, uv: Tensor) -> Tensor:
        """Original-image pixel coordinates (..., 2) -> network-image coordinates."""
        s = uv.new_tensor(self.scale)
        return uv * s - uv.new_tensor(self.offset)

    def network_to_image(self, uv: Tensor) -> Tensor:
        """Network-image pixel coordinates (..., 2) -> original-image coordinates."""
        return (uv + uv.new_tensor(self.offset)) / uv.new_tensor(self.scale)

    def K_to_network(self, K: Tensor) -> Tensor:
        """Intrinsics (..., 3, 3) of the original image -> of the network input."""
        (sx, sy), (x0, y0) = self.scale, self.offset
        A = K.new_tensor([[sx, 0.0, -x0], [0.0, sy, -y0], [0.0, 0.0, 1.0]])
        return A @ K

    def K_to_image(self, K: Tensor) -> Tensor:
        """Intrinsics (..., 3, 3) estimated on the network input -> of the original image."""
        (sx, sy), (x0, y0) = self.scale, self.offset
        A = K.new_tensor([[1.0 / sx, 0.0, x0 / sx], [0.0, 1.0 / sy, y0 / sy], [0.0, 0.0, 1.0]])
        return A @ K

    def to_image(self, values: Tensor, mode: str = "bilinear") -> tuple[Tensor, Tensor]:
        """Resample a per-pixel network output (h, w) or (h, w, C) onto the original (H, W) pixel grid.

        Each original pixel centre is mapped into the network image and sampled there (``mode``
        'bilinear' or 'nearest'; edge pixels clamp). Returns ``(values (H, W[, C]), valid (H, W) bool)``
        where ``valid`` is False for pixels outside the cropped region.
        """
        squeeze = values.dim() == 2
        v = values[..., None] if squeeze else values
        w, h = self.size
        if v.shape[:2] != (h, w):
            raise ValueError(f"expected a ({h}, {w}, ...) map, got {tuple(values.shape)}")
        W, H = self.image_size
        dev = v.device
        ys, xs = torch.meshgrid(
            torch.arange(H, device=dev, dtype=torch.float32) + 0.5,
            torch.arange(W, device=dev, dtype=torch.float32) + 0.5,
            indexing="ij",
        )
        uv = self.image_to_network(torch.stack((xs, ys), dim=-1))
        valid = (uv[..., 0] >= 0) & (uv[..., 0] <= w) & (uv[..., 1] >= 0) & (uv[..., 1] <= h)
        grid = torch.stack((uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1), dim=-1)[None]
        src = v.permute(2, 0, 1)[None].to(torch.float32)
        out = F.grid_sample(src, grid, mode=mode, padding_mode="border", align_corners=False)[0]
        out = out.permute(1, 2, 0).to(values.dtype)
        return (out[..., 0] if squeeze else out), valid


def _to_uint8(image: np.ndarray | Tensor) -> np.ndarray:
    a = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    return a


def prepare_image(
    image: np.ndarray | Tensor, size: int = 512, patch_size: int = 16, square_ok: bool = False
) -> tuple[Tensor, NetworkCrop]:
    """Resize and crop one RGB image the way the released DUSt3R/MASt3R models were trained.

    ``image`` is (H, W, 3), float in [0, 1] or uint8. For ``size`` 512 (or any size other than 224): the
    long side is resized to ``size`` (Lanczos when shrinking, bicubic when enlarging, on 8-bit values),
    then the centred crop with both sides multiples of ``patch_size`` is taken; a square image is cropped
    to 4:3 unless ``square_ok``. For ``size`` 224 (the 224 linear model): the short side becomes 224 and
    the centred square is kept. Returns the (3, h, w) float32 tensor in [-1, 1] and its
    :class:`NetworkCrop`.
    """
    a = _to_uint8(image)
    H0, W0 = a.shape[:2]
    pil = Image.fromarray(a)
    target = round(size * max(W0 / H0, H0 / W0)) if size == 224 else size
    S = max(W0, H0)
    interp = Image.Resampling.LANCZOS if S > target else Image.Resampling.BICUBIC
    W1, H1 = (int(round(W0 * target / S)), int(round(H0 * target / S)))
    pil = pil.resize((W1, H1), interp)
    cx, cy = W1 // 2, H1 // 2
    if size == 224:
        halfw = halfh = min(cx, cy)
    else:
        half_p = patch_size // 2
        halfw, halfh = ((2 * cx) // patch_size) * half_p, ((2 * cy) // patch_size) * half_p
        if not square_ok and W1 == H1:
            halfh = (3 * halfw // 4) // half_p * half_p
    box = (cx - halfw, cy - halfh, cx + halfw, cy + halfh)
    crop = np.asarray(pil.crop(box), dtype=np.float32) / 255.0
    if crop.shape[0] % patch_size or crop.shape[1] % patch_size or min(crop.shape[:2]) == 0:
        raise ValueError(f"image {W0}x{H0} is too small for the network input at size {size}")
    tensor = torch.from_numpy((crop - 0.5) / 0.5).permute(2, 0, 1).contiguous()
    info = NetworkCrop((W0, H0), (W1, H1), (box[0], box[1]), (2 * halfw, 2 * halfh))
    return tensor, info
