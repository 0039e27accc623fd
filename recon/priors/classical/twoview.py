"""Two-view geometry: robust fundamental / essential / homography estimation (MAGSAC++ via OpenCV's USAC)
and self-calibration of a focal length shared by all views.

Pixel coordinates follow CONVENTIONS.md (pixel centres at +0.5); the principal point is assumed at the
image centre (W/2, H/2). A relative pose (R, t) maps camera-a coordinates to camera-b coordinates:
x_b = R @ x_a + t, i.e. it is w2c of b when a is the world frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class TwoView:
    """Verified geometry of one image pair (i, j), i < j.

    Attributes:
        i, j: view indices.
        matches: (M, 2) int64 putative matches (feature index in i, in j) after mutual NN + ratio test.
        F: (3, 3) fundamental matrix with x_j^T F x_i = 0 (pixels), or None when estimation failed.
        f_inliers: (M,) bool, inliers of F.
        n_h_inliers: number of matches a homography explains (for the planar/rotation-only test).
        E, R, t: essential matrix and relative pose x_j = R x_i + t (|t| = 1), once the focal is known.
        e_inliers: (M,) bool, inliers of E that also pass the cheirality test.
        tri_angle_deg: median triangulation angle of the E inliers (degrees).
    """

    i: int
    j: int
    matches: np.ndarray
    F: np.ndarray | None = None
    f_inliers: np.ndarray | None = None
    n_h_inliers: int = 0
    E: np.ndarray | None = None
    R: np.ndarray | None = None
    t: np.ndarray | None = None
    e_inliers: np.ndarray | None = None
    tri_angle_deg: float = 0.0

    @property
    def n_f_inliers(self) -> int:
        return 0 if self.f_inliers is None else int(self.f_inliers.sum())

    @property
    def n_e_inliers(self) -> int:
        return 0 if self.e_inliers is None else int(self.e_inliers.sum())


def _mask(m: np.ndarray | None, n: int) -> np.ndarray:
    return np.zeros(n, bool) if m is None else m.reshape(-1).astype(bool)


def fundamental_from_poses(K: np.ndarray, w2c_a: np.ndarray, w2c_b: np.ndarray) -> np.ndarray:
    """(3, 3) F with x_b^T F x_a = 0 (pixels) for cameras a and b sharing the pinhole K (w2c (4, 4))."""
    R = w2c_b[:3, :3] @ w2c_a[:3, :3].T
    t = w2c_b[:3, 3] - R @ w2c_a[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    Kinv = np.linalg.inv(K)
    return Kinv.T @ tx @ R @ Kinv


def fundamental_magsac(
    xa: np.ndarray, xb: np.ndarray, thresh_px: float, confidence: float, max_iters: int
) -> tuple[np.ndarray | None, np.ndarray]:
    """F with xb^T F xa = 0 from (M, 2) pixel correspondences; returns (F or None, (M,) inlier mask)."""
    if len(xa) < 8:
        return None, np.zeros(len(xa), bool)
    try:
        F, m = cv2.findFundamentalMat(xa, xb, cv2.USAC_MAGSAC, thresh_px, confidence, max_iters)
    except cv2.error:  # OpenCV's USAC asserts on some degenerate sets (e.g. tiny images): no model
        return None, np.zeros(len(xa), bool)
    if F is None or F.shape != (3, 3):
        return None, np.zeros(len(xa), bool)
    return F, _mask(m, len(xa))


def homography_inliers(xa: np.ndarray, xb: np.ndarray, thresh_px: float, confidence: float) -> int:
    """How many correspondences one homography explains (pure rotation or a planar scene)."""
    if len(xa) < 4:
        return 0
    try:
        Hm, m = cv2.findHomography(xa, xb, cv2.USAC_MAGSAC, thresh_px, maxIters=5000, confidence=confidence)
    except cv2.error:  # degenerate set (see fundamental_magsac)
        return 0
    return 0 if Hm is None else int(_mask(m, len(xa)).sum())


def essential_magsac(
    xa: np.ndarray, xb: np.ndarray, K: np.ndarray, thresh_px: float, confidence: float, max_iters: int
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """E, R, t (x_b = R x_a + t, |t| = 1) and the (M,) mask of inliers in front of both cameras."""
    n = len(xa)
    if n < 5:
        return None, None, None, np.zeros(n, bool)
    try:
        E, m = cv2.findEssentialMat(xa, xb, K, cv2.USAC_MAGSAC, confidence, thresh_px, max_iters)
    except cv2.error:  # degenerate set (see fundamental_magsac)
        return None, None, None, np.zeros(n, bool)
    if E is None or E.shape != (3, 3):  # several stacked solutions or none: treat as a failure
        return None, None, None, np.zeros(n, bool)
    inl = _mask(m, n)
    if inl.sum() < 5:
        return None, None, None, np.zeros(n, bool)
    _, R, t, m2 = cv2.recoverPose(E, xa, xb, K, mask=inl.astype(np.uint8).reshape(-1, 1).copy())
    return E, R, t.reshape(3), _mask(m2, n) & inl


def ray_angles_deg(xa: np.ndarray, xb: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Triangulation angle (degrees) of each correspondence for the relative pose x_b = R x_a + t.

    The angle between the two viewing rays at their closest approach point, a standard proxy for depth
    uncertainty (small angle = ill-conditioned depth).
    """
    Ki = np.linalg.inv(K)
    ra = np.c_[xa, np.ones(len(xa))] @ Ki.T
    rb = np.c_[xb, np.ones(len(xb))] @ Ki.T @ R  # rays of b in a's frame (R^T rb)
    ca = np.zeros(3)
    cb = -R.T @ t
    # midpoint triangulation
    X = _midpoint(ca, ra, cb, rb)
    da = X - ca
    db = X - cb
    cos = (da * db).sum(1) / np.maximum(np.linalg.norm(da, axis=1) * np.linalg.norm(db, axis=1), 1e-12)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _midpoint(ca: np.ndarray, ra: np.ndarray, cb: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """Midpoints (M, 3) of the shortest segments between rays ca + s ra and cb + u rb."""
    w0 = ca - cb
    a = (ra * ra).sum(1)
    b = (ra * rb).sum(1)
    c = (rb * rb).sum(1)
    d = ra @ w0
    e = rb @ w0
    den = np.maximum(a * c - b * b, 1e-12)
    s = (b * e - c * d) / den
    u = (a * e - b * d) / den
    return 0.5 * ((ca + s[:, None] * ra) + (cb + u[:, None] * rb))


# --------------------------------------------------------------------------------------------------
# Focal self-calibration
# --------------------------------------------------------------------------------------------------


def essential_svd_cost(F: np.ndarray, focals: np.ndarray, pp: np.ndarray) -> np.ndarray:
    """Mendonca-Cipolla self-calibration cost (s1 - s2) / (s1 + s2) of E = K^T F K for each focal.

    An essential matrix has two equal non-zero singular values; the focal that makes K^T F K closest to
    one is the one consistent with the pair's geometry. Returns (len(focals),) costs in [0, 1].
    """
    Ks = np.zeros((len(focals), 3, 3))
    Ks[:, 0, 0] = focals
    Ks[:, 1, 1] = focals
    Ks[:, :2, 2] = pp
    Ks[:, 2, 2] = 1
    E = Ks.transpose(0, 2, 1) @ F[None] @ Ks
    s = np.linalg.svd(E, compute_uv=False)
    return (s[:, 0] - s[:, 1]) / np.maximum(s[:, 0] + s[:, 1], 1e-300)


@dataclass
class FocalEstimate:
    """A shared focal length estimated from fundamental matrices.

    Attributes:
        focal_px: the estimate (pixels).
        focals: (S,) the swept focal lengths; cost: (S,) the aggregated cost at each.
        confident: whether the cost curve has a clear interior minimum (False: the views do not constrain
            the focal, e.g. pure forward motion, and a fallback should be used or BA left to decide).
    """

    focal_px: float
    focals: np.ndarray
    cost: np.ndarray
    confident: bool


def estimate_shared_focal(
    Fs: list[np.ndarray],
    weights: list[float],
    size_wh: tuple[int, int],
    fov_range_deg: tuple[float, float],
    n_samples: int = 256,
) -> FocalEstimate:
    """Sweep focal lengths over a field-of-view range and pick the one whose K^T F K are closest to
    essential matrices, over all verified pairs.

    Each pair's cost curve is normalised by its own maximum over the sweep, so that pairs that barely
    constrain the focal (flat curves: little rotation, e.g. forward motion) add noise of the same size as
    their information, and is weighted by its inlier count. The minimum is searched on a log grid, then
    refined by a parabola through its neighbours.
    """
    W, H = size_wh
    side = float(max(W, H))
    pp = np.array([W / 2.0, H / 2.0])
    fov_lo, fov_hi = np.radians(fov_range_deg[0]), np.radians(fov_range_deg[1])
    f_hi = 0.5 * side / np.tan(0.5 * fov_lo)
    f_lo = 0.5 * side / np.tan(0.5 * fov_hi)
    focals = np.geomspace(f_lo, f_hi, n_samples)
    total = np.zeros(n_samples)
    wsum = 0.0
    depth = []  # per pair: how much its curve varies (informativeness)
    for F, w in zip(Fs, weights, strict=True):
        c = essential_svd_cost(F, focals, pp)
        rng = c.max() - c.min()
        if not np.isfinite(rng) or rng <= 0:
            continue
        total += w * c / c.max()
        wsum += w
        depth.append(rng / max(c.max(), 1e-12))
    if wsum == 0:
        return FocalEstimate(float(np.sqrt(f_lo * f_hi)), focals, total, False)
    total /= wsum
    k = int(np.argmin(total))
    logf = np.log(focals)
    if 0 < k < n_samples - 1:
        y0, y1, y2 = total[k - 1 : k + 2]
        den = y0 - 2 * y1 + y2
        off = 0.5 * (y0 - y2) / den if den > 0 else 0.0
        f = float(np.exp(logf[k] + np.clip(off, -1, 1) * (logf[1] - logf[0])))
    else:
        f = float(focals[k])
    # A usable minimum is interior and clearly below the curve's ends.
    interior = 0 < k < n_samples - 1
    contrast = (min(total[0], total[-1]) - total[k]) / max(total.max(), 1e-12)
    confident = bool(interior and contrast > 0.05)
    return FocalEstimate(f, focals, total, confident)


def focal_inlier_support(
    correspondences: list[tuple[np.ndarray, np.ndarray]],
    size_wh: tuple[int, int],
    fov_range_deg: tuple[float, float],
    thresh_px: float,
    confidence: float,
    max_iters: int,
    n_samples: int = 13,
) -> tuple[np.ndarray, np.ndarray]:
    """How well each focal of a sweep explains the matches as calibrated (essential-matrix) geometry.

    For every pair, MAGSAC++ estimates E at each swept focal; the inlier count, divided by the pair's best
    count, is averaged over pairs. A focal far from the truth loses inliers; near it the support is flat
    (within noise), so this gives the set of focals the data allow rather than one sharp estimate.

    Returns:
        focals (S,) on a log grid over the field-of-view range, support (S,) in [0, 1].
    """
    W, H = size_wh
    side = float(max(W, H))
    f_lo = 0.5 * side / np.tan(0.5 * np.radians(fov_range_deg[1]))
    f_hi = 0.5 * side / np.tan(0.5 * np.radians(fov_range_deg[0]))
    focals = np.geomspace(f_lo, f_hi, n_samples)
    support = np.zeros(n_samples)
    used = 0
    for xa, xb in correspondences:
        counts = np.zeros(n_samples)
        for k, f in enumerate(focals):
            K = np.array([[f, 0, W / 2.0], [0, f, H / 2.0], [0, 0, 1.0]])
            cv2.setRNGSeed(k)
            _, _, _, inl = essential_magsac(xa, xb, K, thresh_px, confidence, max_iters)
            counts[k] = inl.sum()
        if counts.max() > 0:
            support += counts / counts.max()
            used += 1
    return focals, support / max(used, 1)
