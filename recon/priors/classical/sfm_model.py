"""The model an incremental SfM builds: placed cameras, triangulated tracks and which observations are
trusted. Everything that changes it is a method here; registration and guided matching call them."""

from __future__ import annotations

import numpy as np

from recon.priors.classical.bundle import bundle_adjust, project_points
from recon.priors.classical.config import SfMConfig
from recon.priors.classical.tracks import TrackSet


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


def camera_centers_np(w2c: np.ndarray) -> np.ndarray:
    """(N, 3) world camera centres -R^T t of (N, 4, 4) w2c (numpy twin of ``cameras.camera_centers``)."""
    return -np.einsum("nji,nj->ni", w2c[:, :3, :3], w2c[:, :3, 3])


def rotation_change_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle (degrees) of the rotation R_a R_b^T between two (3, 3) rotations."""
    return float(np.degrees(np.arccos(np.clip((np.trace(R_a @ R_b.T) - 1) / 2, -1.0, 1.0))))


class SfMModel:
    """State of one incremental reconstruction over the tracks ``tracks`` of ``n_views`` views.

    Attributes:
        K: (3, 3) shared pinhole intrinsics (principal point fixed, focal ``focal`` refined by ``bundle``).
        w2c: view index -> (4, 4) float64 world-to-camera of the placed views.
        X: (n_tracks, 3) world point per track, NaN while untriangulated.
        el_ok: (n_elements,) False for observations rejected as outliers.
        failed_pnp: view -> why its last registration attempt failed.
        depth_range: per view (near, far): new points must be seen within it (see
            ``SfMConfig.guided_depth_margin``); views not in it are unrestricted.
        thr: RANSAC threshold (pixels); reproj: outlier threshold of triangulation and BA (pixels).
    """

    def __init__(self, tracks: TrackSet, n_views: int, K: np.ndarray, thr: float, cfg: SfMConfig) -> None:
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

    def with_tracks(self, tracks: TrackSet, depth_range: dict[int, tuple[float, float]]) -> SfMModel:
        """A new model on other tracks with this one's cameras (copied) and no points yet."""
        new = SfMModel(tracks, self.n_views, self.K, self.thr, self.cfg)
        new.w2c = {v: w.copy() for v, w in self.w2c.items()}
        new.failed_pnp = dict(self.failed_pnp)
        new.depth_range = dict(depth_range)
        return new

    # -- queries ----------------------------------------------------------------------------------
    def registered_mask(self) -> np.ndarray:
        """(n_elements,) whether each observation lies in a placed view."""
        reg = np.zeros(self.n_views, bool)
        reg[list(self.w2c)] = True
        return reg[self.tracks.view]

    def triangulated(self) -> np.ndarray:
        """(n_tracks,) whether each track has a 3D point."""
        return ~np.isnan(self.X[:, 0])

    def n_points(self) -> int:
        return int(self.triangulated().sum())

    def correspondences_2d3d(self, v: int) -> np.ndarray:
        """Trusted observations (element indices) of view v whose track has a point."""
        t = self.tracks
        return np.flatnonzero((t.view == v) & self.el_ok & self.triangulated()[t.trk])

    def observations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The structure bundle adjustment and the result use: points with >= 2 trusted observations in
        placed views.

        Returns:
            pts: (P,) track indices of those points; pslot: (n_tracks,) slot of each track in ``pts``
            (-1 if not used); el: (O,) element indices of their trusted observations in placed views.
        """
        t = self.tracks
        use = self.el_ok & self.registered_mask() & self.triangulated()[t.trk]
        pts = np.flatnonzero(np.bincount(t.trk[use], minlength=t.n_tracks) >= 2)
        use &= np.isin(t.trk, pts)
        pslot = -np.ones(t.n_tracks, int)
        pslot[pts] = np.arange(len(pts))
        return pts, pslot, np.flatnonzero(use)

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

    # -- changes ----------------------------------------------------------------------------------
    def place(self, v: int, w2c: np.ndarray, rejected: np.ndarray | None = None) -> None:
        """Register view v at ``w2c`` (4, 4); ``rejected`` (element indices) are its observations that
        disagree with that pose."""
        self.w2c[v] = w2c
        if rejected is not None:
            self.el_ok[rejected] = False
        self.failed_pnp.pop(v, None)

    def fail(self, v: int, reason: str) -> None:
        self.failed_pnp[v] = reason

    def unplace(self, v: int, reason: str) -> None:
        """Take view v out of the model (a check found its placement untrustworthy); its observations stay,
        unused while it is not placed."""
        self.w2c.pop(v, None)
        self.fail(v, reason)

    def set_focal(self, focal: float) -> None:
        self.focal = focal
        self.K = np.array([[focal, 0, self.pp[0]], [0, focal, self.pp[1]], [0, 0, 1.0]])

    def triangulate(self) -> int:
        """Triangulate every untriangulated track with >= 2 usable observations in placed views.
        Returns the number of new points."""
        t = self.tracks
        use = self.el_ok & self.registered_mask() & ~self.triangulated()[t.trk]
        cnt = np.bincount(t.trk[use], minlength=t.n_tracks)
        cand = np.flatnonzero(cnt >= 2)
        if len(cand) == 0:
            return 0
        Kinv = np.linalg.inv(self.K)
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
        rays = X[:, None] - camera_centers_np(W).reshape(T, k, 3)
        rays /= np.maximum(np.linalg.norm(rays, axis=2, keepdims=True), 1e-12)
        cos = np.einsum("tad,tbd->tab", rays, rays)
        max_angle = np.degrees(np.arccos(np.clip(cos.min(axis=(1, 2)), -1, 1)))
        ok = good_obs.all(1) & (max_angle >= self.cfg.min_tri_angle_deg) & np.isfinite(X).all(1)
        # observations that disagree with an otherwise consistent track are dropped so the track can be
        # re-triangulated from the rest next time
        bad = el[~ok & (good_obs.sum(1) >= 2)][~good_obs[~ok & (good_obs.sum(1) >= 2)]]
        return ok, bad

    def bundle(self, fixed: int, refine_focal: bool) -> dict:
        """Bundle-adjust the placed cameras (view ``fixed`` held as the gauge), the shared focal when
        ``refine_focal``, and the points of ``observations()``; then reject the observations BA could not
        fit and the points left with fewer than 2. Returns diagnostics."""
        t = self.tracks
        pts, pslot, el = self.observations()
        views = sorted(self.w2c)
        vslot = {v: i for i, v in enumerate(views)}
        res = bundle_adjust(
            np.stack([self.w2c[v] for v in views]), self.focal, self.pp, self.X[pts],
            np.array([vslot[v] for v in t.view[el]]), pslot[t.trk[el]], t.xy[el],
            fixed_cams=(vslot[fixed],), refine_focal=refine_focal, loss=self.cfg.ba_loss,
            loss_scale_px=self.thr, max_nfev=self.cfg.ba_max_nfev,
        )
        for v in views:
            self.w2c[v] = res.w2c[vslot[v]]
        self.set_focal(res.focal)
        self.X[pts] = res.points
        # reject observations that BA could not fit; drop points left with < 2 observations or behind
        self.el_ok[el[res.residuals > self.reproj]] = False
        n_good = np.bincount(pslot[t.trk[el[res.residuals <= self.reproj]]], minlength=len(pts))
        self.X[pts[n_good < 2]] = np.nan
        return {"median_before_px": res.median_before_px, "median_after_px": float(np.median(res.residuals)),
                "points": len(pts), "observations": len(el), "nfev": res.nfev}
