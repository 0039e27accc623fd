"""Sparse feature matching, shared by the classical prior and pose correction.

- ``features``: SIFT/RootSIFT keypoints (:func:`detect_features`, :class:`Features`).
- ``match``: mutual-NN + ratio descriptor matching, optionally guided by epipolar geometry
  (:func:`match_descriptors`, :func:`epipolar_mask`).
- ``pairs``: which pairs to match (:func:`pairs_to_match`).

A leaf of the layer graph: it imports only numpy, OpenCV and torch.
"""

from recon.lazy import lazy_names  # light package: importing it loads neither OpenCV nor torch

__getattr__, __all__ = lazy_names(__name__, {
    "Features": "recon.matching.features",
    "detect_features": "recon.matching.features",
    "root_sift": "recon.matching.features",
    "to_gray_u8": "recon.matching.features",
    "epipolar_mask": "recon.matching.match",
    "match_descriptors": "recon.matching.match",
    "pairs_to_match": "recon.matching.pairs",
})
