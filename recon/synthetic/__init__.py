"""Synthetic scenes with exact geometry: the embedded demo and the test bed of the whole project.

A scene is a closed, textured "room" (floor, walls, ceiling: every ray hits something, so depth is
defined everywhere) holding a few rotated boxes and optionally a sphere. Surfaces carry procedural
textures (multi-scale value noise, stripes, checkers, colour gradients, text-like marks and small
shapes) baked into texture tiles, and a fixed Lambertian shading, so colours are view-independent and
feature matchers and photometric losses both have plenty of signal.

Images are made by an exact ray caster (analytic ray/box/sphere intersections in float64, not
Gaussians), anti-aliased by averaging ``supersample x supersample`` rays per pixel. Depth and point
maps are those of the ray through each pixel centre, so they are exact for any camera: training
cameras, novel views between them, or perturbed poses.

Conventions are the project's (``shared/CONVENTIONS.md``, :mod:`recon.cameras`): world z is up, cameras
are OpenCV (x right, y down, z forward), extrinsics are ``w2c``, pixel (i, j) has its centre at
(j + 0.5, i + 0.5). Depth is z-depth in the camera frame.

Typical use::

    scene = make_scene(SceneConfig(n_views=8))
    views = scene.views                          # Views(source="synthetic") with reference cameras
    images, depth = scene.render(novel_cameras(scene, 4))
    prior = scene.prior_result(stride=2)         # an exact "oracle" PriorResult

Modules: :mod:`.scene` (the API re-exported here: configuration, scene, cameras, saving),
:mod:`.geometry` (primitives), :mod:`.textures` (procedural textures) and :mod:`.raycast` (the renderer).
"""

from __future__ import annotations

from recon.cameras import interpolate_cameras
from recon.synthetic.scene import (
    SceneConfig,
    SyntheticScene,
    make_scene,
    novel_cameras,
    perturb_cameras,
    save_views,
)
from recon.synthetic.textures import MARK_AREA as MARK_AREA

__all__ = [
    "SceneConfig",
    "SyntheticScene",
    "make_scene",
    "novel_cameras",
    "interpolate_cameras",
    "perturb_cameras",
    "save_views",
]
