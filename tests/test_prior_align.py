"""Global alignment of pairwise point maps: recovers poses and focals from noisy, outlier-ridden pairs."""

import math

import pytest
import torch

from recon.cameras import invert_rigid, look_at_w2c, rotation_angle_deg, transform_points
from recon.priors.align import AlignConfig, PairPrediction, _depth_rays, estimate_focal, global_align


def make_views(n=4, H=24, W=32, focal=30.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    c2ws, depths = [], []
    for v in range(n):
        ang = -0.5 + v / max(n - 1, 1)  # cameras on an arc of ~1 rad looking at the origin
        eye = torch.tensor([3.0 * math.sin(ang), -3.0 * math.cos(ang), 0.3 * v], dtype=torch.float64)
        w2c = look_at_w2c(eye, torch.zeros(3, dtype=torch.float64))
        c2ws.append(invert_rigid(w2c))
        yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
        bumps = 0.5 * torch.sin(6 * xx + v) * torch.cos(4 * yy)
        depths.append((3.0 + bumps + 0.1 * torch.rand(H, W, generator=g)).double())
    c2w = torch.stack(c2ws)
    rays = _depth_rays(H, W, torch.full((n,), focal, dtype=torch.float64))
    pts_cam = rays * torch.stack(depths)[..., None]
    return c2w, pts_cam


def pair_predictions(c2w, pts_cam, noise=0.01, outlier_frac=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    n, H, W, _ = pts_cam.shape
    preds = []
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            scale = float(0.5 + torch.rand(1, generator=g))  # each pair has its own unknown scale
            T_ij = invert_rigid(c2w[i]) @ c2w[j]  # frame j -> frame i
            Xi = pts_cam[i] * scale
            Xj = transform_points(T_ij, pts_cam[j].reshape(-1, 3)).reshape(H, W, 3) * scale
            out = []
            for X in (Xi, Xj):
                X = X * (1 + noise * torch.randn(X.shape, generator=g, dtype=X.dtype))
                bad = torch.rand(H, W, generator=g) < outlier_frac
                X[bad] = X[bad] + 2.0 * torch.randn(int(bad.sum()), 3, generator=g, dtype=X.dtype)
                out.append((X.float(), torch.where(bad, 1.6, 3.0 + torch.rand(H, W, generator=g))))
            preds.append(PairPrediction(i, j, out[0][0], out[1][0], out[0][1], out[1][1]))
    return preds


def test_estimate_focal_exact_on_clean_points():
    _, pts = make_views(n=1)
    f = estimate_focal(pts[0], torch.ones(pts.shape[1:3], dtype=torch.float64))
    assert float(f) == pytest.approx(30.0)


@pytest.mark.parametrize("n", [3, 5])
def test_global_align_recovers_poses_within_1_degree(n):
    c2w, pts = make_views(n=n)
    preds = pair_predictions(c2w, pts)
    res = global_align(n, preds, AlignConfig(iters=200))
    # relative rotations (gauge-free) and focal
    errs = [float(rotation_angle_deg(res.c2w[i, :3, :3].double().T @ res.c2w[j, :3, :3].double(),
                                     c2w[i, :3, :3].T @ c2w[j, :3, :3]))
            for i in range(n) for j in range(i + 1, n)]
    assert max(errs) < 1.0, errs
    assert torch.allclose(res.focal, torch.full((n,), 30.0), rtol=0.03)
    # camera centres agree up to scale: the estimate's world is view 0's camera frame, so compare the
    # directions from camera 0 to the others in that frame
    C_est = res.c2w[:, :3, 3].double()
    C_ref = transform_points(invert_rigid(c2w[0]), c2w[:, :3, 3])
    d_est = (C_est[1:] - C_est[0]) / (C_est[1:] - C_est[0]).norm(dim=1, keepdim=True)
    d_ref = (C_ref[1:] - C_ref[0]) / (C_ref[1:] - C_ref[0]).norm(dim=1, keepdim=True)
    ang = torch.rad2deg(torch.arccos((d_est * d_ref).sum(1).clamp(-1, 1)))
    assert float(ang.max()) < 2.0


def test_global_align_improves_on_initialisation():
    c2w, pts = make_views(n=4)
    preds = pair_predictions(c2w, pts, noise=0.03)
    init = global_align(4, preds, AlignConfig(iters=0))
    opt = global_align(4, preds, AlignConfig(iters=200))
    assert opt.loss < init.loss * 0.9
