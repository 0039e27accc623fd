"""Incremental structure from motion for a few (3 to ~30) unposed photos.

Stages: SIFT/RootSIFT features (with affine simulation for few views) -> mutual-NN + ratio matching over
a pair graph -> MAGSAC++ fundamental matrices -> a shared focal (EXIF; else self-calibration from the
fundamental matrices, accepted only where the focal also explains the matches as essential-matrix
geometry, otherwise the middle of the focal range that does) -> MAGSAC++ essential matrices -> feature
tracks -> a robust initial pair -> PnP registration of the other views (or, with too few 3D points,
placement from the view's essential matrix with a placed view plus a scale from the shared points),
triangulation with angle and reprojection checks, and bundle adjustment after every step, refining the
focal from three views on -> guided matching of every pair of placed views along the epipolar lines of
the current cameras, re-triangulation and bundle adjustment on the denser, loop-closing tracks.

Everything is float64 numpy internally; the result carries project ``Cameras`` (float32 torch).
Never reads ``views.cameras``: reference cameras are for evaluation only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from recon.cameras import Cameras
from recon.errors import ReconError
from recon.priors.classical.bundle import bundle_adjust, project_points
from recon.priors.classical.config import SfMConfig
from recon.priors.classical.features import Features, detect_features, match_descriptors, pair_graph
from recon.priors.classical.twoview import (
    TwoView,
    essential_magsac,
    estimate_shared_focal,
    focal_inlier_support,
    fundamental_from_poses,
    fundamental_magsac,
    homography_inliers,
    ray_angles_deg,
)
from recon.views import Views


@dataclass
class Tracks:
    """Observations of the sparse points, flat (one row per observation).

    Attributes:
        point: (O,) index into ``points3d``; view: (O,) index into the result's ``cameras``;
        xy: (O, 2) pixel position (project pixel convention).
    """

    point: np.ndarray
    view: np.ndarray
    xy: np.ndarray


@dataclass
class SfMResult:
    """Cameras and sparse structure of the views that could be placed.

    Attributes:
        cameras: placed views only, in input order; K for the views' image size, w2c (OpenCV).
        points3d: (P, 3) float64 world points; colors: (P, 3) float32 in [0, 1].
        tracks: the observations of every point in the placed views.
        failed: view name -> one-line reason, for views that could not be placed.
        neighbors: per placed camera (index into ``cameras``), the other placed cameras sorted by
            stereo usefulness (shared points, discounted below a 5 degree median triangulation angle).
        neighbor_scores: the matching scores.
        info: diagnostics (per-pair match statistics, focal estimate, timings, residuals).
    """

    cameras: Cameras
    points3d: np.ndarray
    colors: np.ndarray
    tracks: Tracks
    failed: dict[str, str] = field(default_factory=dict)
    neighbors: list[list[int]] = field(default_factory=list)
    neighbor_scores: list[list[float]] = field(default_factory=list)
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Tracks from pairwise matches
# --------------------------------------------------------------------------------------------------


class _TrackSet:
    """Feature tracks (connected components of pairwise inlier matches) as flat element arrays.

    Keypoints of one image closer than ``merge_radius_px`` are one image point found twice (at two scales
    or in two affine simulations); they are merged first, otherwise view a could match one copy and view b
    the other and no track would link a and b through this image. After merging, a track that still holds
    two features of one image is inconsistent (a wrong match somewhere) and is dropped.
    Element e belongs to track ``trk[e]`` and is feature ``feat[e]`` of view ``view[e]``.
    """

    def __init__(self, feats: list[Features], pairs: list[TwoView], merge_radius_px: float) -> None:
        self.merge_radius_px = merge_radius_px
        offset = np.cumsum([0] + [len(f) for f in feats])
        edges = []
        for tv in pairs:
            inl = tv.e_inliers if tv.e_inliers is not None and tv.e_inliers.any() else tv.f_inliers
            m = tv.matches[inl]
            edges.append(np.stack([offset[tv.i] + m[:, 0], offset[tv.j] + m[:, 1]], 1))
        canon = np.arange(offset[-1])  # feature -> the lowest-index keypoint within the merge radius
        for v, f in enumerate(feats):
            if len(f) < 2:
                continue
            close = cKDTree(f.xy).query_pairs(merge_radius_px, output_type="ndarray")
            g = coo_matrix((np.ones(len(close)), (close[:, 0], close[:, 1])), shape=(len(f), len(f)))
            _, lab = connected_components(g, directed=False)
            first = np.full(lab.max() + 1, len(f))
            np.minimum.at(first, lab, np.arange(len(f)))
            canon[offset[v] : offset[v + 1]] = offset[v] + first[lab]
        edges = [canon[e] for e in edges]
        e = np.concatenate(edges) if edges else np.zeros((0, 2), int)
        graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(offset[-1], offset[-1]))
        _, root = connected_components(graph, directed=False)
        view_of = np.repeat(np.arange(len(feats)), np.diff(offset))
        _, inv, counts = np.unique(root, return_inverse=True, return_counts=True)
        el = np.flatnonzero(counts[inv] >= 2)
        trk = inv[el]
        view = view_of[el]
        # consistency: one feature per view per track
        key = trk.astype(np.int64) * len(feats) + view
        _, kinv, kcount = np.unique(key, return_inverse=True, return_counts=True)
        bad_tracks = np.unique(trk[kcount[kinv] > 1])
        ok = ~np.isin(trk, bad_tracks)
        el, trk, view = el[ok], trk[ok], view[ok]
        _, trk = np.unique(trk, return_inverse=True)
        order = np.argsort(trk, kind="stable")
        self.trk = trk[order]
        self.view = view[order]
        self.feat = (el - offset[view])[order]
        all_xy = np.concatenate([f.xy for f in feats]) if offset[-1] else np.zeros((0, 2))
        all_rgb = np.concatenate([f.rgb for f in feats]) if offset[-1] else np.zeros((0, 3), np.float32)
        self.xy = all_xy[el[order]]
        self.rgb = all_rgb[el[order]]
        self.n_tracks = int(self.trk.max()) + 1 if len(el) else 0
        self.n_dropped = int(len(bad_tracks))


# --------------------------------------------------------------------------------------------------
# Triangulation
# --------------------------------------------------------------------------------------------------


def triangulate_dlt(P: np.ndarray, xn: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation of T points each seen k times.

    Args:
        P: (T, k, 3, 4) camera matrices [R | t]; xn: (T, k, 2) normalised image coordinates K^-1 x.
    Returns:
        (T, 3) points (rows of the null vector of the stacked constraints).
    """
    A = np.concatenate(
        [xn[..., 0:1] * P[..., 2, :] - P[..., 0, :], xn[..., 1:2] * P[..., 2, :] - P[..., 1, :]], axis=1
    )  # (T, 2k, 4)
    A /= np.maximum(np.linalg.norm(A, axis=2, keepdims=True), 1e-12)
    _, _, Vt = np.linalg.svd(A)
    Xh = Vt[:, -1]
    w = np.where(np.abs(Xh[:, 3]) < 1e-12, 1e-12, Xh[:, 3])
    return Xh[:, :3] / w[:, None]


class _Reconstruction:
    """State of one incremental reconstruction: registered poses and triangulated tracks."""

    def __init__(self, tracks: _TrackSet, n_views: int, K: np.ndarray, thr: float, cfg: SfMConfig) -> None:
        self.tracks = tracks
        self.n_views = n_views
        self.K = K
        self.focal = float(K[0, 0])
        self.pp = K[:2, 2].copy()
        self.thr = thr
        self.reproj = cfg.reproj_factor * thr
        self.cfg = cfg
        self.w2c: dict[int, np.ndarray] = {}
        self.X = np.full((tracks.n_tracks, 3), np.nan)
        self.el_ok = np.ones(len(tracks.trk), bool)
        self.failed_pnp: dict[int, str] = {}
        self.depth_range: dict[int, tuple[float, float]] = {}
        """Per view (near, far): new points must be seen within it (see ``SfMConfig.guided_depth_margin``);
        views not in it are unrestricted."""

    # -- helpers --------------------------------------------------------------------------------
    def registered_mask(self) -> np.ndarray:
        reg = np.zeros(self.n_views, bool)
        reg[list(self.w2c)] = True
        return reg[self.tracks.view]

    def triangulated(self) -> np.ndarray:
        return ~np.isnan(self.X[:, 0])

    def depth_envelope(self, margin: float) -> dict[int, tuple[float, float]]:
        """Per placed view, the (near, far) depths of its observed points (1st / 99th percentiles), widened
        by ``margin`` (relative); views with fewer than 10 observed points are left out."""
        t = self.tracks
        el = np.flatnonzero(self.el_ok & self.registered_mask() & self.triangulated()[t.trk])
        views = t.view[el]
        W = np.stack([self.w2c[v] for v in views]) if len(el) else np.zeros((0, 4, 4))
        _, z = project_points(W, self.focal, self.pp, self.X[t.trk[el]], np.arange(len(el)))
        env = {}
        for v in self.w2c:
            zv = z[(views == v) & (z > 0)]
            if len(zv) >= 10:
                lo, hi = np.quantile(zv, [0.01, 0.99])
                env[v] = (lo * (1 - margin), hi * (1 + margin))
        return env

    def _Kinv(self) -> np.ndarray:
        return np.linalg.inv(self.K)

    # -- triangulation --------------------------------------------------------------------------
    def triangulate(self) -> int:
        """Triangulate every untriangulated track with >= 2 usable observations in placed views.
        Returns the number of new points."""
        t = self.tracks
        use = self.el_ok & self.registered_mask() & ~self.triangulated()[t.trk]
        cnt = np.bincount(t.trk[use], minlength=t.n_tracks)
        cand = np.flatnonzero(cnt >= 2)
        if len(cand) == 0:
            return 0
        Kinv = self._Kinv()
        new = 0
        for k in np.unique(cnt[cand]):
            ids = cand[cnt[cand] == k]
            sel = use & np.isin(t.trk, ids)
            el = np.flatnonzero(sel)  # sorted by track, k per track
            el = el.reshape(len(ids), k)
            P = np.stack([[self.w2c[v][:3] for v in row] for row in t.view[el]])
            xn = (np.c_[t.xy[el.ravel()], np.ones(el.size)] @ Kinv.T)[:, :2].reshape(len(ids), k, 2)
            X = triangulate_dlt(P, xn)
            ok, el_bad = self._check(X, el)
            self.el_ok[el_bad] = False
            self.X[ids[ok]] = X[ok]
            new += int(ok.sum())
        return new

    def _check(self, X: np.ndarray, el: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of the (T,) new points pass depth, reprojection and angle checks; bad observations."""
        t = self.tracks
        T, k = el.shape
        W = np.stack([self.w2c[v] for v in t.view[el.ravel()]])
        uv, z = project_points(W, self.focal, self.pp, np.repeat(X, k, axis=0), np.arange(T * k))
        err = np.linalg.norm(uv - t.xy[el.ravel()], axis=1).reshape(T, k)
        z = z.reshape(T, k)
        good_obs = (err < self.reproj) & (z > 0)
        if self.depth_range:
            near, far = (np.array([self.depth_range.get(v, (0.0, np.inf))[e] for v in t.view[el.ravel()]])
                         for e in (0, 1))
            good_obs &= ((z.ravel() >= near) & (z.ravel() <= far)).reshape(T, k)
        C = -np.einsum("nji,nj->ni", W[:, :3, :3], W[:, :3, 3]).reshape(T, k, 3)
        rays = X[:, None] - C
        rays /= np.maximum(np.linalg.norm(rays, axis=2, keepdims=True), 1e-12)
        cos = np.einsum("tad,tbd->tab", rays, rays)
        max_angle = np.degrees(np.arccos(np.clip(cos.min(axis=(1, 2)), -1, 1)))
        ok = good_obs.all(1) & (max_angle >= self.cfg.min_tri_angle_deg) & np.isfinite(X).all(1)
        # observations that disagree with an otherwise consistent track are dropped so the track can be
        # re-triangulated from the rest next time
        bad = el[~ok & (good_obs.sum(1) >= 2)][~good_obs[~ok & (good_obs.sum(1) >= 2)]]
        return ok, bad

    # -- registration -----------------------------------------------------------------------------
    def correspondences_2d3d(self, v: int) -> np.ndarray:
        t = self.tracks
        return np.flatnonzero((t.view == v) & self.el_ok & self.triangulated()[t.trk])

    def register_pnp(self, v: int) -> bool:
        t = self.tracks
        el = self.correspondences_2d3d(v)
        need = self.cfg.pnp_min_inliers
        if len(el) < need:
            self.failed_pnp[v] = (f"only {len(el)} of its matches lie on reconstructed points "
                                  f"(need {need}): too little overlap with the placed views")
            return False
        obj = self.X[t.trk[el]].astype(np.float64)
        img = t.xy[el].astype(np.float64)
        ok, rvec, tvec, inl = cv2.solvePnPRansac(
            obj, img, self.K, None, iterationsCount=self.cfg.ransac_max_iters, reprojectionError=2 * self.thr,
            confidence=self.cfg.ransac_confidence, flags=cv2.SOLVEPNP_EPNP,
        )
        n_inl = 0 if (not ok or inl is None) else len(inl)
        if n_inl < need:
            self.failed_pnp[v] = (f"PnP found {n_inl} consistent 2D-3D matches of {len(el)} (need {need}): "
                                  "its matches to the placed views are unreliable")
            return False
        inl = inl.ravel()
        rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], self.K, None, rvec, tvec)
        w2c = np.eye(4)
        w2c[:3, :3] = cv2.Rodrigues(rvec)[0]
        w2c[:3, 3] = tvec.ravel()
        self.w2c[v] = w2c
        outl = np.ones(len(el), bool)
        outl[inl] = False
        self.el_ok[el[outl]] = False
        self.failed_pnp.pop(v, None)
        return True

    def register_from_pair(self, v: int, pairs: list[TwoView]) -> bool:
        """Place view v from its essential matrix with a placed view, when PnP has too few points.

        Wide-baseline captures often have few points seen by three views (each pair overlaps on a
        different part of the scene), but the relative rotation and baseline direction of a verified pair
        are known; only the baseline's length is missing, a single unknown that a handful of shared points
        fix (far fewer than PnP needs). The pair with the most essential-matrix inliers is used.
        """
        t = self.tracks
        cands = [p for p in pairs if p.R is not None and ((p.i == v and p.j in self.w2c) or
                                                           (p.j == v and p.i in self.w2c))]
        if not cands:
            return False
        p = max(cands, key=lambda q: q.n_e_inliers)
        a = p.i if p.j == v else p.j
        # relative pose a -> v
        R, tt = (p.R, p.t) if p.i == a else (p.R.T, -p.R.T @ p.t)
        Ra, ta = self.w2c[a][:3, :3], self.w2c[a][:3, 3]
        A_R, A_t = R @ Ra, R @ ta  # x_v = A_R X + A_t + s * tt
        el = self.correspondences_2d3d(v)
        if len(el) < self.cfg.min_scale_points:
            return False
        X = self.X[t.trk[el]]
        xn = np.c_[t.xy[el], np.ones(len(el))] @ np.linalg.inv(self.K).T
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
            rvec, tvec = cv2.solvePnPRefineLM(X[good], img[good], self.K, None, rvec, tvec)
            w2c = np.eye(4)
            w2c[:3, :3] = cv2.Rodrigues(rvec)[0]
            w2c[:3, 3] = tvec.ravel()
            uv, z = project_points(w2c[None], self.focal, self.pp, X, np.zeros(len(el), int))
            good = (np.linalg.norm(uv - img, axis=1) < self.reproj) & (z > 0)
            if good.sum() < self.cfg.min_scale_points:
                return False
        # the refined rotation must stay close to the pair's: a large change means the few shared points
        # were outliers that dragged the pose away
        dR = np.degrees(np.arccos(np.clip((np.trace(w2c[:3, :3] @ A_R.T) - 1) / 2, -1, 1)))
        if dR > self.cfg.max_pair_rotation_change_deg:
            return False
        self.w2c[v] = w2c
        self.el_ok[el[~good]] = False
        self.failed_pnp.pop(v, None)
        return True

    # -- bundle adjustment -------------------------------------------------------------------------
    def bundle(self, fixed: int, refine_focal: bool) -> dict:
        t = self.tracks
        tri = self.triangulated()
        use = self.el_ok & self.registered_mask() & tri[t.trk]
        pts = np.flatnonzero(np.bincount(t.trk[use], minlength=t.n_tracks) >= 2)
        use &= np.isin(t.trk, pts)
        views = sorted(self.w2c)
        vslot = {v: i for i, v in enumerate(views)}
        pslot = -np.ones(t.n_tracks, int)
        pslot[pts] = np.arange(len(pts))
        el = np.flatnonzero(use)
        res = bundle_adjust(
            np.stack([self.w2c[v] for v in views]), self.focal, self.pp, self.X[pts],
            np.array([vslot[v] for v in t.view[el]]), pslot[t.trk[el]], t.xy[el],
            fixed_cams=(vslot[fixed],), refine_focal=refine_focal, loss=self.cfg.ba_loss,
            loss_scale_px=self.thr, max_nfev=self.cfg.ba_max_nfev,
        )
        for v in views:
            self.w2c[v] = res.w2c[vslot[v]]
        self.focal = res.focal
        self.K = np.array([[self.focal, 0, self.pp[0]], [0, self.focal, self.pp[1]], [0, 0, 1.0]])
        self.X[pts] = res.points
        # reject observations that BA could not fit; drop points left with < 2 observations or behind
        self.el_ok[el[res.residuals > self.reproj]] = False
        n_good = np.bincount(pslot[t.trk[el[res.residuals <= self.reproj]]], minlength=len(pts))
        self.X[pts[n_good < 2]] = np.nan
        return {"median_before_px": res.median_before_px, "median_after_px": float(np.median(res.residuals)),
                "points": len(pts), "observations": len(el), "nfev": res.nfev}


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------


def _threshold(cfg: SfMConfig, size_wh: tuple[int, int]) -> float:
    return max(cfg.min_thresh_px, cfg.thresh_px * max(size_wh) / 1000.0)


def _images_np(views: Views) -> list[np.ndarray]:
    return [im.detach().cpu().numpy().astype(np.float32) for im in views.images]


def _initial_pairs(pairs: list[TwoView], cfg: SfMConfig) -> list[TwoView]:
    """Candidate initial pairs, best first: many essential-matrix inliers and a wide enough baseline
    (median triangulation angle; its credit saturates at ``init_angle_deg``)."""
    cands = [p for p in pairs
             if p.n_e_inliers >= cfg.min_inliers and p.tri_angle_deg >= cfg.min_tri_angle_deg]

    def score(p: TwoView) -> float:
        return p.n_e_inliers * min(1.0, p.tri_angle_deg / cfg.init_angle_deg)

    return sorted(cands, key=score, reverse=True)


def _incremental(
    init: TwoView,
    pairs: list[TwoView],
    tracks: _TrackSet,
    n_views: int,
    valid: list[int],
    K: np.ndarray,
    thr: float,
    cfg: SfMConfig,
    refine_focal: bool,
) -> _Reconstruction:
    """Grow a reconstruction from the pair ``init`` by PnP, one view at a time (best-connected first)."""
    rec = _Reconstruction(tracks, n_views, K, thr, cfg)
    rec.w2c[init.i] = np.eye(4)
    w2c = np.eye(4)
    w2c[:3, :3] = init.R
    w2c[:3, 3] = init.t
    rec.w2c[init.j] = w2c
    rec.triangulate()
    rec.bundle(fixed=init.i, refine_focal=False)
    if rec.triangulated().sum() < cfg.pnp_min_inliers:
        return rec
    todo = [v for v in valid if v not in rec.w2c]
    n_at_ba = len(rec.w2c)
    while todo:
        # most 2D-3D correspondences first: the best-constrained view
        todo.sort(key=lambda v: len(rec.correspondences_2d3d(v)), reverse=True)
        placed = None
        for v in todo:
            if rec.register_pnp(v):
                placed = v
                break
        if placed is None:
            for v in todo:
                if rec.register_from_pair(v, pairs):
                    placed = v
                    break
        if placed is None:
            break
        todo.remove(placed)
        rec.triangulate()
        # Bundle-adjust after each of the first views, then whenever the model grew by a tenth (the cost
        # of a global BA grows with the model; PnP poses of a well-constrained model drift little). From
        # three views on the focal is observable: refining it early keeps a rough initial focal from
        # failing the registration of later views.
        if len(rec.w2c) <= 5 or len(rec.w2c) >= 1.1 * n_at_ba or not todo:
            rec.bundle(fixed=init.i, refine_focal=refine_focal and len(rec.w2c) >= 3)
            rec.triangulate()
            n_at_ba = len(rec.w2c)
    return rec


def _guided_rematch(
    rec: _Reconstruction,
    feats: list[Features],
    graph: list[tuple[int, int]],
    verified: list[TwoView],
    fixed: int,
    refine_focal: bool,
    env: dict[int, tuple[float, float]],
) -> tuple[_Reconstruction, dict]:
    """Match every pair of the pair graph whose views are both placed again, guided by the epipolar
    geometry of the current cameras, and rebuild the model on the union of these and the verified matches.

    Sparse wide-baseline captures leave few unguided matches: the ratio test over the whole image rejects
    repeated texture, and pairs seen from very different directions may not verify at all, so the views
    form a chain and the shared focal is barely observable. Along an epipolar line most of that ambiguity
    disappears (standard two-stage, guided matching). The new tracks close loops between views and cover
    more of each image, which pins down the focal and the relative rotations. The cameras are kept; points
    are re-triangulated with the usual angle and reprojection checks, kept only within each view's depth
    range ``env`` (see ``SfMConfig.guided_depth_margin``) and bundle-adjusted with the cameras.
    Returns (the reconstruction, {"pairs": pairs matched, "matches": guided matches found, "kept": whether
    the new model replaced the old one}).
    """
    cfg = rec.cfg
    by_pair = {(p.i, p.j): p for p in verified}
    pairs: list[TwoView] = []
    n_new = 0
    for i, j in graph:
        if i not in rec.w2c or j not in rec.w2c:
            continue
        F = fundamental_from_poses(rec.K, rec.w2c[i], rec.w2c[j])
        m = match_descriptors(feats[i], feats[j], cfg.ratio, F=F,
                              max_epipolar_px=cfg.guided_epipolar_factor * rec.thr)
        n_new += len(m)
        old = by_pair.get((i, j))
        if old is not None and old.e_inliers is not None:
            m = np.unique(np.concatenate([old.matches[old.e_inliers], m]), axis=0)
        if len(m):
            pairs.append(TwoView(i, j, m, e_inliers=np.ones(len(m), bool)))
    tracks = _TrackSet(feats, pairs, rec.tracks.merge_radius_px)
    new = _Reconstruction(tracks, rec.n_views, rec.K, rec.thr, cfg)
    new.w2c = {v: w.copy() for v, w in rec.w2c.items()}
    new.failed_pnp = dict(rec.failed_pnp)
    new.depth_range = dict(env)
    info = {"pairs": len(pairs), "matches": n_new, "points": new.triangulate()}
    info["kept"] = info["points"] >= cfg.pnp_min_inliers
    if not info["kept"]:
        return rec, info  # nothing usable: keep the old model
    new.bundle(fixed=fixed, refine_focal=refine_focal)
    new.triangulate()
    return new, info


def _model_change(before_w2c: dict[int, np.ndarray], before_focal: float, rec: _Reconstruction) -> dict:
    """How far a refinement moved the model: the largest rotation change of a camera (degrees, relative to
    the fixed gauge, so it is invariant to how the cameras were expressed) and the relative focal change."""
    rot = 0.0
    for v, w in before_w2c.items():
        if v in rec.w2c:
            R = rec.w2c[v][:3, :3] @ w[:3, :3].T
            rot = max(rot, float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)))))
    return {"rotation_deg": rot, "focal_rel": abs(rec.focal / before_focal - 1.0)}


def run_sfm(views: Views, cfg: SfMConfig | None = None) -> SfMResult:
    """Cameras (shared pinhole K with centred principal point, w2c) and sparse points for ``views``.

    Views that cannot be placed are listed in ``failed`` with a one-line reason. Raises ReconError when
    fewer than two views can be placed (e.g. the photos do not overlap).
    """
    cfg = cfg or SfMConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    n = len(views)
    names = list(views.names)
    if n < 2:
        raise ReconError(f"structure from motion needs at least 2 photos, got {n}")
    W, H = views.size
    thr = _threshold(cfg, (W, H))
    failed: dict[str, str] = {}

    # features
    affine = cfg.affine_features if n <= cfg.affine_max_views else 0
    feats = [detect_features(im, cfg.max_features, affine, cfg.affine_max_tilt) for im in _images_np(views)]
    valid = []
    for v, f in enumerate(feats):
        if len(f) < cfg.min_inliers:
            failed[names[v]] = f"only {len(f)} SIFT keypoints: the image is blank, blurred or too dark"
        else:
            valid.append(v)
    timings["features_s"] = time.perf_counter() - t0

    # matching and fundamental matrices
    t1 = time.perf_counter()
    sub = [feats[v] for v in valid]
    local_pairs = pair_graph(sub, cfg.exhaustive_max, cfg.window, cfg.retrieval_k)
    graph = [(valid[a], valid[b]) for a, b in local_pairs]
    pairs: list[TwoView] = []
    for i, j in graph:
        m = match_descriptors(feats[i], feats[j], cfg.ratio)
        tv = TwoView(i, j, m)
        if len(m) >= cfg.min_inliers:
            tv.F, tv.f_inliers = fundamental_magsac(
                feats[i].xy[m[:, 0]], feats[j].xy[m[:, 1]], thr, cfg.ransac_confidence, cfg.ransac_max_iters
            )
        pairs.append(tv)
    verified = [p for p in pairs if p.n_f_inliers >= cfg.min_inliers]
    timings["matching_s"] = time.perf_counter() - t1
    best_of = {v: (0, -1) for v in range(n)}
    for p in pairs:
        for a, b in ((p.i, p.j), (p.j, p.i)):
            if p.n_f_inliers > best_of[a][0]:
                best_of[a] = (p.n_f_inliers, b)
    if not verified:
        best = max(pairs, key=lambda p: p.n_f_inliers, default=None)
        shown = ", ".join(names[v] for v in valid[:6]) + (" ..." if len(valid) > 6 else "")
        detail = "" if best is None else (f" (best pair {names[best.i]} / {names[best.j]}: "
                                          f"{best.n_f_inliers} "
                                          f"verified matches, need {cfg.min_inliers})")
        raise ReconError(f"the photos {shown} share no reliable feature matches{detail}; "
                         "give overlapping photos of one scene")

    # focal: EXIF, else self-calibration from the fundamental matrices checked against the focals under
    # which the matches are best explained as calibrated geometry (essential-matrix inliers)
    exif = [f for f in (views.exif_focal_px or []) if f]
    est, support_info = None, None
    if exif:
        focal, focal_src = float(np.median(exif)), "exif"
    else:
        est = estimate_shared_focal([p.F for p in verified], [float(p.n_f_inliers) for p in verified], (W, H),
                                    cfg.fov_range_deg)
        strongest = sorted(verified, key=lambda p: p.n_f_inliers, reverse=True)[: cfg.focal_sweep_pairs]
        corr = [(feats[p.i].xy[p.matches[:, 0]], feats[p.j].xy[p.matches[:, 1]]) for p in strongest]
        focals, support = focal_inlier_support(corr, (W, H), cfg.fov_range_deg, thr, cfg.ransac_confidence,
                                               cfg.ransac_max_iters)
        allowed = support >= cfg.focal_support * support.max()
        support_info = {"focals": focals.tolist(), "support": support.tolist()}
        k_est = int(np.argmin(np.abs(np.log(focals) - np.log(est.focal_px))))
        if est.confident and allowed[k_est]:
            focal, focal_src = est.focal_px, "self-calibration"
        else:
            # the data only bound the focal: take the middle (in log focal) of the allowed range and let
            # bundle adjustment refine it once three views are placed
            focal = float(np.exp(np.log(focals[allowed]).mean()))
            focal_src = "inlier-support"
    K = np.array([[focal, 0, W / 2.0], [0, focal, H / 2.0], [0, 0, 1.0]])

    # essential matrices, relative poses and baselines
    t2 = time.perf_counter()
    for p in verified:
        xa, xb = feats[p.i].xy[p.matches[:, 0]], feats[p.j].xy[p.matches[:, 1]]
        p.E, p.R, p.t, p.e_inliers = essential_magsac(
            xa, xb, K, thr, cfg.ransac_confidence, cfg.ransac_max_iters
        )
        p.n_h_inliers = homography_inliers(xa, xb, thr, cfg.ransac_confidence)
        if p.R is not None and p.e_inliers.any():
            p.tri_angle_deg = float(np.median(ray_angles_deg(xa[p.e_inliers], xb[p.e_inliers], K, p.R, p.t)))
    timings["two_view_s"] = time.perf_counter() - t2

    # tracks and incremental reconstruction
    t3 = time.perf_counter()
    connected = sorted({v for p in verified for v in (p.i, p.j)})
    for v in valid:
        if v not in connected:
            cnt, other = best_of[v]
            with_ = f" (best: {names[other]})" if other >= 0 else ""
            failed[names[v]] = (f"shares at most {cnt} geometrically verified matches with any other photo"
                                f"{with_}, need {cfg.min_inliers}: it does not overlap the others")
    tracks = _TrackSet(feats, [p for p in verified if p.e_inliers is not None], 2.0 * thr)
    refine_f = cfg.refine_focal and focal_src != "exif"
    best: _Reconstruction | None = None
    tried = []
    for init in _initial_pairs(verified, cfg)[: cfg.init_attempts]:
        rec = _incremental(init, verified, tracks, n, connected, K, thr, cfg, refine_f)
        tried.append((names[init.i], names[init.j], len(rec.w2c)))
        key = (len(rec.w2c), int(rec.triangulated().sum()))
        if best is None or key > (len(best.w2c), int(best.triangulated().sum())):
            best = rec
        if len(rec.w2c) == len(connected):
            break
    if best is None or len(best.w2c) < 2 or best.triangulated().sum() < cfg.pnp_min_inliers:
        raise ReconError(
            "could not find two photos with a usable baseline among "
            + ", ".join(names[v] for v in connected[:6])
            + "; take photos from positions further apart (not only rotating the camera)"
        )
    rec = best
    fixed = min(rec.w2c)
    guided_info = []
    t4 = time.perf_counter()
    env = rec.depth_envelope(cfg.guided_depth_margin)
    # With two views the guided matches would be chosen by the very epipolar geometry they then re-estimate,
    # with nothing to check them against and no focal to refine (measured: no gain, sometimes a loss).
    for _ in range(cfg.guided_rounds if len(rec.w2c) >= 3 else 0):
        before_w2c, before_f = {v: w.copy() for v, w in rec.w2c.items()}, rec.focal
        rec, round_info = _guided_rematch(rec, feats, graph, verified, fixed, refine_f, env)
        round_info["change"] = _model_change(before_w2c, before_f, rec)
        guided_info.append(round_info)
        if round_info["change"]["rotation_deg"] < cfg.guided_converged_deg and \
                round_info["change"]["focal_rel"] < cfg.guided_converged_focal:
            break  # converged: another round would re-find the same matches
    timings["guided_s"] = time.perf_counter() - t4
    # final refinement: the focal too, when >= 3 views constrain it (2 views leave it weakly determined)
    refine_f = refine_f and len(rec.w2c) >= 3
    ba_info = rec.bundle(fixed=fixed, refine_focal=refine_f)
    rec.triangulate()
    ba_info = rec.bundle(fixed=fixed, refine_focal=refine_f)
    f_lo, f_hi = (0.5 * max(W, H) / np.tan(np.radians(a) / 2) for a in cfg.fov_range_deg[::-1])
    if not f_lo <= rec.focal <= f_hi:  # the views do not pin the focal down: keep the initial one
        rec.focal = focal
        rec.K = K.copy()
        ba_info = rec.bundle(fixed=fixed, refine_focal=False)
        ba_info["focal_refinement"] = "rejected (left the field-of-view range)"
    timings["registration_s"] = time.perf_counter() - t3 - timings["guided_s"]  # incl. bundle adjustment
    for v in connected:
        if v not in rec.w2c:
            failed[names[v]] = rec.failed_pnp.get(v, "not connected to the placed views by enough matches")

    result = _assemble(views, rec, failed)
    timings["total_s"] = time.perf_counter() - t0
    result.info.update({
        "focal_px": rec.focal,
        "focal_init_px": focal,
        "focal_source": focal_src,
        "focal_selfcal_px": None if est is None else est.focal_px,
        "focal_selfcal_confident": None if est is None else est.confident,
        "focal_support": support_info,
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
        "timings": timings,
    })
    return result


def _assemble(views: Views, rec: _Reconstruction, failed: dict[str, str]) -> SfMResult:
    """Package the reconstruction: placed views in input order, world scaled to a median depth of 1."""
    t = rec.tracks
    placed = sorted(rec.w2c)
    slot = {v: i for i, v in enumerate(placed)}
    tri = rec.triangulated()
    use = rec.el_ok & rec.registered_mask() & tri[t.trk]
    pts = np.flatnonzero(np.bincount(t.trk[use], minlength=t.n_tracks) >= 2)
    use &= np.isin(t.trk, pts)
    pslot = -np.ones(t.n_tracks, int)
    pslot[pts] = np.arange(len(pts))
    el = np.flatnonzero(use)
    w2c = np.stack([rec.w2c[v] for v in placed])
    X = rec.X[pts]
    # scale gauge: median depth of the observed points = 1 (the reference view stays at the origin)
    obs_view = np.array([slot[v] for v in t.view[el]], dtype=np.int64)
    _, z = project_points(w2c, rec.focal, rec.pp, X[pslot[t.trk[el]]], obs_view)
    s = 1.0 / max(float(np.median(z[z > 0])) if (z > 0).any() else 1.0, 1e-12)
    X = X * s
    w2c[:, :3, 3] *= s
    colors = np.zeros((len(pts), 3), np.float32)
    np.add.at(colors, pslot[t.trk[el]], t.rgb[el])
    colors /= np.maximum(np.bincount(pslot[t.trk[el]], minlength=len(pts)), 1)[:, None]
    tracks = Tracks(pslot[t.trk[el]], np.array([slot[v] for v in t.view[el]], dtype=np.int64), t.xy[el])

    # stereo neighbours: shared points, discounted when their median triangulation angle is small
    m = len(placed)
    C = -np.einsum("nji,nj->ni", w2c[:, :3, :3], w2c[:, :3, 3])
    vis = [set(tracks.point[tracks.view == a].tolist()) for a in range(m)]
    score = np.zeros((m, m))
    for a in range(m):
        for b in range(a + 1, m):
            shared = np.array(sorted(vis[a] & vis[b]), dtype=int)
            if len(shared) == 0:
                continue
            ra = X[shared] - C[a]
            rb = X[shared] - C[b]
            norm = np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1)
            cos = (ra * rb).sum(1) / np.maximum(norm, 1e-12)
            ang = float(np.median(np.degrees(np.arccos(np.clip(cos, -1, 1)))))
            score[a, b] = score[b, a] = len(shared) * min(1.0, ang / 5.0)
    neighbors = [[int(b) for b in np.argsort(-score[a], kind="stable") if b != a and score[a, b] > 0]
                 for a in range(m)]
    neighbor_scores = [[float(score[a, b]) for b in neighbors[a]] for a in range(m)]

    W, H = views.size
    K = torch.tensor([[rec.focal, 0, W / 2.0], [0, rec.focal, H / 2.0], [0, 0, 1.0]], dtype=torch.float32)
    cams = Cameras(
        K=K.expand(m, 3, 3).clone(),
        w2c=torch.tensor(w2c, dtype=torch.float32),
        sizes=torch.tensor([[W, H]] * m, dtype=torch.int64),
        names=[views.names[v] for v in placed],
    )
    err = np.linalg.norm(
        project_points(w2c, rec.focal, rec.pp, X[tracks.point], tracks.view)[0] - tracks.xy, axis=1
    ) if len(el) else np.zeros(0)
    info = {"n_points": int(len(pts)), "n_observations": int(len(el)),
            "mean_track_length": float(len(el) / max(len(pts), 1)),
            "reproj_median_px": float(np.median(err)) if len(err) else None,
            "placed": [views.names[v] for v in placed]}
    return SfMResult(cams, X, colors, tracks, dict(failed), neighbors, neighbor_scores, info)
