"""Exports people use: a TSDF mesh (``mesh.py``), a nerfstudio dataset and a ``.splat`` file
(``api.py`` over :mod:`recon.io.nerfstudio` and :mod:`recon.io.splat`), configured by ``config.py``.

The package itself stays light (no torch at import, so that the CLI parses arguments quickly): its names
are loaded on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ExportConfig": "recon.export.config",
    "ExportFormat": "recon.export.config",
    "MeshConfig": "recon.export.config",
    "NerfstudioConfig": "recon.export.config",
    "ExportResult": "recon.export.api",
    "export": "recon.export.api",
    "gaussians_to_mesh": "recon.export.mesh",
    "save_mesh": "recon.export.mesh",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
