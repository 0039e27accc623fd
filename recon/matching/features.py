"""Local features: SIFT keypoints with RootSIFT descriptors (and affine-simulated ones, ASIFT).

Keypoints are returned in the project's pixel convention (CONVENTIONS.md): the centre of pixel (row i,
col j) is (j + 0.5, i + 0.5). OpenCV puts pixel centres on integer coordinates, so its keypoints are
shifted by +0.5 here, once, and every later stage (two-view geometry, PnP, bundle adjustment) works with
a principal point at (W/2, H/2) in this convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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
