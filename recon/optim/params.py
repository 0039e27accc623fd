"""The optimised parameters: the Gaussian fields and their learning rates, and the pose-delta
parameterisation (see :mod:`recon.optim.trainer`)."""

from __future__ import annotations

import torch

from recon.cameras import Cameras, camera_centers, se3_exp
from recon.gaussians import num_sh_bases
from recon.optim.config import TrainConfig

Tensor = torch.Tensor

GAUSSIAN_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh0", "shN")


def scene_extent(cameras: Cameras, means: Tensor | None = None) -> float:
    """Scene length scale: 3DGS's 1.1 x the largest camera distance from the cameras' centroid.

    Sparse or nearly coincident cameras make that tiny, so it is floored at a tenth of the median distance
    from that centroid to the Gaussians (when given).
    """
    c = camera_centers(cameras.w2c.detach().double())
    centroid = c.mean(0)
    radius = float((c - centroid).norm(dim=-1).max()) if len(c) > 1 else 0.0
    floor = 0.0
    if means is not None and means.numel():
        floor = 0.1 * float((means.detach().double().cpu() - centroid.cpu()).norm(dim=-1).median())
    extent = 1.1 * max(radius, floor)
    return extent if extent > 0 else 1.0


def _pose_xi(delta: Tensor, extent: float) -> Tensor:
    """se(3) twists (N, 6) from the optimised deltas (translation in extent units)."""
    scale = delta.new_tensor([extent, extent, extent, 1.0, 1.0, 1.0])
    return delta * scale


def apply_pose_deltas(w2c_ref: Tensor, delta: Tensor, extent: float) -> Tensor:
    """w2c (N, 4, 4) = se3_exp(xi) @ w2c_ref for the optimised deltas (N, 6)."""
    return se3_exp(_pose_xi(delta, extent)) @ w2c_ref


def _pad_sh(shN: Tensor, degree: int) -> Tensor:
    """shN resized to ``degree``'s (degree+1)^2 - 1 coefficients (zeros appended, or higher bands dropped)."""
    k = num_sh_bases(degree) - 1
    if shN.shape[1] >= k:
        return shN[:, :k].clone()
    return torch.cat([shN, shN.new_zeros(shN.shape[0], k - shN.shape[1], 3)], dim=1)


def lr_table(cfg: TrainConfig, extent: float) -> dict[str, float]:
    """Learning rate of each Gaussian field (the position one scaled by the scene extent)."""
    return {
        "means": cfg.means_lr * extent,
        "quats": cfg.quats_lr,
        "log_scales": cfg.scales_lr,
        "opacity_logits": cfg.opacity_lr,
        "sh0": cfg.sh0_lr,
        "shN": cfg.shN_lr,
    }


def _make_optimizer(params: dict[str, Tensor], lrs: dict[str, float]) -> torch.optim.Adam:
    # eps 1e-15 as 3DGS: gradients of individual Gaussians can be tiny.
    groups = [{"params": [params[k]], "lr": lrs[k], "name": k} for k in GAUSSIAN_FIELDS]
    return torch.optim.Adam(groups, eps=1e-15)
