"""Image and camera-pose metrics (CONVENTIONS "metrics"): a leaf package that any stage may import.

- ``image``: PSNR, SSIM (the training loss's SSIM too).
- ``pose``: relative rotation / translation errors, their AUC, ATE after a similarity alignment.

It imports only torch, ``recon.cameras`` and ``recon.errors``.
"""

from recon.metrics.image import psnr, psnr_per_image, ssim, ssim_map
from recon.metrics.pose import (
    aligned_centers,
    camera_pose_metrics,
    match_cameras,
    pose_auc,
    pose_metrics,
    relative_pose_errors,
)

__all__ = [
    "aligned_centers",
    "camera_pose_metrics",
    "match_cameras",
    "pose_auc",
    "pose_metrics",
    "psnr",
    "psnr_per_image",
    "relative_pose_errors",
    "ssim",
    "ssim_map",
]
