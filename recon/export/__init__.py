"""Exports people use: a TSDF mesh (``mesh.py``), a nerfstudio dataset and a ``.splat`` file
(``api.py`` over :mod:`recon.io.nerfstudio` and :mod:`recon.gaussians.splat`), configured by ``config.py``.

The package itself stays light (no torch at import, so that the CLI parses arguments quickly): its names
are loaded on first use.
"""

from __future__ import annotations

from recon.lazy import lazy_names

__getattr__, __all__ = lazy_names(__name__, {
    "ExportConfig": "recon.export.config",
    "ExportFormat": "recon.export.config",
    "MeshConfig": "recon.export.config",
    "NerfstudioConfig": "recon.export.config",
    "ExportResult": "recon.export.api",
    "export": "recon.export.api",
    "gaussians_to_mesh": "recon.export.mesh",
    "save_mesh": "recon.export.mesh",
})
