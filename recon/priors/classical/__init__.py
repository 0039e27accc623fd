"""The classical (weight-free, CPU) geometry prior.

Part 1, cameras: :func:`run_sfm` (``sfm.py``) built on SIFT/RootSIFT matching (``features.py``), MAGSAC++
two-view geometry and focal self-calibration (``twoview.py``) and bundle adjustment (``bundle.py``).
Part 2, dense point maps for those cameras: ``dense.py``; ``prior.py`` joins both into the ``Prior``.
"""

import importlib

_LAZY = {
    "SfMConfig": "recon.priors.classical.config",
    "DenseConfig": "recon.priors.classical.config",
    "ClassicalConfig": "recon.priors.classical.config",
    "SfMResult": "recon.priors.classical.sfm",
    "Tracks": "recon.priors.classical.sfm",
    "run_sfm": "recon.priors.classical.sfm",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):  # light package: names load on first use (the CLI parses without torch)
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
