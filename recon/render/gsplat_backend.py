"""The gsplat CUDA backend of :func:`recon.render.rasterize` (used only for CUDA tensors).

gsplat is imported lazily here so the rest of the package never needs its CUDA extension.  Its classic
rasteriser has the project's semantics except for the per-Gaussian alpha clamp (0.999 in gsplat 1.5.3,
0.99 in the project's own backends); see :mod:`recon.render.torch_ref`.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def rasterize_gsplat(
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
    sh_degree: int | None,
    background: Tensor | None,
    near_plane: float,
    far_plane: float,
    eps2d: float,
    tile_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Render with ``gsplat.rasterization`` in "RGB+ED" mode.

    Returns rgb (C, H, W, D) composited on ``background`` (C, D) or black, alpha (C, H, W, 1), expected
    depth (C, H, W, 1), means2d (C, N, 2) (gsplat's projected means, which receive gradients), and
    radii (C, N, 2).
    """
    from gsplat import rasterization  # lazy: needs the CUDA extension

    renders, alphas, meta = rasterization(
        means,
        quats,
        scales,
        opacities,
        colors,
        w2c,
        K,
        width,
        height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        sh_degree=sh_degree,
        packed=False,
        tile_size=tile_size,
        backgrounds=background,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    return renders[..., :-1], alphas, renders[..., -1:], meta["means2d"], meta["radii"]
