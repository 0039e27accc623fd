"""Surface accuracy: the Chamfer distance between a reconstructed surface and the true one (point samples).

Both surfaces are given as point samples (a mesh is sampled uniformly by area first). For every sample of
one set, the distance to the nearest sample of the other; ``accuracy`` is the mean over the reconstructed
samples (how far the reconstruction is from the truth), ``completeness`` the mean over the true samples
(how much of the truth is covered), and ``chamfer`` their average, as in the DTU/MonoSDF protocol.
Distances are in the units of the points; samples of the true surface should be denser than the accuracy
that is to be resolved.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def chamfer_distance(reconstructed: np.ndarray, reference: np.ndarray, max_dist: float | None = None) -> dict:
    """Chamfer distance between point sets (M, 3) and (R, 3).

    Args:
        reconstructed: samples of the reconstructed surface.
        reference: samples of the true surface.
        max_dist: distances are clipped to this (as the DTU protocol caps outliers), None: not clipped.

    Returns a JSON-ready dict: ``accuracy``, ``completeness``, ``chamfer`` (their mean), and the medians
    ``accuracy_median`` and ``completeness_median``.
    """
    a = np.asarray(reconstructed, dtype=np.float64).reshape(-1, 3)
    b = np.asarray(reference, dtype=np.float64).reshape(-1, 3)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("chamfer_distance needs non-empty point sets")
    bound = np.inf if max_dist is None else float(max_dist)
    # a bound also keeps the k-d tree fast: far queries would otherwise visit most of it
    d_ab = np.minimum(cKDTree(b).query(a, workers=-1, distance_upper_bound=bound)[0], bound)
    d_ba = np.minimum(cKDTree(a).query(b, workers=-1, distance_upper_bound=bound)[0], bound)
    acc, comp = float(d_ab.mean()), float(d_ba.mean())
    return {
        "accuracy": acc,
        "completeness": comp,
        "chamfer": 0.5 * (acc + comp),
        "accuracy_median": float(np.median(d_ab)),
        "completeness_median": float(np.median(d_ba)),
    }


def sample_mesh(mesh, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points (n, 3) uniformly distributed over the area of an open3d triangle mesh (deterministic)."""
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.triangles, dtype=np.int64)
    if len(f) == 0:
        raise ValueError("sample_mesh needs a mesh with triangles")
    p0, p1, p2 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(p1 - p0, p2 - p0), axis=1)
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)  # uniform barycentric coordinates
    return (1 - s)[:, None] * p0[tri] + (s * (1 - r2))[:, None] * p1[tri] + (s * r2)[:, None] * p2[tri]
