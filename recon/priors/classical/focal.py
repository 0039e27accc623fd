"""The initial shared focal of the SfM: EXIF, else self-calibration from the fundamental matrices checked
against the focals under which the matches are best explained as calibrated geometry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon.matching.features import Features
from recon.priors.classical.config import SfMConfig
from recon.priors.classical.twoview import FocalEstimate, TwoView, estimate_shared_focal, focal_inlier_support


@dataclass
class InitialFocal:
    """The focal (pixels) SfM starts from and where it came from.

    Attributes:
        focal: pixels of the views' image size; source: "exif", "self-calibration" or "inlier-support".
        selfcal: the self-calibration estimate (None with EXIF).
        support: {"focals": swept focals, "support": their relative essential-matrix inlier counts}
            (None with EXIF).
    """

    focal: float
    source: str
    selfcal: FocalEstimate | None = None
    support: dict | None = None


def focal_range_px(size_wh: tuple[int, int], fov_range_deg: tuple[float, float]) -> tuple[float, float]:
    """(lowest, highest) focal in pixels of a field-of-view range (degrees over the long side)."""
    lo, hi = (0.5 * max(size_wh) / np.tan(np.radians(a) / 2) for a in fov_range_deg[::-1])
    return lo, hi


def initial_focal(
    exif_focal_px: list[float | None] | None, verified: list[TwoView], feats: list[Features],
    size_wh: tuple[int, int], thr: float, cfg: SfMConfig,
) -> InitialFocal:
    """The median EXIF focal when any view has one; else the self-calibrated focal when it is confident and
    explains the matches about as well as the best focal of the sweep (``cfg.focal_support``), else the
    middle (in log focal) of the focals that do, for bundle adjustment to refine once three views are
    placed."""
    exif = [f for f in (exif_focal_px or []) if f]
    if exif:
        return InitialFocal(float(np.median(exif)), "exif")
    est = estimate_shared_focal([p.F for p in verified], [float(p.n_f_inliers) for p in verified], size_wh,
                                cfg.fov_range_deg)
    strongest = sorted(verified, key=lambda p: p.n_f_inliers, reverse=True)[: cfg.focal_sweep_pairs]
    corr = [(feats[p.i].xy[p.matches[:, 0]], feats[p.j].xy[p.matches[:, 1]]) for p in strongest]
    focals, support = focal_inlier_support(corr, size_wh, cfg.fov_range_deg, thr, cfg.ransac_confidence,
                                           cfg.ransac_max_iters)
    allowed = support >= cfg.focal_support * support.max()
    support_info = {"focals": focals.tolist(), "support": support.tolist()}
    k_est = int(np.argmin(np.abs(np.log(focals) - np.log(est.focal_px))))
    if est.confident and allowed[k_est]:
        return InitialFocal(est.focal_px, "self-calibration", est, support_info)
    return InitialFocal(float(np.exp(np.log(focals[allowed]).mean())), "inlier-support", est, support_info)
