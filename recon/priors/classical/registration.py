"""Registration: growing an ``SfMModel`` from an initial pair, one view at a time, by PnP or (with too
few 3D points) from a verified pair's essential matrix; the best of a few initial pairs is kept."""

from __future__ import annotations

import cv2
import numpy as np

from recon.errors import ReconError
from recon.priors.classical.bundle import project_points
from recon.priors.classical.config import SfMConfig
from recon.priors.classical.sfm_model import SfMModel, rotation_change_deg
from recon.priors.classical.tracks import TrackSet
from recon.priors.classical.twoview import TwoView


def _w2c_from_pnp(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """(4, 4) w2c from OpenCV's Rodrigues vector and translation."""
    w2c = np.eye(4)
    w2c[:3, :3] = cv2.Rodrigues(rvec)[0]
    w2c[:3, 3] = tvec.ravel()
    return w2c


def register_pnp(model: SfMModel, v: int) -> bool:
    """Place view v by PnP (EPnP in MAGSAC, then Levenberg-Marquardt on the inliers) on its observations
    of triangulated points; its PnP outliers are rejected. On failure the reason is recorded."""
    t, cfg = model.tracks, model.cfg
    el = model.correspondences_2d3d(v)
    need = cfg.pnp_min_inliers
    if len(el) < need:
        model.fail(v, f"only {len(el)} of its matches lie on reconstructed points "
                      f"(need {need}): too little overlap with the placed views")
        return False
    obj = model.X[t.trk[el]].astype(np.float64)
    img = t.xy[el].astype(np.float64)
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        obj, img, model.K, None, iterationsCount=cfg.ransac_max_iters, reprojectionError=2 * model.thr,
        confidence=cfg.ransac_confidence, flags=cv2.SOLVEPNP_EPNP,
    )
    n_inl = 0 if (not ok or inl is None) else len(inl)
    if n_inl < need:
        model.fail(v, f"PnP found {n_inl} consistent 2D-3D matches of {len(el)} (need {need}): "
                      "its matches to the placed views are unreliable")
        return False
    inl = inl.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], model.K, None, rvec, tvec)
    outl = np.ones(len(el), bool)
    outl[inl] = False
    model.place(v, _w2c_from_pnp(rvec, tvec), el[outl])
    return True


def register_from_pair(model: SfMModel, v: int, pairs: list[TwoView]) -> bool:
    """Place view v from its essential matrix with a placed view, when PnP has too few points.

    Wide-baseline captures often have few points seen by three views (each pair overlaps on a
    different part of the scene), but the relative rotation and baseline direction of a verified pair
    are known; only the baseline's length is missing, a single unknown that a handful of shared points
    fix (far fewer than PnP needs). The pair with the most essential-matrix inliers is used.
    """
    t, cfg = model.tracks, model.cfg
    cands = [p for p in pairs if p.R is not None and ((p.i == v and p.j in model.w2c) or
                                                       (p.j == v and p.i in model.w2c))]
    if not cands:
        return False
    p = max(cands, key=lambda q: q.n_e_inliers)
    a = p.i if p.j == v else p.j
    # relative pose a -> v
    R, tt = (p.R, p.t) if p.i == a else (p.R.T, -p.R.T @ p.t)
    Ra, ta = model.w2c[a][:3, :3], model.w2c[a][:3, 3]
    A_R, A_t = R @ Ra, R @ ta  # x_v = A_R X + A_t + s * tt
    el = model.correspondences_2d3d(v)
    if len(el) < cfg.min_scale_points:
        return False
    X = model.X[t.trk[el]]
    xn = np.c_[t.xy[el], np.ones(len(el))] @ np.linalg.inv(model.K).T
    A = X @ A_R.T + A_t
    c_a = np.cross(xn, A)
    c_b = np.cross(xn, np.broadcast_to(tt, A.shape))
    s_each = -(c_a * c_b).sum(1) / np.maximum((c_b * c_b).sum(1), 1e-12)
    s = float(np.median(s_each))
    if not np.isfinite(s) or s <= 0:
        return False
    # the pair's pose is a two-view estimate in a slightly different frame than the bundle-adjusted
    # one: refine it on the shared points (Levenberg-Marquardt from this start, then on the inliers)
    rvec, tvec = cv2.Rodrigues(A_R)[0], (A_t + s * tt).reshape(3, 1)
    img = t.xy[el].astype(np.float64)
    good = np.ones(len(el), bool)
    for _ in range(2):
        rvec, tvec = cv2.solvePnPRefineLM(X[good], img[good], model.K, None, rvec, tvec)
        w2c = _w2c_from_pnp(rvec, tvec)
        uv, z = project_points(w2c[None], model.focal, model.pp, X, np.zeros(len(el), int))
        good = (np.linalg.norm(uv - img, axis=1) < model.reproj) & (z > 0)
        if good.sum() < cfg.min_scale_points:
            return False
    # the refined rotation must stay close to the pair's: a large change means the few shared points
    # were outliers that dragged the pose away
    if rotation_change_deg(w2c[:3, :3], A_R) > cfg.max_pair_rotation_change_deg:
        return False
    model.place(v, w2c, el[~good])
    return True


def initial_pairs(pairs: list[TwoView], cfg: SfMConfig) -> list[TwoView]:
    """Candidate initial pairs, best first: many essential-matrix inliers and a wide enough baseline
    (median triangulation angle; its credit saturates at ``init_angle_deg``)."""
    cands = [p for p in pairs
             if p.n_e_inliers >= cfg.min_inliers and p.tri_angle_deg >= cfg.min_tri_angle_deg]

    def score(p: TwoView) -> float:
        return p.n_e_inliers * min(1.0, p.tri_angle_deg / cfg.init_angle_deg)

    return sorted(cands, key=score, reverse=True)


def grow(init: TwoView, pairs: list[TwoView], model: SfMModel, valid: list[int], refine_focal: bool) -> None:
    """Grow the empty ``model`` from the pair ``init`` by PnP, one view of ``valid`` at a time
    (best-connected first), falling back to placement from a pair of ``pairs``."""
    model.place(init.i, np.eye(4))
    w2c = np.eye(4)
    w2c[:3, :3] = init.R
    w2c[:3, 3] = init.t
    model.place(init.j, w2c)
    model.triangulate()
    model.bundle(fixed=init.i, refine_focal=False)
    if model.n_points() < model.cfg.pnp_min_inliers:
        return
    todo = [v for v in valid if v not in model.w2c]
    n_at_ba = len(model.w2c)
    while todo:
        # most 2D-3D correspondences first: the best-constrained view
        todo.sort(key=lambda v: len(model.correspondences_2d3d(v)), reverse=True)
        placed = next((v for v in todo if register_pnp(model, v)), None)
        if placed is None:
            placed = next((v for v in todo if register_from_pair(model, v, pairs)), None)
        if placed is None:
            break
        todo.remove(placed)
        model.triangulate()
        # Bundle-adjust after each of the first views, then whenever the model grew by a tenth (the cost
        # of a global BA grows with the model; PnP poses of a well-constrained model drift little). From
        # three views on the focal is observable: refining it early keeps a rough initial focal from
        # failing the registration of later views.
        if len(model.w2c) <= 5 or len(model.w2c) >= 1.1 * n_at_ba or not todo:
            model.bundle(fixed=init.i, refine_focal=refine_focal and len(model.w2c) >= 3)
            model.triangulate()
            n_at_ba = len(model.w2c)


def best_model(
    verified: list[TwoView], tracks: TrackSet, n_views: int, connected: list[int], K: np.ndarray,
    thr: float, cfg: SfMConfig, refine_focal: bool, names: list[str],
) -> tuple[SfMModel, list[tuple[str, str, int]]]:
    """Grow a model from each of the best ``cfg.init_attempts`` initial pairs until one places every
    connected view; keep the one with the most views, then points. Returns it and (view a, view b, views
    placed) per pair tried. Raises ReconError when no pair yields two views and enough points."""
    best: SfMModel | None = None
    tried = []
    for init in initial_pairs(verified, cfg)[: cfg.init_attempts]:
        model = SfMModel(tracks, n_views, K, thr, cfg)
        grow(init, verified, model, connected, refine_focal)
        tried.append((names[init.i], names[init.j], len(model.w2c)))
        if best is None or (len(model.w2c), model.n_points()) > (len(best.w2c), best.n_points()):
            best = model
        if len(model.w2c) == len(connected):
            break
    if best is None or len(best.w2c) < 2 or best.n_points() < cfg.pnp_min_inliers:
        raise ReconError(
            "could not find two photos with a usable baseline among "
            + ", ".join(names[v] for v in connected[:6])
            + "; take photos from positions further apart (not only rotating the camera)"
        )
    return best, tried
