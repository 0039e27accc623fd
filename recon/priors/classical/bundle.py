"""Bundle adjustment: robust non-linear least squares over camera poses, one shared focal length and 3D
points, with scipy's ``least_squares`` (trust-region reflective, sparse Jacobian, robust loss).

Conventions: w2c (C, 4, 4) as in CONVENTIONS.md, a pinhole K = [[f, 0, cx], [0, f, cy], [0, 0, 1]] shared
by all cameras with the principal point fixed (at the image centre), pixel residuals in the project's
pixel convention. No distortion: the project's cameras are pinhole (K only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import coo_matrix
from scipy.spatial.transform import Rotation


def rodrigues(rvec: np.ndarray) -> np.ndarray:
    """Rotation matrices (N, 3, 3) from axis-angle vectors (N, 3) (float64, stable near zero)."""
    theta = np.linalg.norm(rvec, axis=1)
    small = theta < 1e-12
    k = rvec / np.where(small, 1.0, theta)[:, None]
    Kx = np.zeros((len(rvec), 3, 3))
    Kx[:, 0, 1], Kx[:, 0, 2] = -k[:, 2], k[:, 1]
    Kx[:, 1, 0], Kx[:, 1, 2] = k[:, 2], -k[:, 0]
    Kx[:, 2, 0], Kx[:, 2, 1] = -k[:, 1], k[:, 0]
    s = np.sin(theta)[:, None, None]
    c = (1 - np.cos(theta))[:, None, None]
    R = np.eye(3)[None] + s * Kx + c * (Kx @ Kx)
    R[small] = np.eye(3)
    return R


def rotvec(R: np.ndarray) -> np.ndarray:
    """Axis-angle vectors (N, 3) of rotation matrices (N, 3, 3)."""
    return Rotation.from_matrix(R).as_rotvec()


def project_points(
    w2c: np.ndarray, focal: float, pp: np.ndarray, X: np.ndarray, cam: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (O, 2) and depths (O,) of points X (O, 3) seen by cameras ``cam`` (O,) of w2c (C, 4, 4)."""
    Xc = np.einsum("oij,oj->oi", w2c[cam, :3, :3], X) + w2c[cam, :3, 3]
    z = Xc[:, 2]
    uv = focal * Xc[:, :2] / np.where(np.abs(z) < 1e-12, 1e-12, z)[:, None] + pp
    return uv, z


@dataclass
class BAResult:
    """Refined cameras and points.

    Attributes:
        w2c: (C, 4, 4) refined world-to-camera transforms.
        focal: refined shared focal length (pixels).
        points: (P, 3) refined points.
        residuals: (O,) reprojection error (pixels) per observation after refinement.
        median_before_px: median reprojection error (pixels) before refinement.
        cost: final robust cost (scipy's 0.5 * sum rho(r^2)).
        nfev: number of residual evaluations.
    """

    w2c: np.ndarray
    focal: float
    points: np.ndarray
    residuals: np.ndarray
    median_before_px: float
    cost: float
    nfev: int


def bundle_adjust(
    w2c: np.ndarray,
    focal: float,
    pp: np.ndarray,
    points: np.ndarray,
    obs_cam: np.ndarray,
    obs_pt: np.ndarray,
    obs_xy: np.ndarray,
    fixed_cams: tuple[int, ...] = (0,),
    refine_focal: bool = True,
    loss: str = "soft_l1",
    loss_scale_px: float = 1.0,
    max_nfev: int = 50,
) -> BAResult:
    """Minimise robustified reprojection errors over poses, the shared focal and points.

    Args:
        w2c: (C, 4, 4) initial cameras; focal: initial focal (pixels); pp: (2,) principal point (fixed).
        points: (P, 3) initial points.
        obs_cam, obs_pt: (O,) camera and point index of each observation; obs_xy: (O, 2) its pixel.
        fixed_cams: cameras whose pose is held (fixes the rotation and translation gauge; the scale gauge
            stays free, which the trust-region solver tolerates).
        refine_focal: optimise log(focal) (keeps it positive) or hold it.
        loss: scipy robust loss ('linear', 'huber', 'soft_l1', 'cauchy', ...); loss_scale_px: its inlier
            scale in pixels.
    """
    C, P, O = len(w2c), len(points), len(obs_cam)
    free = np.array([c for c in range(C) if c not in set(fixed_cams)], dtype=int)
    slot = -np.ones(C, dtype=int)
    slot[free] = np.arange(len(free))
    nf = len(free)
    n_cam = 6 * nf
    n_foc = 1 if refine_focal else 0
    r0 = rotvec(w2c[free, :3, :3]) if nf else np.zeros((0, 3))
    x0 = np.concatenate([r0.ravel(), w2c[free, :3, 3].ravel(), np.log([focal])[:n_foc], points.ravel()])

    def unpack(x: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        W = w2c.copy()
        if nf:
            W[free, :3, :3] = rodrigues(x[: 3 * nf].reshape(nf, 3))
            W[free, :3, 3] = x[3 * nf : n_cam].reshape(nf, 3)
        f = float(np.exp(x[n_cam])) if refine_focal else focal
        X = x[n_cam + n_foc :].reshape(P, 3)
        return W, f, X

    def fun(x: np.ndarray) -> np.ndarray:
        W, f, X = unpack(x)
        uv, _ = project_points(W, f, pp, X[obs_pt], obs_cam)
        return (uv - obs_xy).ravel()

    # Sparsity: each observation's 2 residuals depend on its camera's 6, the focal and its point's 3.
    rows, cols = [], []
    o = np.arange(O)
    for d in range(2):
        r = 2 * o + d
        has = slot[obs_cam] >= 0
        s = slot[obs_cam[has]]
        for k in range(3):
            rows += [r[has], r[has]]
            cols += [3 * s + k, 3 * nf + 3 * s + k]
        if refine_focal:
            rows.append(r)
            cols.append(np.full(O, n_cam))
        for k in range(3):
            rows.append(r)
            cols.append(n_cam + n_foc + 3 * obs_pt + k)
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    sparsity = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(2 * O, len(x0))).tocsr()

    med0 = float(np.median(np.linalg.norm(fun(x0).reshape(O, 2), axis=1))) if O else 0.0
    res = least_squares(
        fun, x0, jac_sparsity=sparsity, method="trf", loss=loss, f_scale=loss_scale_px,
        x_scale="jac", max_nfev=max_nfev, tr_solver="lsmr", xtol=1e-10, ftol=1e-8,
    )
    W, f, X = unpack(res.x)
    r = res.fun.reshape(O, 2)
    return BAResult(W, f, X, np.linalg.norm(r, axis=1), med0, float(res.cost), int(res.nfev))
