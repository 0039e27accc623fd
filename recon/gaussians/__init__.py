"""Gaussian parameters (``model.py``), their initialisation from point maps (``init.py``, configured by
``config.py``), densification, and their files: the 3DGS PLY (``ply.py``) and the web viewers' ``.splat``
(``splat.py``).

The package itself stays light (no torch at import, so that the CLI parses arguments quickly): its names
are loaded on first use.
"""

from __future__ import annotations

from recon.lazy import lazy_names

__getattr__, __all__ = lazy_names(__name__, {
    "SH_C0": "recon.gaussians.model",
    "Gaussians": "recon.gaussians.model",
    "num_sh_bases": "recon.gaussians.model",
    "rgb_to_sh0": "recon.gaussians.model",
    "sh0_to_rgb": "recon.gaussians.model",
    "InitConfig": "recon.gaussians.config",
    "InitStats": "recon.gaussians.init",
    "init_from_points": "recon.gaussians.init",
    "init_from_prior": "recon.gaussians.init",
    "load_ply": "recon.gaussians.ply",
    "save_ply": "recon.gaussians.ply",
    "load_splat": "recon.gaussians.splat",
    "save_splat": "recon.gaussians.splat",
})
