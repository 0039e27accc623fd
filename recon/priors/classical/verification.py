"""Two-view verification of the pair graph: descriptor matches, MAGSAC++ fundamental matrices and, once a
focal is known, essential matrices with relative poses and baselines."""

from __future__ import annotations

import numpy as np

from recon.errors import ReconError
from recon.matching.features import Features
from recon.matching.match import match_descriptors
from recon.matching.pairs import pairs_to_match
from recon.priors.classical.config import SfMConfig
from recon.priors.classical.twoview import (
    TwoView,
    essential_magsac,
    fundamental_magsac,
    homography_inliers,
    ray_angles_deg,
)


def match_pairs(
    feats: list[Features], valid: list[int], thr: float, cfg: SfMConfig
) -> tuple[list[tuple[int, int]], list[TwoView]]:
    """Pair graph over the views ``valid`` and, per pair (i, j) of it, the matches and (with at least
    ``cfg.min_inliers`` matches) a fundamental matrix with its inliers. Returns (graph, pairs)."""
    local_pairs = pairs_to_match([feats[v] for v in valid], cfg.exhaustive_max, cfg.window, cfg.retrieval_k)
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
    return graph, pairs


def no_overlap_error(pairs: list[TwoView], valid: list[int], names: list[str], cfg: SfMConfig) -> ReconError:
    """The error for photos of which no pair verified, naming the best pair."""
    best = max(pairs, key=lambda p: p.n_f_inliers, default=None)
    shown = ", ".join(names[v] for v in valid[:6]) + (" ..." if len(valid) > 6 else "")
    detail = "" if best is None else (f" (best pair {names[best.i]} / {names[best.j]}: "
                                      f"{best.n_f_inliers} "
                                      f"verified matches, need {cfg.min_inliers})")
    return ReconError(f"the photos {shown} share no reliable feature matches{detail}; "
                      "give overlapping photos of one scene")


def isolated_views(
    pairs: list[TwoView], valid: list[int], connected: list[int], names: list[str], cfg: SfMConfig
) -> dict[str, str]:
    """View name -> reason, for the views of ``valid`` in no verified pair (not in ``connected``)."""
    best_of = {v: (0, -1) for v in valid}  # view -> (most F inliers with one other view, that view)
    for p in pairs:
        for a, b in ((p.i, p.j), (p.j, p.i)):
            if p.n_f_inliers > best_of[a][0]:
                best_of[a] = (p.n_f_inliers, b)
    failed = {}
    for v in valid:
        if v not in connected:
            cnt, other = best_of[v]
            with_ = f" (best: {names[other]})" if other >= 0 else ""
            failed[names[v]] = (f"shares at most {cnt} geometrically verified matches with any other photo"
                                f"{with_}, need {cfg.min_inliers}: it does not overlap the others")
    return failed


def relative_poses(verified: list[TwoView], feats: list[Features], K: np.ndarray, thr: float,
                   cfg: SfMConfig) -> None:
    """Fill in, per verified pair, E, R, t and their inliers, the homography inlier count and the median
    triangulation angle of the E inliers, for the shared pinhole K (3, 3)."""
    for p in verified:
        xa, xb = feats[p.i].xy[p.matches[:, 0]], feats[p.j].xy[p.matches[:, 1]]
        p.E, p.R, p.t, p.e_inliers = essential_magsac(
            xa, xb, K, thr, cfg.ransac_confidence, cfg.ransac_max_iters
        )
        p.n_h_inliers = homography_inliers(xa, xb, thr, cfg.ransac_confidence)
        if p.R is not None and p.e_inliers.any():
            p.tri_angle_deg = float(np.median(ray_angles_deg(xa[p.e_inliers], xb[p.e_inliers], K, p.R, p.t)))
