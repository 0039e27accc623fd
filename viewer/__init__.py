"""recon's browser viewer, on viser (the ``viewer`` extra). It imports recon; recon never imports it,
except the CLI's lazy imports for ``recon view`` and ``recon run --viewer``.

- :mod:`viewer.app`: ``recon view OUT`` (a finished reconstruction, or any 3DGS PLY).
- :mod:`viewer.live`: :class:`~viewer.live.LiveViewer`, the live view of a training run.
- :mod:`viewer.scene`: what both share (conversions to viser, the scene and its controls).
- :mod:`viewer.server`: host/port handling and server start-up.
- :mod:`viewer.browser`, :mod:`viewer.screenshot`: headless Chromium for tests and docs/viewer.png.
- :mod:`viewer.sample`, :mod:`viewer.bench`: small synthetic inputs; the training-slowdown benchmark.
"""
