"""Differentiable 3D Gaussian rasterisation: the one entry point :func:`rasterize` and its backends.

Every backend implements the same two stages with gsplat's classic semantics (documented in
:mod:`recon.render.torch_ref`):

1. ``project_gaussians(means, quats, scales, w2c, K, width, height, eps2d, near_plane, far_plane)``
   -> ``means2d (C,N,2), conics (C,N,3), depths (C,N), radii (C,N,2) int32``;
2. ``rasterize_to_pixels(means2d, conics, opacities, colors, depths, radii, width, height, tile_size)``
   -> ``colors (C,H,W,D), alphas (C,H,W,1), accumulated depth (C,H,W,1)``.

Backends: ``"torch"`` (:mod:`recon.render.torch_ref`, pure PyTorch, CPU or GPU), ``"native"``
(:mod:`recon.render.native`, C++ CPU kernels, when they build), ``"gsplat"`` (gsplat's CUDA kernels, CUDA
tensors only).  ``"auto"`` picks gsplat for CUDA tensors, else native when available, else torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from recon.render import torch_ref
from recon.render.sh import eval_sh, sh_colors

if TYPE_CHECKING:
    from recon.cameras import Cameras
    from recon.gaussians.model import Gaussians

Tensor = torch.Tensor
Backend = Literal["auto", "torch", "native", "gsplat"]

__all__ = [
    "Backend",
    "RenderOutput",
    "eval_sh",
    "native_available",
    "rasterize",
    "render_gaussians",
    "sh_colors",
]


@dataclass
class RenderOutput:
    """What :func:`rasterize` returns for C cameras of size H x W and N Gaussians.

    Attributes:
        rgb: (C, H, W, D) colours composited over the background (black when none was given).
        alpha: (C, H, W, 1) accumulated opacity ``sum_i w_i``.
        depth: (C, H, W, 1) expected camera z-depth ``sum_i w_i z_i / sum_i w_i`` (0 where nothing was hit).
        means2d: (C, N, 2) projected means; when it requires grad, ``retain_grad()`` was called on it so a
            densification strategy can read ``means2d.grad`` after ``backward()``.
        radii: (C, N, 2) int32 screen-space radii in pixels (0 = not rendered in that camera).
        backend: the backend that produced it ("torch", "native" or "gsplat").
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    means2d: Tensor
    radii: Tensor
    backend: str


@functools.cache
def _native_module():
    """The native backend module when it is importable and its kernels are available, else None.

    Decided once per process (building the kernels is the native module's business and is slow).
    """
    try:
        from recon.render import native  # written alongside the C++ kernels; may be missing or unbuildable
    except Exception:  # noqa: BLE001 - any import failure just means "no native backend"
        return None
    try:
        return native if native.available() else None
    except Exception:  # noqa: BLE001
        return None


def native_available() -> bool:
    """Whether the native C++ CPU backend can be used on this machine."""
    return _native_module() is not None


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in ("auto", "torch", "native", "gsplat"):
        raise ValueError(f"unknown render backend {backend!r}; use auto, torch, native or gsplat")
    if backend == "auto":
        if device.type == "cuda" and torch.cuda.is_available():
            return "gsplat"
        return "native" if native_available() else "torch"
    if backend == "gsplat" and device.type != "cuda":
        raise ValueError("the gsplat backend needs CUDA tensors; use backend='torch' or 'native' on CPU")
    if backend == "native" and not native_available():
        raise RuntimeError("the native render backend is not available (kernels missing or failed to build)")
    return backend


def _check_shapes(means, quats, scales, opacities, colors, w2c, K, sh_degree) -> None:
    N = means.shape[0]
    problems = []
    if means.shape != (N, 3):
        problems.append(f"means {tuple(means.shape)} (want (N, 3))")
    if quats.shape != (N, 4):
        problems.append(f"quats {tuple(quats.shape)} (want ({N}, 4))")
    if scales.shape != (N, 3):
        problems.append(f"scales {tuple(scales.shape)} (want ({N}, 3))")
    if opacities.shape != (N,):
        problems.append(f"opacities {tuple(opacities.shape)} (want ({N},))")
    C = w2c.shape[0]
    if w2c.shape != (C, 4, 4) or K.shape != (C, 3, 3):
        problems.append(f"w2c {tuple(w2c.shape)} / K {tuple(K.shape)} (want (C, 4, 4) / (C, 3, 3))")
    if sh_degree is None:
        if not (colors.dim() == 2 and colors.shape[0] == N) and not (
            colors.dim() == 3 and colors.shape[:2] == (C, N)
        ):
            problems.append(f"colors {tuple(colors.shape)} (want ({N}, D) or ({C}, {N}, D))")
    elif colors.dim() != 3 or colors.shape[::2] != (N, 3) or colors.shape[1] < (sh_degree + 1) ** 2:
        problems.append(f"SH colors {tuple(colors.shape)} (want ({N}, >= {(sh_degree + 1) ** 2}, 3))")
    if problems:
        raise ValueError("rasterize: bad input shapes: " + "; ".join(problems))


def _check_size(width: int, height: int) -> None:
    if int(width) != width or int(height) != height or width <= 0 or height <= 0:
        raise ValueError(f"rasterize: image size must be positive integers, got {width} x {height}")


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    w2c: Tensor,
    K: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    background: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    tile_size: int | None = None,
    backend: Backend = "auto",
) -> RenderOutput:
    """Render N activated Gaussians into C pinhole cameras of one size.

    Args:
        means: (N, 3) world positions.  quats: (N, 4) wxyz (normalised inside).  scales: (N, 3)
            standard deviations.  opacities: (N,) in [0, 1].
        colors: (N, D) (or (C, N, D)) features when ``sh_degree`` is None, else (N, K, 3) SH coefficients
            with K >= (sh_degree + 1)^2, evaluated per camera (``max(SH + 0.5, 0)``).
        w2c: (C, 4, 4) world-to-camera.  K: (C, 3, 3) intrinsics in pixels of the (width, height) image.
        background: (D,) or (C, D) colour behind the Gaussians, or None for black.
        near_plane, far_plane, eps2d: rasterisation settings (see :mod:`recon.render.torch_ref`).
        tile_size: tile edge in pixels; it changes speed only, never the image.  None picks each
            backend's fastest (16 for gsplat, ``torch_ref.DEFAULT_TILE_SIZE`` for torch, the native
            module's own default).
        backend: "auto", "torch", "native" or "gsplat".

    Everything is differentiable w.r.t. means, quats, scales, opacities, colors and w2c.
    """
    _check_shapes(means, quats, scales, opacities, colors, w2c, K, sh_degree)
    _check_size(width, height)
    width, height = int(width), int(height)
    name = _resolve_backend(backend, means.device)
    C = w2c.shape[0]
    if background is not None and background.dim() == 1:
        background = background.expand(C, background.shape[0])

    if name == "gsplat":
        from recon.render.gsplat_backend import rasterize_gsplat

        rgb, alpha, depth, means2d, radii = rasterize_gsplat(
            means, quats, scales, opacities, colors, w2c, K, width, height,
            sh_degree=sh_degree, background=background, near_plane=near_plane, far_plane=far_plane,
            eps2d=eps2d, tile_size=16 if tile_size is None else tile_size,
        )  # fmt: skip
    else:
        impl = torch_ref if name == "torch" else _native_module()
        means2d, conics, depths, radii = impl.project_gaussians(
            means, quats, scales, w2c, K, width, height,
            eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        )  # fmt: skip
        feats = colors if sh_degree is None else sh_colors(sh_degree, colors, means, w2c)
        if feats.dim() == 2:
            feats = feats.expand(C, *feats.shape)
        if tile_size is None and name == "torch":
            tile_size = torch_ref.DEFAULT_TILE_SIZE
        tiles = {} if tile_size is None else {"tile_size": tile_size}
        rgb, alpha, accum_depth = impl.rasterize_to_pixels(
            means2d, conics, opacities, feats, depths, radii, width, height, **tiles
        )
        depth = accum_depth / alpha.clamp_min(1e-10)
        if background is not None:
            rgb = rgb + (1.0 - alpha) * background[:, None, None, :]
    if means2d.requires_grad:
        means2d.retain_grad()
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, means2d=means2d, radii=radii, backend=name)


def render_gaussians(
    gaussians: Gaussians,
    cameras: Cameras,
    background: Tensor | None = None,
    backend: Backend = "auto",
) -> RenderOutput:
    """Render a :class:`~recon.gaussians.Gaussians` model into ``cameras`` (all of one image size).

    Cameras of different sizes must be rendered separately (e.g. ``cameras.subset([i])`` in a loop).
    """
    sizes = cameras.sizes
    if len(cameras) == 0:
        raise ValueError("render_gaussians: no cameras given")
    if not bool((sizes == sizes[:1]).all()):
        raise ValueError("render_gaussians: cameras have different image sizes; render them one at a time")
    width, height = int(sizes[0, 0]), int(sizes[0, 1])
    act = gaussians.activated()
    dev, dt = act["means"].device, act["means"].dtype
    return rasterize(
        act["means"],
        act["quats"],
        act["scales"],
        act["opacities"],
        act["sh"],
        cameras.w2c.to(dev, dt),
        cameras.K.to(dev, dt),
        width,
        height,
        sh_degree=gaussians.sh_degree,
        background=background,
        backend=backend,
    )
