"""Feature tracks: connected components of pairwise inlier matches, as flat element arrays."""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from recon.matching.features import Features
from recon.priors.classical.twoview import TwoView


class TrackSet:
    """Feature tracks (connected components of pairwise inlier matches) as flat element arrays.

    Keypoints of one image closer than ``merge_radius_px`` are one image point found twice (at two scales
    or in two affine simulations); they are merged first, otherwise view a could match one copy and view b
    the other and no track would link a and b through this image. After merging, a track that still holds
    two features of one image is inconsistent (a wrong match somewhere) and is dropped.

    Element e belongs to track ``trk[e]`` and is feature ``feat[e]`` of view ``view[e]``, seen at pixel
    ``xy[e]`` (2,) with colour ``rgb[e]`` (3,); elements are sorted by track. A pair contributes its
    essential-matrix inliers when it has any, else its fundamental-matrix inliers.
    """

    def __init__(self, feats: list[Features], pairs: list[TwoView], merge_radius_px: float) -> None:
        self.merge_radius_px = merge_radius_px
        offset = np.cumsum([0] + [len(f) for f in feats])
        edges = []
        for tv in pairs:
            inl = tv.e_inliers if tv.e_inliers is not None and tv.e_inliers.any() else tv.f_inliers
            m = tv.matches[inl]
            edges.append(np.stack([offset[tv.i] + m[:, 0], offset[tv.j] + m[:, 1]], 1))
        canon = _merge_close_keypoints(feats, offset, merge_radius_px)
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


def _merge_close_keypoints(feats: list[Features], offset: np.ndarray, radius_px: float) -> np.ndarray:
    """(F,) for every feature of every view (flat, views at ``offset``), the lowest-index keypoint of the
    same view within ``radius_px`` of it (transitively)."""
    canon = np.arange(offset[-1])
    for v, f in enumerate(feats):
        if len(f) < 2:
            continue
        close = cKDTree(f.xy).query_pairs(radius_px, output_type="ndarray")
        g = coo_matrix((np.ones(len(close)), (close[:, 0], close[:, 1])), shape=(len(f), len(f)))
        _, lab = connected_components(g, directed=False)
        first = np.full(lab.max() + 1, len(f))
        np.minimum.at(first, lab, np.arange(len(f)))
        canon[offset[v] : offset[v + 1]] = offset[v] + first[lab]
    return canon
