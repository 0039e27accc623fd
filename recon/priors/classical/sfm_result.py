"""What SfM returns: the placed cameras, the sparse points and their observations, stereo neighbours."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from recon.cameras import Cameras
from recon.priors.classical.bundle import project_points
from recon.priors.classical.sfm_model import SfMModel, camera_centers_np
from recon.views import Views


@dataclass
class Tracks:
    """Observations of the sparse points, flat (one row per observation).

    Attributes:
        point: (O,) index into ``points3d``; view: (O,) index into the result's ``cameras``;
        xy: (O, 2) pixel position (project pixel convention).
    """

    point: np.ndarray
    view: np.ndarray
    xy: np.ndarray


@dataclass
class SfMResult:
    """Cameras and sparse structure of the views that could be placed.

    Attributes:
        cameras: placed views only, in input order; K for the views' image size, w2c (OpenCV).
        points3d: (P, 3) float64 world points; colors: (P, 3) float32 in [0, 1].
        tracks: the observations of every point in the placed views.
        failed: view name -> one-line reason, for views that could not be placed.
        neighbors: per placed camera (index into ``cameras``), the other placed cameras sorted by
            stereo usefulness (shared points, discounted below a 5 degree median triangulation angle).
        neighbor_scores: the matching scores.
        info: diagnostics (per-pair match statistics, focal estimate, timings, residuals).
    """

    cameras: Cameras
    points3d: np.ndarray
    colors: np.ndarray
    tracks: Tracks
    failed: dict[str, str] = field(default_factory=dict)
    neighbors: list[list[int]] = field(default_factory=list)
    neighbor_scores: list[list[float]] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def assemble(views: Views, model: SfMModel, failed: dict[str, str]) -> SfMResult:
    """Package the model: placed views in input order, world scaled to a median depth of 1."""
    t = model.tracks
    placed = sorted(model.w2c)
    slot = {v: i for i, v in enumerate(placed)}
    pts, pslot, el = model.observations()
    w2c = np.stack([model.w2c[v] for v in placed])
    X = model.X[pts]
    # scale gauge: median depth of the observed points = 1 (the reference view stays at the origin)
    obs_view = np.array([slot[v] for v in t.view[el]], dtype=np.int64)
    _, z = project_points(w2c, model.focal, model.pp, X[pslot[t.trk[el]]], obs_view)
    s = 1.0 / max(float(np.median(z[z > 0])) if (z > 0).any() else 1.0, 1e-12)
    X = X * s
    w2c[:, :3, 3] *= s
    colors = np.zeros((len(pts), 3), np.float32)
    np.add.at(colors, pslot[t.trk[el]], t.rgb[el])
    colors /= np.maximum(np.bincount(pslot[t.trk[el]], minlength=len(pts)), 1)[:, None]
    tracks = Tracks(pslot[t.trk[el]], obs_view, t.xy[el])
    neighbors, neighbor_scores = _stereo_neighbors(w2c, X, tracks)

    m = len(placed)
    W, H = views.size
    K = torch.tensor([[model.focal, 0, W / 2.0], [0, model.focal, H / 2.0], [0, 0, 1.0]], dtype=torch.float32)
    cams = Cameras(
        K=K.expand(m, 3, 3).clone(),
        w2c=torch.tensor(w2c, dtype=torch.float32),
        sizes=torch.tensor([[W, H]] * m, dtype=torch.int64),
        names=[views.names[v] for v in placed],
    )
    err = np.linalg.norm(
        project_points(w2c, model.focal, model.pp, X[tracks.point], tracks.view)[0] - tracks.xy, axis=1
    ) if len(el) else np.zeros(0)
    info = {"n_points": int(len(pts)), "n_observations": int(len(el)),
            "mean_track_length": float(len(el) / max(len(pts), 1)),
            "reproj_median_px": float(np.median(err)) if len(err) else None,
            "placed": [views.names[v] for v in placed]}
    return SfMResult(cams, X, colors, tracks, dict(failed), neighbors, neighbor_scores, info)


def _stereo_neighbors(
    w2c: np.ndarray, X: np.ndarray, tracks: Tracks
) -> tuple[list[list[int]], list[list[float]]]:
    """Per camera of w2c (M, 4, 4), the others sorted by shared points of X (P, 3), discounted when their
    median triangulation angle is under 5 degrees; and those scores. Cameras sharing nothing are left out."""
    m = len(w2c)
    C = camera_centers_np(w2c)
    vis = [set(tracks.point[tracks.view == a].tolist()) for a in range(m)]
    score = np.zeros((m, m))
    for a in range(m):
        for b in range(a + 1, m):
            shared = np.array(sorted(vis[a] & vis[b]), dtype=int)
            if len(shared) == 0:
                continue
            ra = X[shared] - C[a]
            rb = X[shared] - C[b]
            norm = np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1)
            cos = (ra * rb).sum(1) / np.maximum(norm, 1e-12)
            ang = float(np.median(np.degrees(np.arccos(np.clip(cos, -1, 1)))))
            score[a, b] = score[b, a] = len(shared) * min(1.0, ang / 5.0)
    neighbors = [[int(b) for b in np.argsort(-score[a], kind="stable") if b != a and score[a, b] > 0]
                 for a in range(m)]
    return neighbors, [[float(score[a, b]) for b in neighbors[a]] for a in range(m)]
