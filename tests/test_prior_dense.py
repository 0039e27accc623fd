"""Tests of the dense multi-view stereo of the classical prior (recon.priors.classical.dense).

Accuracy is measured against exact depth: the synthetic scenes' ray-cast depth and, on the real LLFF fern
scene, the depth of COLMAP's sparse points (a reference, not ground truth, so the bars there are looser).
Numbers measured when the bars were set are noted next to each assertion.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
import torch
from conftest import shared_scene

from recon.cameras import Cameras, look_at_w2c, pixel_centers, project, transform_points
from recon.errors import ReconError
from recon.priors.classical.dense import (
    DenseConfig,
    dense_pointmaps,
    estimate_depth_range,
    select_neighbors,
)
from recon.synthetic import SceneConfig, make_scene

# The synthetic scenes are small so that the suite stays fast; planes are capped for the same reason.
SYN_W, SYN_H = 160, 120
FAST = dict(max_planes=64)


def _ranges_from_depth(depth: torch.Tensor, margin: float = 0.25) -> torch.Tensor:
    """(N, 2) near/far from depth maps, as the sparse-point ranges of the pipeline would give them."""
    flat = depth.reshape(depth.shape[0], -1)
    q = torch.quantile(flat, torch.tensor([0.01, 0.99]), dim=1).T
    return torch.stack([q[:, 0] * (1 - margin), q[:, 1] * (1 + margin)], 1)


def _textured(colors: torch.Tensor, k: int = 7, min_std: float = 0.02) -> torch.Tensor:
    """(N, h, w) bool: pixels whose k x k grey window has a standard deviation above ``min_std``."""
    g = colors.mean(-1)[:, None]
    mu = torch.nn.functional.avg_pool2d(g, k, 1, k // 2, count_include_pad=False)
    mu2 = torch.nn.functional.avg_pool2d(g * g, k, 1, k // 2, count_include_pad=False)
    return ((mu2 - mu**2).clamp_min(0).sqrt() > min_std)[:, 0]


def _synthetic_metrics(n_views: int, use_range: bool, arc_deg: float) -> tuple[dict, object]:
    cfg = SceneConfig(n_views=n_views, width=SYN_W, height=SYN_H, supersample=2, arc_deg=arc_deg)
    scene = make_scene(cfg)
    views = scene.views
    rng = _ranges_from_depth(scene.depth) if use_range else None
    t0 = time.perf_counter()
    res = dense_pointmaps(views.images, views.cameras, DenseConfig(**FAST), rng, None)
    seconds = time.perf_counter() - t0
    gt = scene.depth
    assert res.depth.shape == gt.shape  # 160 px < max_side: working resolution = input resolution
    rel = (res.depth - gt).abs() / gt
    conf = res.conf
    confident = conf > 0.5
    unconfident = (conf > 0) & (conf <= 0.5)
    tex = _textured(res.colors)
    m = {
        "completeness": float((confident & tex).sum() / tex.sum()),
        "median_rel": float(rel[confident].median()),
        "outliers_5pct": float((rel[confident] > 0.05).float().mean()),
        "median_rel_unconfident": float(rel[unconfident].median()),
        "outliers_5pct_unconfident": float((rel[unconfident] > 0.05).float().mean()),
        "seconds": seconds,
    }
    print(n_views, "views", {k: round(v, 4) for k, v in m.items()})
    return m, res


@pytest.mark.parametrize(
    "n_views, arc_deg, use_range, min_completeness",
    [
        (2, 15.0, True, 0.45),  # measured 0.56 (two views 15 degrees apart check only each other)
        (3, 30.0, True, 0.52),  # measured 0.62 (15 degrees between neighbours; grazing walls fail)
        (5, 30.0, False, 0.70),  # measured 0.81 (automatic depth range and neighbours)
    ],
)
def test_synthetic_accuracy_and_completeness(
    n_views: int, arc_deg: float, use_range: bool, min_completeness: float
):
    """Completeness over textured pixels, depth accuracy of confident pixels, and the output contract."""
    m, res = _synthetic_metrics(n_views, use_range, arc_deg)
    assert m["completeness"] >= min_completeness
    assert m["median_rel"] < 0.01  # measured 0.005-0.006
    assert m["outliers_5pct"] < 0.05  # measured 0.021-0.033
    # Confidence ranks errors: the pixels it doubts are far worse than those it trusts.
    assert m["median_rel_unconfident"] > 3 * m["median_rel"]  # measured 4.7-10x
    assert m["outliers_5pct_unconfident"] > 5 * m["outliers_5pct"]  # measured 11-21x
    # Output contract: conf in [0, 1], zeros where there is no point, point maps = unprojected depth.
    conf, depth, pm = res.conf, res.depth, res.pointmaps
    assert float(conf.min()) >= 0 and float(conf.max()) <= 1
    assert bool((depth[conf == 0] == 0).all()) and bool((pm[conf == 0] == 0).all())
    uv, z = project(pm.reshape(n_views, -1, 3), res.cameras.K, res.cameras.w2c)
    keep = conf.reshape(n_views, -1) > 0
    centers = pixel_centers(*depth.shape[1:]).reshape(1, -1, 2).expand(n_views, -1, -1)
    assert torch.allclose(uv[keep], centers[keep], atol=1e-2)
    assert torch.allclose(z[keep], depth.reshape(n_views, -1)[keep], rtol=1e-4)


def test_working_resolution_and_colors():
    """A max_side below the image size gives a same-aspect working resolution with scaled K."""
    scene = make_scene(SceneConfig(n_views=3, width=SYN_W, height=SYN_H, supersample=1))
    views = scene.views
    res = dense_pointmaps(views.images, views.cameras, DenseConfig(max_side=96, **FAST))
    assert res.depth.shape == (3, 72, 96) and res.colors.shape == (3, 72, 96, 3)
    assert torch.equal(res.cameras.sizes, torch.tensor([[96, 72]] * 3))
    assert torch.allclose(res.cameras.K, views.cameras.scaled(0.6).K)
    # colours are the downscaled image: the same mean colour as the input
    assert torch.allclose(res.colors.mean((1, 2)), views.images.mean((1, 2)), atol=5e-3)
    assert float((res.conf > 0.5).float().mean()) > 0.3


def _rig(n: int, forward: bool) -> Cameras:
    """n cameras on an arc (radius 4) looking at the origin (forward) or all looking along +y (parallel)."""
    w2c = []
    for i in range(n):
        a = torch.tensor(-0.4 + 0.8 * i / max(n - 1, 1))
        eye = torch.stack([4 * torch.sin(a), -4 * torch.cos(a), torch.tensor(0.3)])
        target = torch.zeros(3) if forward else eye + torch.tensor([0.0, 1.0, 0.0])
        w2c.append(look_at_w2c(eye, target))
    K = torch.tensor([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]]).expand(n, 3, 3).clone()
    return Cameras(K, torch.stack(w2c), torch.tensor([[128, 96]] * n))


def test_estimate_depth_range():
    conv = _rig(5, forward=True)
    rng = estimate_depth_range(conv)
    dist = conv.centers.norm(dim=-1)  # depth of the convergence point (the origin) in each view
    assert bool((rng[:, 0] < dist).all() and (rng[:, 1] > dist).all())
    assert torch.allclose(rng[:, 0] * 9, rng[:, 1], rtol=1e-4)
    par = _rig(5, forward=False)
    rng = estimate_depth_range(par)
    assert bool((rng[:, 0] > 0).all()) and bool((rng[:, 1] > 100 * rng[:, 0]).all())


def test_select_neighbors_prefers_useful_baselines():
    cams = _rig(9, forward=True)  # 0.1 rad (5.7 deg) between consecutive cameras
    nb = select_neighbors(cams, estimate_depth_range(cams), n_neighbors=2, angle_deg=5.0)
    assert nb[4] == [3, 5] or nb[4] == [5, 3]
    assert set(nb[0]) == {1, 2}
    # a camera turned away from the scene is never chosen while useful ones exist
    w2c = cams.w2c.clone()
    w2c[3] = look_at_w2c(cams.centers[3], cams.centers[3] * 2)
    turned = cams.with_w2c(w2c)
    nb = select_neighbors(turned, estimate_depth_range(cams), n_neighbors=3, angle_deg=5.0)
    assert 3 not in nb[4] and 3 not in nb[2]


def test_given_neighbors_are_used_and_empty_lists_filled():
    scene = make_scene(SceneConfig(n_views=4, width=48, height=36, supersample=1))
    imgs, cams = scene.views.images, scene.views.cameras
    cfg = DenseConfig(n_neighbors=2, max_planes=48)
    res = dense_pointmaps(imgs, cams, cfg, neighbors=[[3, 0, 1, 2], [0], [], [2, 2, 1]])
    auto = select_neighbors(res.cameras, res.depth_range, 2)
    # own index dropped, duplicates merged, truncated to n_neighbors; the empty list chosen by geometry
    assert res.neighbors == [[3, 1], [0], auto[2], [2, 1]]


def test_bad_input_raises_recon_error():
    scene = make_scene(SceneConfig(n_views=3, width=32, height=24, supersample=1))
    imgs, cams = scene.views.images, scene.views.cameras
    with pytest.raises(ReconError):
        dense_pointmaps(imgs[:1], cams.subset([0]))
    with pytest.raises(ReconError):
        dense_pointmaps(imgs[:, :, :20], cams)  # sizes do not match the cameras
    with pytest.raises(ReconError):
        dense_pointmaps(imgs, cams, depth_range=torch.tensor([[1.0, 0.5]] * 3))
    with pytest.raises(ReconError):
        dense_pointmaps(imgs, cams, neighbors=[[1], [5], [0]])
    with pytest.raises(ReconError):
        dense_pointmaps(imgs, cams, DenseConfig(window=4))


# --------------------------------------------------------------------------------------------------
# Real data: LLFF fern, 3 training views of the sparse-view split with the dataset's poses
# --------------------------------------------------------------------------------------------------


def _read_points3d_bin(path: Path) -> torch.Tensor:
    """XYZ (P, 3) of a COLMAP points3D.bin (id, xyz, rgb, error, track of (image_id, point2D_idx))."""
    data = path.read_bytes()
    (n,) = struct.unpack_from("<Q", data, 0)
    head = struct.Struct("<Q3d3BdQ")
    off, xyz = 8, []
    for _ in range(n):
        _, x, y, z, _, _, _, _, track_len = head.unpack_from(data, off)
        off += head.size + 8 * track_len
        xyz.append((x, y, z))
    return torch.tensor(xyz, dtype=torch.float32)


def test_llff_fern_agrees_with_colmap_points():
    root = shared_scene("llff_fern")
    from recon.io.llff import load_llff

    views = load_llff(root).subset([1, 10, 19])  # train views 0, 8, 16 of the 17 non-test views
    pts = _read_points3d_bin(root / "sparse" / "0" / "points3D.bin")
    z_all = transform_points(views.cameras.w2c, pts)[..., 2]  # (3, P)
    q = torch.quantile(z_all, torch.tensor([0.01, 0.99]), dim=1).T
    rng = torch.stack([q[:, 0] * 0.75, q[:, 1] * 1.25], 1)
    res = dense_pointmaps(views.images, views.cameras, DenseConfig(max_side=256), rng)
    h, w = res.depth.shape[1:]
    for r in range(3):
        uv, z = project(pts, res.cameras.K[r], res.cameras.w2c[r])
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        ij = uv[inside].long()
        conf = res.conf[r][ij[:, 1], ij[:, 0]]
        d = res.depth[r][ij[:, 1], ij[:, 0]]
        m = conf > 0.5
        rel = (d[m] - z[inside][m]).abs() / z[inside][m]
        density = float((res.conf[r] > 0.5).float().mean())
        print(
            f"fern view {r}: density {density:.3f}, points covered {float(m.float().mean()):.3f}, "
            f"median rel {float(rel.median()):.4f}, within 5% {float((rel < 0.05).float().mean()):.3f}"
        )
        assert float(rel.median()) < 0.025  # measured 0.013-0.015 (0.011-0.012 at the default 320 px)
        assert float((rel < 0.05).float().mean()) > 0.75  # measured 0.81-0.83 (misses: leaf edges, occlusion)
        assert density > 0.35  # measured 0.44-0.49 of all pixels
