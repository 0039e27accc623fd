"""Incremental structure from motion for a few (3 to ~30) unposed photos: the driver.

Stages: SIFT/RootSIFT features (with affine simulation for few views; ``recon.matching``) -> mutual-NN +
ratio matching over a pair graph -> MAGSAC++ fundamental matrices (``verification.py``) -> a shared focal
(``focal.py``: EXIF; else self-calibration from the fundamental matrices, accepted only where the focal
also explains the matches as essential-matrix geometry, otherwise the middle of the focal range that does)
-> MAGSAC++ essential matrices -> feature tracks (``tracks.py``) -> a robust initial pair -> PnP
registration of the other views, or, with too few 3D points, placement from the view's essential matrix
with a placed view plus a scale from the shared points (``registration.py``), triangulation with angle and
reprojection checks, and bundle adjustment after every step, refining the focal from three views on (the
model: ``sfm_model.py``) -> guided matching of every pair of placed views along the epipolar lines of the
current cameras, re-triangulation and bundle adjustment on the denser, loop-closing tracks (``guided.py``)
-> checks of the cameras against every pair's own two-view geometry, with alternative models when they
disagree, views no consistent model explains left out, and a confidence per view (``verify.py``) -> the
result (``sfm_result.py``).

Everything is float64 numpy internally; the result carries project ``Cameras`` (float32 torch).
Never reads ``views.cameras``: reference cameras are for evaluation only.
"""

from __future__ import annotations

import time

import numpy as np

from recon.errors import ReconError
from recon.matching.features import Features, detect_features
from recon.priors.classical.config import SfMConfig
from recon.priors.classical.focal import focal_range_px, initial_focal
from recon.priors.classical.guided import guided_rounds
from recon.priors.classical.sfm_model import SfMModel
from recon.priors.classical.sfm_result import SfMResult, Tracks, assemble
from recon.priors.classical.tracks import TrackSet
from recon.priors.classical.verification import isolated_views, match_pairs, no_overlap_error, relative_poses
from recon.priors.classical.verify import final_check, trusted_model
from recon.views import Views

__all__ = ["SfMResult", "Tracks", "run_sfm"]


def run_sfm(views: Views, cfg: SfMConfig | None = None) -> SfMResult:
    """Cameras (shared pinhole K with centred principal point, w2c) and sparse points for ``views``.

    Views that cannot be placed are listed in ``failed`` with a one-line reason. Raises ReconError when
    fewer than two views can be placed (e.g. the photos do not overlap).
    """
    cfg = cfg or SfMConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    n, names = len(views), list(views.names)
    if n < 2:
        raise ReconError(f"structure from motion needs at least 2 photos, got {n}")
    W, H = views.size
    thr = max(cfg.min_thresh_px, cfg.thresh_px * max(W, H) / 1000.0)
    failed: dict[str, str] = {}
    feats, valid = _features(views, cfg, failed)
    timings["features_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    graph, pairs = match_pairs(feats, valid, thr, cfg)
    verified = [p for p in pairs if p.n_f_inliers >= cfg.min_inliers]
    timings["matching_s"] = time.perf_counter() - t1
    if not verified:
        raise no_overlap_error(pairs, valid, names, cfg)
    focal0 = initial_focal(views.exif_focal_px, verified, feats, (W, H), thr, cfg)
    K = np.array([[focal0.focal, 0, W / 2.0], [0, focal0.focal, H / 2.0], [0, 0, 1.0]])
    t2 = time.perf_counter()
    relative_poses(verified, feats, K, thr, cfg)
    timings["two_view_s"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    connected = sorted({v for p in verified for v in (p.i, p.j)})
    failed.update(isolated_views(pairs, valid, connected, names, cfg))
    tracks = TrackSet(feats, [p for p in verified if p.e_inliers is not None], 2.0 * thr)
    refine_f = cfg.refine_focal and focal0.source != "exif"
    model, tried, checks_info = trusted_model(verified, feats, tracks, n, connected, K, thr, cfg, refine_f,
                                              names)
    fixed = min(model.w2c)
    t4 = time.perf_counter()
    model, guided_info = guided_rounds(model, feats, graph, verified, fixed, refine_f, cfg)
    timings["guided_s"] = time.perf_counter() - t4
    ba_info = _final_bundle(model, fixed, refine_f and len(model.w2c) >= 3, focal0.focal, (W, H), cfg)
    checks_info.update(final_check(model, verified, feats, focal0.source, focal0.support, cfg, names))
    timings["registration_s"] = time.perf_counter() - t3 - timings["guided_s"]  # incl. bundle adjustment
    for v in connected:
        if v not in model.w2c:
            failed[names[v]] = model.failed_pnp.get(v, "not connected to the placed views by enough matches")

    result = assemble(views, model, failed)
    timings["total_s"] = time.perf_counter() - t0
    result.info.update({
        "focal_px": model.focal,
        "focal_init_px": focal0.focal,
        "focal_source": focal0.source,
        "focal_selfcal_px": None if focal0.selfcal is None else focal0.selfcal.focal_px,
        "focal_selfcal_confident": None if focal0.selfcal is None else focal0.selfcal.confident,
        "focal_support": focal0.support,
        "threshold_px": thr,
        "n_features": [len(f) for f in feats],
        "pairs": [
            {"i": names[p.i], "j": names[p.j], "matches": len(p.matches), "f_inliers": p.n_f_inliers,
             "e_inliers": p.n_e_inliers, "h_inliers": p.n_h_inliers, "tri_angle_deg": p.tri_angle_deg}
            for p in pairs
        ],
        "init_pairs_tried": tried,
        "guided_matches": guided_info,
        "tracks_dropped_inconsistent": tracks.n_dropped,
        "ba": ba_info,
        "confidence": checks_info.pop("confidence"),
        "verification": checks_info,
        "timings": timings,
    })
    return result


def _features(views: Views, cfg: SfMConfig, failed: dict[str, str]) -> tuple[list[Features], list[int]]:
    """Features of every view and the indices of those with enough keypoints; the others go to ``failed``."""
    affine = cfg.affine_features if len(views) <= cfg.affine_max_views else 0
    images = [im.detach().cpu().numpy().astype(np.float32) for im in views.images]
    feats = [detect_features(im, cfg.max_features, affine, cfg.affine_max_tilt) for im in images]
    valid = []
    for v, f in enumerate(feats):
        if len(f) < cfg.min_inliers:
            failed[views.names[v]] = f"only {len(f)} SIFT keypoints: the image is blank, blurred or too dark"
        else:
            valid.append(v)
    return feats, valid


def _final_bundle(model: SfMModel, fixed: int, refine_focal: bool, focal_init: float,
                  size_wh: tuple[int, int], cfg: SfMConfig) -> dict:
    """The last bundle adjustments (the focal too when ``refine_focal``: >= 3 views constrain it, 2 leave it
    weakly determined); a refined focal outside the field-of-view range is undone. Returns BA diagnostics."""
    model.bundle(fixed=fixed, refine_focal=refine_focal)
    model.triangulate()
    ba_info = model.bundle(fixed=fixed, refine_focal=refine_focal)
    f_lo, f_hi = focal_range_px(size_wh, cfg.fov_range_deg)
    if not f_lo <= model.focal <= f_hi:  # the views do not pin the focal down: keep the initial one
        model.set_focal(focal_init)
        ba_info = model.bundle(fixed=fixed, refine_focal=False)
        ba_info["focal_refinement"] = "rejected (left the field-of-view range)"
    return ba_info
