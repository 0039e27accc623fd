"""Rendering helpers over a :class:`~recon.gaussians.Gaussians` model: the background colour as a tensor,
one rasteriser call for a batch of raw camera matrices, and renders of every camera of a ``Cameras``.

Used by training, evaluation, refinement, export and the viewer alike; the Gaussians are duck-typed (any
object with ``activated()``/``means``), so this module needs nothing above ``render``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from recon.errors import ReconError
from recon.render import RenderOutput, rasterize, render_gaussians

if TYPE_CHECKING:
    from recon.cameras import Cameras
    from recon.gaussians.model import Gaussians

Tensor = torch.Tensor

__all__ = ["background_tensor", "rasterize_gaussians", "render_images"]


def background_tensor(background, device, dtype=torch.float32) -> Tensor | None:
    """The background colour (3,) on ``device`` (None stays None: black, no compositing)."""
    if background is None:
        return None
    return torch.as_tensor(background, dtype=dtype, device=device).reshape(3)


def rasterize_gaussians(
    g: Gaussians, w2c: Tensor, K: Tensor, width: int, height: int, sh_degree: int, bg: Tensor | None
) -> RenderOutput:
    """One rasteriser call for Gaussians ``g`` seen from C cameras (w2c (C,4,4), K (C,3,3)) of one size,
    colours evaluated up to ``sh_degree`` (the trainer's active degree, which may be below ``g``'s)."""
    a = g.activated()
    return rasterize(
        a["means"], a["quats"], a["scales"], a["opacities"], a["sh"], w2c, K, width, height,
        sh_degree=sh_degree, background=None if bg is None else bg.expand(w2c.shape[0], 3),
    )


def render_images(
    gaussians: Gaussians,
    cameras: Cameras,
    background: Tensor | tuple[float, float, float] | None = None,
) -> Tensor:
    """Colours (N, H, W, 3) of ``gaussians`` seen from every camera (all of one image size).

    A thin loop over :func:`recon.render.render_gaussians`, one camera at a time so that memory stays
    bounded for many views. No gradients are needed by a viewer or for evaluation: call it under
    ``torch.no_grad()`` there.
    """
    if len(cameras) == 0:
        raise ReconError("no cameras to render")
    if not bool((cameras.sizes == cameras.sizes[0]).all()):
        raise ReconError("cameras have different image sizes; render them in separate calls")
    bg = background_tensor(background, gaussians.means.device, gaussians.means.dtype)
    renders = [render_gaussians(gaussians, cameras.subset([i]), bg).rgb[..., :3] for i in range(len(cameras))]
    return torch.cat(renders)
