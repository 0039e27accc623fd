"""The classical (weight-free, CPU) geometry prior.

Part 1, cameras: :func:`run_sfm` (the driver, ``sfm.py``) built on SIFT/RootSIFT matching
(``recon.matching``), MAGSAC++ two-view geometry and focal self-calibration (``twoview.py``,
``verification.py``, ``focal.py``), feature tracks (``tracks.py``), the model being built
(``sfm_model.py``), view registration (``registration.py``), guided matching (``guided.py``), bundle
adjustment (``bundle.py``) and the result (``sfm_result.py``).
Part 2, dense point maps for those cameras: ``dense.py`` (the driver) on the plane sweep
(``plane_sweep.py``) and its consistency filter (``consistency.py``); ``prior.py`` joins both into the
``Prior``.
"""

from recon.lazy import lazy_names  # light package: the CLI parses without torch

__getattr__, __all__ = lazy_names(__name__, {
    "SfMConfig": "recon.priors.classical.config",
    "DenseConfig": "recon.priors.classical.config",
    "ClassicalConfig": "recon.priors.classical.config",
    "SfMResult": "recon.priors.classical.sfm_result",
    "Tracks": "recon.priors.classical.sfm_result",
    "run_sfm": "recon.priors.classical.sfm",
})
