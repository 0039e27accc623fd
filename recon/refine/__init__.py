"""Refinement after the first optimisation round: outlier pose correction (``poses.py``, on by default)
and diffusion-prior refinement of unseen regions (``diffusion.py``, off unless a model folder is given);
``stages.py`` runs them in order (:func:`refine`), ``config.py`` holds their settings.

The package itself stays light (no torch at import): its names are loaded on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "RefineConfig": "recon.refine.config",
    "PoseCorrectionConfig": "recon.refine.config",
    "DiffusionConfig": "recon.refine.config",
    "RefineResult": "recon.refine.stages",
    "refine": "recon.refine.stages",
    "reposition_prior": "recon.refine.stages",
    "prior_depths": "recon.refine.stages",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
