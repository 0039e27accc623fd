"""The classical (weight-free, CPU) geometry prior.

Part 1, cameras: :func:`run_sfm` (``sfm.py``) built on SIFT/RootSIFT matching (``features.py``), MAGSAC++
two-view geometry and focal self-calibration (``twoview.py``) and bundle adjustment (``bundle.py``).
Part 2, dense point maps for those cameras: ``dense.py``; ``prior.py`` joins both into the ``Prior``.
"""

from recon.priors.classical.sfm import SfMConfig, SfMResult, Tracks, run_sfm

__all__ = ["SfMConfig", "SfMResult", "Tracks", "run_sfm"]
