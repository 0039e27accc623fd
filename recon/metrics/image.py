"""Image metrics: the one home of PSNR and SSIM (CONVENTIONS "metrics").

Images are float tensors in [0, 1], (H, W, 3) or batched (N, H, W, 3); batched metrics are the mean of
the per-image values. SSIM (11x11 Gaussian window, sigma 1.5) is differentiable and is also what the
training loss uses.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from recon.errors import ReconError

Tensor = torch.Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_batch(img: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    if img.shape != ref.shape:
        raise ReconError(f"image shapes differ: {tuple(img.shape)} vs {tuple(ref.shape)}")
    if img.dim() == 3:
        img, ref = img[None], ref[None]
    if img.dim() != 4:
        raise ReconError(f"images must be (H, W, C) or (N, H, W, C), got {tuple(img.shape)}")
    return img, ref


# --------------------------------------------------------------------------------------------------
# PSNR
# --------------------------------------------------------------------------------------------------


def psnr_per_image(img: Tensor, ref: Tensor) -> Tensor:
    """PSNR in dB (N,) of images (N, H, W, C) or a single (H, W, C) image (-> (1,)), peak value 1.

    The MSE is floored at 1e-10 so identical images give 100 dB rather than infinity.
    """
    img, ref = _as_batch(img, ref)
    mse = ((img.float() - ref.float()) ** 2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def psnr(img: Tensor, ref: Tensor) -> float:
    """PSNR in dB of an image (H, W, C) against ``ref``; for a batch (N, H, W, C), the mean per-image PSNR."""
    return float(psnr_per_image(img.detach(), ref.detach()).mean())


# --------------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------------


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float32, device=None):
    """Normalised 1D Gaussian taps (size,), centred on the middle tap."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def _blur(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian filter of x (B, C, H, W) with taps g (k,), 'valid' (no padding)."""
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_map(
    img: Tensor,
    ref: Tensor,
    *,
    padding: Literal["valid", "reflect"] = "valid",
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> Tensor:
    """Per-pixel SSIM (N, H', W', C) of images (N, H, W, C) or (H, W, C) (data range 1, K1 0.01, K2 0.03).

    Local statistics use an ``window`` x ``window`` Gaussian window (``sigma``), with population
    (biased) variances as in Wang et al. 2004. ``padding="valid"`` keeps only pixels whose window lies
    inside the image (H' = H - window + 1, the usual metric definition, as scikit-image crops);
    ``padding="reflect"`` mirrors the borders so every pixel gets a value (H' = H; used by the loss so
    border pixels also receive an SSIM gradient).
    """
    img, ref = _as_batch(img, ref)
    x = img.permute(0, 3, 1, 2)
    y = ref.permute(0, 3, 1, 2).to(x.dtype)
    r = window // 2
    if padding == "reflect":
        x = F.pad(x, (r, r, r, r), mode="reflect")
        y = F.pad(y, (r, r, r, r), mode="reflect")
    elif padding != "valid":
        raise ValueError(f"padding must be 'valid' or 'reflect', got {padding!r}")
    if x.shape[-1] < window or x.shape[-2] < window:
        size = tuple(img.shape[1:3])
        raise ReconError(f"images of {size} pixels are smaller than the {window}px SSIM window")
    g = gaussian_window_1d(window, sigma, x.dtype, x.device)
    # One filtering pass over the five statistics stacked along channels.
    c = x.shape[1]
    stats = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), g)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(c, dim=1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    c1 = SSIM_K1**2
    c2 = SSIM_K2**2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (num / den).permute(0, 2, 3, 1)


def ssim(
    img: Tensor,
    ref: Tensor,
    *,
    padding: Literal["valid", "reflect"] = "valid",
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """Mean SSIM of an image (H, W, C) or batch (N, H, W, C) against ``ref``; differentiable.

    ``reduction="none"`` returns the per-image values (N,). See :func:`ssim_map` for the definition.
    """
    per_image = ssim_map(img, ref, padding=padding).flatten(1).mean(1)
    if reduction == "none":
        return per_image
    return per_image.mean()
