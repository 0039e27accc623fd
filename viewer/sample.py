"""Small synthetic inputs for trying the viewer, its tests and its benchmark, in seconds and without data.

- :func:`write_sample_reconstruction` writes an output folder as ``recon run`` does (point_cloud.ply,
  cameras.json with initial poses, renders, metrics.json, cache/prior.safetensors) without training:
  the Gaussians are initialised from an exact ("oracle") prior of :mod:`recon.synthetic`'s scene. A
  ``mesh.ply`` (as ``recon export --format mesh`` adds) is the exact surface seen by the first camera.
- :func:`write_sample_dataset` writes that scene's images with their poses as a COLMAP text dataset, the
  input of ``recon run --poses dataset``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recon.synthetic import SceneConfig, SyntheticScene, make_scene, perturb_cameras, save_views


def sample_scene(n_views: int = 4, width: int = 64, height: int = 48, seed: int = 0) -> SyntheticScene:
    return make_scene(SceneConfig(n_views=n_views, width=width, height=height, seed=seed))


def write_grid_mesh(
    path: str | Path,
    points: torch.Tensor,
    colors: torch.Tensor,
    center: torch.Tensor,
    max_rel_jump: float = 0.05,
) -> None:
    """Write the surface of a camera's point map as a vertex-coloured triangle mesh (PLY), atomically.

    Args:
        points: (H, W, 3) world points seen through each pixel of the camera.
        colors: (H, W, 3) float colours in [0, 1].
        center: (3,) the camera centre.
        max_rel_jump: triangles with an edge longer than this fraction of their distance from the camera
            are left out (they would bridge a depth discontinuity).
    """
    import trimesh  # a dependency of viser

    from recon.io.atomic import atomic_path

    H, W = points.shape[:2]
    idx = np.arange(H * W).reshape(H, W)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[:-1, 1:], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    P = points.reshape(-1, 3).double().numpy()
    dist = np.linalg.norm(P[faces[:, 0]] - center.double().numpy(), axis=1)
    edges = [np.linalg.norm(P[faces[:, i]] - P[faces[:, (i + 1) % 3]], axis=1) for i in range(3)]
    faces = faces[np.max(edges, axis=0) <= max_rel_jump * dist]
    rgb = (colors.reshape(-1, 3).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    mesh = trimesh.Trimesh(vertices=P.astype(np.float32), faces=faces, vertex_colors=rgb, process=False)
    with atomic_path(path) as tmp:
        mesh.export(str(tmp))


def write_sample_reconstruction(
    out: str | Path, n_views: int = 4, width: int = 64, height: int = 48, seed: int = 0, mesh: bool = True
) -> Path:
    """Write a reconstruction output folder of the synthetic scene into ``out``; returns ``out``.

    Final cameras are the reference ones; initial cameras are those perturbed by 3 degrees and 0.1
    units (so the two frustum sets are told apart); the Gaussians come from the oracle prior. With
    ``mesh``, ``mesh.ply`` is the true surface seen by the first camera (:func:`write_grid_mesh`).
    """
    from recon.gaussians.init import init_from_prior
    from recon.optim.heldout import score_views
    from recon.outputs import write_outputs
    from recon.priors.cache import save_prior
    from recon.reconstruction import Reconstruction
    from recon.render.gaussians import render_images

    out = Path(out)
    scene = sample_scene(n_views, width, height, seed)
    views = scene.views
    prior = scene.prior_result()
    gaussians, stats = init_from_prior(prior)
    initial = perturb_cameras(views.cameras, rot_deg=3.0, trans=0.1, seed=seed)
    with torch.no_grad():
        renders = render_images(gaussians, views.cameras)
    scores = score_views(renders, views.images, views.names)
    recon = Reconstruction(
        cameras=views.cameras,
        initial_cameras=initial,
        gaussians=gaussians,
        views=views,
        prior=prior,
        metrics={"train": {"psnr": scores.psnr, "ssim": scores.ssim},
                 "views": {"total": len(views), "registered": len(views), "failed": {}},
                 "num_gaussians": len(gaussians), "init": stats, "seconds": 0.0},
    )
    write_outputs(recon, out, renders={"train": (views.names, renders, views.images)})
    save_prior(out / "cache" / "prior.safetensors", prior)
    if mesh:
        first = views.cameras.subset([0])
        write_grid_mesh(out / "mesh.ply", scene.pointmaps(first)[0], views.images[0], first.centers[0])
    return out


def write_sample_dataset(root: str | Path, n_views: int = 4, width: int = 64, height: int = 48,
                         seed: int = 0) -> Path:
    """Write the synthetic scene as ``root/images/*.png`` + ``root/sparse/0/*.txt`` (COLMAP text model with
    the exact poses); returns ``root``."""
    from recon.io.colmap import write_colmap_text

    root = Path(root)
    views = sample_scene(n_views, width, height, seed).views
    save_views(views, root / "images")
    write_colmap_text(root / "sparse" / "0", views.cameras, np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    return root
