"""Which image pairs to match: all of them for few views, else a sequential window plus bag-of-words
retrieval over the views' own descriptors."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import torch

from recon.matching.features import Features


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


def pairs_to_match(
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
