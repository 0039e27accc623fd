"""Local features (SIFT with RootSIFT descriptors), descriptor matching and the pair graph.

Keypoints are returned in the project's pixel convention (CONVENTIONS.md): the centre of pixel (row i,
col j) is (j + 0.5, i + 0.5). OpenCV puts pixel centres on integer coordinates, so its keypoints are
shifted by +0.5 here, once, and every later stage (two-view geometry, PnP, bundle adjustment) works with
a principal point at (W/2, H/2) in this convention.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass
class Features:
    """Keypoints of one image.

    Attributes:
        xy: (K, 2) float64 keypoint positions in pixels (pixel-centre convention, see module docstring).
        desc: (K, 128) float32 RootSIFT descriptors (unit L2 norm).
        size: (K,) float32 keypoint diameters in pixels (SIFT scale).
        rgb: (K, 3) float32 image colour at each keypoint, in [0, 1].
    """

    xy: np.ndarray
    desc: np.ndarray
    size: np.ndarray
    rgb: np.ndarray

    def __len__(self) -> int:
        return self.xy.shape[0]


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 luminance of an (H, W, 3) float image in [0, 1]."""
    rgb = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def root_sift(desc: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, then square-root; the result has unit L2
    norm, so Euclidean distance between RootSIFT vectors is the Hellinger distance between SIFT ones."""
    d = desc.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-12)
    return np.sqrt(d)


def _sift(gray: np.ndarray, detector) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(xy (K,2) in project pixel convention, RootSIFT desc, size, response) from an OpenCV detector."""
    kps, desc = detector.detectAndCompute(gray, None)
    if desc is None or len(kps) == 0:
        return np.zeros((0, 2)), np.zeros((0, 128), np.float32), np.zeros(0, np.float32), np.zeros(0)
    xy = np.array([k.pt for k in kps], dtype=np.float64) + 0.5
    size = np.array([k.size for k in kps], dtype=np.float32)
    resp = np.array([k.response for k in kps], dtype=np.float64)
    return xy, root_sift(desc), size, resp


def detect_features(
    image: np.ndarray,
    max_features: int,
    affine_features: int = 0,
    affine_max_tilt: int = 3,
    contrast_thresholds: tuple[float, ...] = (0.02, 0.01, 0.005),
    min_fraction: float = 0.5,
) -> Features:
    """SIFT keypoints with RootSIFT descriptors for an (H, W, 3) float image in [0, 1].

    The contrast threshold starts at the first value and is lowered step by step while fewer than
    ``min_fraction * max_features`` keypoints are found: the image decides how low it goes (low-texture
    or dark images get a lower threshold), not a constant tuned per data set. The strongest
    ``max_features`` are kept. OpenCV's SIFT already upsamples the image 2x for its first octave, which
    matters for small (<= 512 px) images.

    With ``affine_features > 0``, up to that many extra keypoints come from affine-simulated views of the
    image (ASIFT, Morel & Yu 2009: the image is tilted by sqrt(2)^k, k = 1..affine_max_tilt, at several
    in-plane angles, and SIFT runs on each). Plain SIFT tolerates about 30-40 degrees of viewpoint change;
    the simulated tilts extend that to the wide baselines of 3-view captures, where plain SIFT finds too
    few matches.
    """
    gray = to_gray_u8(image)
    for ct in contrast_thresholds:
        xy, desc, size, resp = _sift(gray, cv2.SIFT_create(nfeatures=max_features, contrastThreshold=ct))
        if len(xy) >= min_fraction * max_features:
            break
    if affine_features > 0 and affine_max_tilt >= 1:
        sim = cv2.AffineFeature_create(cv2.SIFT_create(contrastThreshold=ct), affine_max_tilt, 1)
        axy, adesc, asize, aresp = _sift(gray, sim)
        keep = np.argsort(-aresp, kind="stable")[:affine_features]
        xy = np.concatenate([xy, axy[keep]])
        desc = np.concatenate([desc, adesc[keep]])
        size = np.concatenate([size, asize[keep]])
    H, W = gray.shape
    ij = np.clip(np.floor(xy).astype(int), 0, [W - 1, H - 1]) if len(xy) else np.zeros((0, 2), int)
    rgb = image[ij[:, 1], ij[:, 0]].astype(np.float32)
    return Features(xy, desc.astype(np.float32), size, rgb)


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


def _global_descriptors(feats: list[Features], n_words: int, seed: int = 0) -> np.ndarray:
    """(N, n_words) L2-normalised tf-idf bag-of-words vectors over a vocabulary built from the views'
    own descriptors (k-means), so no pre-trained vocabulary file is needed."""
    rng = np.random.default_rng(seed)
    sample = np.concatenate(
        [f.desc[rng.choice(len(f), size=min(len(f), 2000), replace=False)] for f in feats if len(f)]
    ).astype(np.float32)
    k = int(min(n_words, max(2, len(sample) // 20)))
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1e-3)
    cv2.setRNGSeed(seed)
    _, _, centers = cv2.kmeans(sample, k, None, crit, 1, cv2.KMEANS_PP_CENTERS)
    c = torch.from_numpy(centers)
    hist = np.zeros((len(feats), k), np.float64)
    for i, f in enumerate(feats):
        if len(f):
            words = (torch.from_numpy(f.desc) @ c.T).argmax(1).numpy()  # nearest by cosine ~ by L2
            hist[i] = np.bincount(words, minlength=k)
    df = (hist > 0).sum(0)
    idf = np.log(len(feats) / np.maximum(df, 1))
    v = hist / np.maximum(hist.sum(1, keepdims=True), 1) * idf
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def pair_graph(
    feats: list[Features], exhaustive_max: int, window: int, retrieval_k: int, n_words: int = 512
) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, to match.

    All pairs for up to ``exhaustive_max`` views. Beyond that, matching all N(N-1)/2 pairs costs too much,
    so each view is paired with its ``window`` neighbours in file order (photo collections are usually
    shot in sequence) and its ``retrieval_k`` most similar views by bag-of-words retrieval (which finds
    loop closures and unordered neighbours).
    """
    n = len(feats)
    if n <= exhaustive_max:
        return list(itertools.combinations(range(n), 2))
    pairs = {(i, j) for i in range(n) for j in range(i + 1, min(n, i + window + 1))}
    g = _global_descriptors(feats, n_words)
    sim = g @ g.T
    np.fill_diagonal(sim, -np.inf)
    for i in range(n):
        for j in np.argsort(-sim[i])[:retrieval_k]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)
