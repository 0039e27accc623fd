"""The embedded demo: pose-free reconstruction of the synthetic scene, scored against its known truth.

Needs no data or weights; ``recon demo --out OUT`` (and ``make demo``) run it. The main job of the project
on photos whose poses it does not know: the classical prior estimates the cameras (structure from
motion + dense stereo), the Gaussians and the poses are optimised jointly, and the result is scored
against what the synthetic scene knows exactly:

- held-out PSNR/SSIM on views half way between consecutive training views (interpolation, the
  sparse-view literature's novel-view protocol; their reference poses are aligned into the estimated
  frame and refined against the frozen Gaussians, as in InstantSplat);
- pose errors of the optimised (and prior) cameras against the true ones (``metrics["poses"]``);
- the exported TSDF mesh (``OUT/mesh.ply``) against the true surfaces: Chamfer distance, also as a
  fraction of the scene extent (``metrics["mesh"]``).

``poses="dataset"`` runs the known-pose variant (the scene's true cameras, dense stereo only).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch

from recon.cameras import Cameras
from recon.config import ReconConfig
from recon.export.config import ExportConfig, MeshConfig

DEMO_SCENE = {"n_views": 8, "width": 160, "height": 120}
"""The demo scene (:class:`recon.synthetic.SceneConfig` fields): 8 views at 160 x 120 on a 30-degree arc."""
MESH_SAMPLES = 100_000
"""Points sampled on the exported mesh for the Chamfer distance."""
CHAMFER_CAP = 0.1
"""Chamfer distances are capped at this fraction of the scene extent."""
TRUTH_SPACING = 0.02
"""Mean spacing of the samples of the true surfaces (scene units; the demo scene's extent is 5.6)."""


def demo_config(iters: int = 1000, poses: Literal["prior", "dataset"] = "prior") -> ReconConfig:
    """The demo's configuration.

    Pose-free (``poses="prior"``) with the classical prior made for speed on 8 small images: 1000 SIFT
    and 1000 affine-simulated keypoints per image (plenty at 160 x 120), no guided matching (every pair
    already matches directly on this scene) and at most 10 evaluations per bundle adjustment. Training:
    full-resolution (small) images, densification on, SH degree 0 (the scene is Lambertian). Held-out
    poses get 100 refinement steps (the aligned reference poses start within a fraction of a degree).
    """
    cfg = ReconConfig(poses=poses, test_pose_iters=100)
    sfm = replace(cfg.classical.sfm, max_features=1000, affine_features=1000, guided_rounds=0, ba_max_nfev=10)
    return replace(
        cfg,
        classical=replace(cfg.classical, sfm=sfm),
        train=replace(cfg.train, iters=iters, densify=True, sh_degree=0),
    )


def surface_error(
    mesh,
    scene,
    cameras: Cameras,
    samples: int = MESH_SAMPLES,
    spacing: float = TRUTH_SPACING,
    cap: float = CHAMFER_CAP,
) -> dict:
    """Chamfer distance of a mesh made in the frame of ``cameras`` to the true surfaces of ``scene``.

    The mesh is brought into the scene's frame by the similarity fitted between ``cameras`` and the
    scene's true cameras of the same names (:func:`recon.eval.novel_view.reference_to_estimate`), and
    sampled uniformly by area (``samples`` points). The true surfaces are sampled uniformly by area too
    (one point per ``spacing``^2 on average), where the true cameras see them
    (:meth:`recon.synthetic.SyntheticScene.surface_samples`). Distances are capped at ``cap`` times the
    scene extent (an uncovered region counts as that far).

    Returns :func:`recon.eval.surface.chamfer_distance`'s dict (scene units) plus each value as a fraction
    of ``scene.extent`` (``*_frac``).
    """
    from recon.eval.novel_view import reference_to_estimate
    from recon.eval.surface import chamfer_distance, sample_mesh

    ref = scene.views.cameras.subset(cameras.names)
    s, R, t = reference_to_estimate(cameras.to("cpu"), ref)
    pts = torch.from_numpy(sample_mesh(mesh, samples))
    pts_ref = ((pts - t) @ R / s).numpy()  # X_ref = R^T (X_est - t) / s, row vectors
    truth = scene.surface_samples(ref, spacing).numpy()
    res = chamfer_distance(pts_ref, truth, max_dist=cap * scene.extent)
    res.update({f"{k}_frac": v / scene.extent for k, v in list(res.items())})
    res["extent"] = scene.extent
    return res


def run_demo(
    out: Path,
    iters: int = 1000,
    scene=None,
    poses: Literal["prior", "dataset"] = "prior",
    mesh: MeshConfig | None = None,
    cfg: ReconConfig | None = None,
) -> dict:
    """Generate the demo scene, reconstruct it into ``out``, export its mesh and return the metrics.

    Args:
        out: output folder (the files of ``recon run`` plus ``mesh.ply``).
        iters: optimisation steps.
        scene: a :class:`recon.synthetic.SceneConfig` (default: :data:`DEMO_SCENE`).
        poses: "prior" (pose-free, the default) or "dataset" (the scene's true cameras).
        mesh: mesh export options (default :class:`MeshConfig`).
        cfg: the run's configuration (default: :func:`demo_config` of ``iters`` and ``poses``).

    Returns the metrics written to ``out/metrics.json``: those of the run, plus ``mesh`` (the mesh's
    numbers and its Chamfer distance to the true surfaces) and ``demo`` (total seconds, pose mode).
    """
    from recon.export.api import export
    from recon.io.atomic import atomic_write_json
    from recon.io.export import to_jsonable
    from recon.pipeline import run
    from recon.synthetic import SceneConfig, make_scene, novel_cameras
    from recon.views import Views

    t0 = time.perf_counter()
    out = Path(out)
    scene_cfg = scene or SceneConfig(**DEMO_SCENE)
    synthetic = make_scene(scene_cfg)
    cams = novel_cameras(synthetic, max(scene_cfg.n_views - 1, 1))
    images, _ = synthetic.render(cams)
    test = Views(images=images, names=cams.names, cameras=cams, source="synthetic")
    cfg = cfg or demo_config(iters, poses)
    recon = run(synthetic.views, out, cfg, test_views=test)

    t_mesh = time.perf_counter()
    mesh_cfg = mesh or MeshConfig()
    res = export(recon, ExportConfig(format="mesh", mesh=mesh_cfg), to=out / "mesh.ply")
    from recon.export.mesh import load_mesh

    fused = load_mesh(res.paths[0])
    metrics = recon.metrics
    metrics["mesh"] = {
        **res.info,
        "seconds": time.perf_counter() - t_mesh,
        "surface": surface_error(fused, synthetic, recon.cameras),
    }
    seconds = time.perf_counter() - t0
    metrics["demo"] = {"poses": cfg.poses, "seconds": seconds, "scene": to_jsonable(scene_cfg)}
    atomic_write_json(out / "metrics.json", to_jsonable(metrics))
    return metrics


__all__ = ["DEMO_SCENE", "demo_config", "run_demo", "surface_error"]
