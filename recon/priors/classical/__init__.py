"""The classical (weight-free, CPU) geometry prior.

Part 1, cameras: :func:`run_sfm` (``sfm.py``) built on SIFT/RootSIFT matching (``features.py``), MAGSAC++
two-view geometry and focal self-calibration (``twoview.py``) and bundle adjustment (``bundle.py``).
Part 2, dense point maps for those cameras: ``dense.py``; ``prior.py`` joins both into the ``Prior``.
"""

from recon.lazy import lazy_names  # light package: the CLI parses without torch

__getattr__, __all__ = lazy_names(__name__, {
    "SfMConfig": "recon.priors.classical.config",
    "DenseConfig": "recon.priors.classical.config",
    "ClassicalConfig": "recon.priors.classical.config",
    "SfMResult": "recon.priors.classical.sfm",
    "Tracks": "recon.priors.classical.sfm",
    "run_sfm": "recon.priors.classical.sfm",
})
