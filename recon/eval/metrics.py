"""Moved to :mod:`recon.metrics` (a leaf package every stage may import). This module only re-exports it
for code written against the old path; import ``recon.metrics`` in new code."""

from recon.metrics.image import psnr, psnr_per_image, ssim, ssim_map  # noqa: F401
from recon.metrics.pose import (  # noqa: F401
    ATE_MIN_VIEWS,
    AUC_THRESHOLDS_DEG,
    aligned_centers,
    camera_pose_metrics,
    match_cameras,
    pose_auc,
    pose_metrics,
    relative_pose_errors,
)
