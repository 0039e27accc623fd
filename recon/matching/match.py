"""Descriptor matching: mutual nearest neighbours with Lowe's ratio test, optionally restricted to the
epipolar band of a known fundamental matrix (guided matching). Pixels follow CONVENTIONS.md."""

from __future__ import annotations

import numpy as np
import torch

from recon.matching.features import Features


def epipolar_mask(F: np.ndarray, xy_a: np.ndarray, xy_b: np.ndarray, max_px: float) -> torch.Tensor:
    """(Na, Nb) bool: which keypoints of b lie within ``max_px`` of the epipolar line F x_a of each
    keypoint of a (x_b^T F x_a = 0 for a true correspondence).

    Args:
        F: (3, 3) fundamental matrix, pixels of a to pixels of b.
        xy_a: (Na, 2), xy_b: (Nb, 2) keypoints in pixels.
    """
    ha = torch.from_numpy(np.c_[xy_a, np.ones(len(xy_a))])
    l_b = ha @ torch.from_numpy(np.asarray(F, dtype=np.float64)).T  # (Na, 3) lines in b
    l_b = l_b / l_b[:, :2].norm(dim=1, keepdim=True).clamp_min(1e-300)
    # normalised lines give distances in pixels; float32 is then exact to ~1e-4 px
    hb = torch.from_numpy(np.c_[xy_b, np.ones(len(xy_b))]).float()
    return (l_b.float() @ hb.T).abs_() <= max_px


def match_descriptors(
    a: Features,
    b: Features,
    ratio: float,
    min_separation_px: float = 3.0,
    k: int = 4,
    chunk: int = 4096,
    F: np.ndarray | None = None,
    max_epipolar_px: float = 2.0,
) -> np.ndarray:
    """Mutual nearest neighbours that also pass Lowe's ratio test in both directions.

    The ratio test compares the best distance with the best one of a keypoint at least
    ``min_separation_px`` away from the best match: near-duplicate keypoints (the same corner found at two
    scales, or in two affine simulations) would otherwise make every such match look ambiguous.

    With a fundamental matrix ``F`` (x_b^T F x_a = 0) the matching is guided: a keypoint is compared only
    with the keypoints of the other image within ``max_epipolar_px`` of its epipolar line (see
    :func:`epipolar_mask`), so the nearest neighbour and the ratio test are taken among the few
    geometrically possible ones. The mutual check then keeps only pairs where each point lies near the
    other's epipolar line. Features that are ambiguous over the whole image (repeated windows,
    bricks) often are not along one line, which is how guided matching finds matches that unguided
    matching rejects.

    Args:
        a, b: features of two images (unit-norm descriptors).
        ratio: maximum ratio of the best to the second-best (separated) Euclidean distance.
    Returns:
        (M, 2) int64 index pairs (into a, into b).
    """
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.int64)
    da = torch.from_numpy(np.ascontiguousarray(a.desc, dtype=np.float32))
    db = torch.from_numpy(np.ascontiguousarray(b.desc, dtype=np.float32))

    def best(x: torch.Tensor, y: torch.Tensor, x_xy: np.ndarray, y_xy: np.ndarray, F_xy: np.ndarray | None):
        kk = min(k, y.shape[0])
        idx, ok = [], []
        for s in range(0, x.shape[0], chunk):
            sim = x[s : s + chunk] @ y.T  # unit vectors: |x - y|^2 = 2 - 2 x.y
            if F_xy is not None:
                sim.masked_fill_(~epipolar_mask(F_xy, x_xy[s : s + chunk], y_xy, max_epipolar_px), -torch.inf)
            top, arg = sim.topk(kk, dim=1)
            d = (2.0 - 2.0 * top).clamp_min(0.0).sqrt().numpy()  # inf where no candidate is left
            arg = arg.numpy()
            far = np.linalg.norm(y_xy[arg] - y_xy[arg[:, :1]], axis=2) >= min_separation_px  # (n, kk)
            far &= np.isfinite(d)
            far[:, 0] = False
            has = far.any(1)
            second = np.where(has, d[np.arange(len(d)), far.argmax(1)], d[:, -1])
            ok.append(np.isfinite(d[:, 0]) & (d[:, 0] <= ratio * second))
            idx.append(arg[:, 0])
        return np.concatenate(idx), np.concatenate(ok)

    ab, ok_ab = best(da, db, a.xy, b.xy, F)
    # The mutual check needs b -> a only for the keypoints of b that some keypoint of a chose and that
    # passed its ratio test: searching from those alone gives the same matches at a fraction of the cost.
    cand = np.unique(ab[ok_ab])
    ba = np.full(len(b), -1, np.int64)
    ok_ba = np.zeros(len(b), bool)
    if len(cand):
        F_ba = None if F is None else F.T
        ba[cand], ok_ba[cand] = best(db[torch.from_numpy(cand)], da, b.xy[cand], a.xy, F_ba)
    ia = np.arange(len(a))
    keep = (ba[ab] == ia) & ok_ab & ok_ba[ab]
    return np.stack([ia[keep], ab[keep]], axis=1).astype(np.int64)
