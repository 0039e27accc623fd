"""Refinement after the first optimisation round: outlier pose correction (``poses.py``, on by default)
and diffusion-prior refinement of unseen regions (``diffusion.py``, off unless a model folder is given);
each is a stage behind the small protocol of ``base.py``; ``stages.py`` runs a list of them in order
(:func:`refine`), ``config.py`` holds their settings.

The package itself stays light (no torch at import): its names are loaded on first use.
"""

from __future__ import annotations

from recon.lazy import lazy_names

__getattr__, __all__ = lazy_names(__name__, {
    "RefineConfig": "recon.refine.config",
    "PoseCorrectionConfig": "recon.refine.config",
    "DiffusionConfig": "recon.refine.config",
    "RefineResult": "recon.refine.stages",
    "refine": "recon.refine.stages",
    "reposition_prior": "recon.refine.poses",
    "prior_depths": "recon.refine.diffusion",
    "build_stages": "recon.refine.stages",
    "Scene": "recon.refine.base",
    "RefineContext": "recon.refine.base",
    "RefineStage": "recon.refine.base",
})
