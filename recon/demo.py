"""The embedded demo: reconstruct the synthetic scene (known poses) and report held-out metrics.

Needs no data or weights; ``recon demo --out OUT`` (and ``make demo``) run it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from recon.pipeline import ReconConfig, run
from recon.synthetic import SceneConfig, make_scene


def demo_config(iters: int = 1000) -> ReconConfig:
    """Dataset poses, every 4th view held out, full-resolution (small) images."""
    cfg = ReconConfig(poses="dataset", test_every=4)
    return replace(cfg, train=replace(cfg.train, iters=iters))


def run_demo(out: Path, iters: int = 1000, scene: SceneConfig | None = None) -> dict:
    """Generate the demo scene, reconstruct it into ``out`` and return its metrics."""
    views = make_scene(scene or SceneConfig(n_views=12, width=160, height=120)).views
    recon = run(views, Path(out), demo_config(iters))
    return recon.metrics
