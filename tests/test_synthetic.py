"""The synthetic scene: geometric consistency across cameras, texture for matchers, exactness, determinism."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import torch

from recon.cameras import Cameras, project, rotation_angle_deg, skew, transform_points
from recon.errors import ReconError
from recon.synthetic import (
    SceneConfig,
    interpolate_cameras,
    make_scene,
    novel_cameras,
    perturb_cameras,
    save_views,
)


@pytest.fixture(scope="module")
def scene():
    return make_scene(SceneConfig(n_views=8, seed=0))


def _bilinear(img: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Sample (H, W, C) at pixel coordinates uv (M, 2) in the project's convention (centres at +0.5)."""
    H, W = img.shape[:2]
    x = uv[:, 0] - 0.5
    y = uv[:, 1] - 0.5
    x0 = x.floor().long().clamp(0, W - 2)
    y0 = y.floor().long().clamp(0, H - 2)
    fx = (x - x0).clamp(0, 1)[:, None]
    fy = (y - y0).clamp(0, 1)[:, None]
    a, b = img[y0, x0], img[y0, x0 + 1]
    c, d = img[y0 + 1, x0], img[y0 + 1, x0 + 1]
    return (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d)


@pytest.mark.parametrize("a,b", [(0, 3), (6, 1)])
def test_pointmap_of_one_view_lands_on_the_other_views_surface(scene, a, b):
    cams = scene.views.cameras
    X = scene.pointmaps(cams.subset([a]))[0].reshape(-1, 3)
    uv, z = project(X.double(), cams.K[b].double(), cams.w2c[b].double())
    W, H = scene.cfg.width, scene.cfg.height
    inside = (z > 0) & (uv[:, 0] > 1) & (uv[:, 0] < W - 1) & (uv[:, 1] > 1) & (uv[:, 1] < H - 1)
    # Inverse depth is affine in the image over a plane, so bilinear interpolation of 1/depth at the
    # projected location is exact on the planar faces: a half-pixel convention slip shows up here.
    inv_b = _bilinear((1.0 / scene.depth[b].double())[..., None], uv)[:, 0]
    rel = (inv_b * z - 1.0).abs()
    visible = inside & (rel < 0.01)
    assert visible.float().mean() > 0.5
    # ground-truth visibility by ray casting agrees with the depth test almost everywhere
    vis_gt = scene.visible(X, cams.subset([b]))[0]
    assert (vis_gt[inside] == visible[inside]).float().mean() > 0.97
    # measured ~2e-8 / 6e-8 (float32 storage); a half-pixel offset would give ~2e-3 / 9e-3
    assert rel[visible].median() < 1e-6
    assert torch.quantile(rel[visible], 0.9) < 1e-5
    # B's point map at the nearest pixel is within about one pixel footprint of A's point
    ij = uv.floor().long()
    Pb = scene.pointmaps(cams.subset([b]))[0]
    near = Pb[ij[visible, 1], ij[visible, 0]].double()
    footprint = z[visible] / cams.K[b, 0, 0].double()
    assert ((near - X[visible].double()).norm(dim=-1) / footprint).median() < 1.0
    # view-independent (Lambertian) colours agree up to anti-aliasing differences
    col_a = scene.views.images[a].reshape(-1, 3)[visible]
    col_b = _bilinear(scene.views.images[b], uv[visible].float())
    assert (col_a - col_b).abs().mean(dim=-1).median() < 0.03


def _gray_u8(img: torch.Tensor) -> np.ndarray:
    return cv2.cvtColor((img.numpy() * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def test_views_have_texture_and_matches_obey_epipolar_geometry(scene):
    sift = cv2.SIFT_create()
    kp0, des0 = sift.detectAndCompute(_gray_u8(scene.views.images[0]), None)
    kp1, des1 = sift.detectAndCompute(_gray_u8(scene.views.images[2]), None)
    assert len(kp0) > 200 and len(kp1) > 200
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(des0, des1, k=2)
    good = [m for m, n in knn if m.distance < 0.75 * n.distance]
    assert len(good) > 60
    # OpenCV keypoints put pixel centres at integers; the project's convention puts them at +0.5
    x0 = torch.tensor([kp0[m.queryIdx].pt for m in good], dtype=torch.float64) + 0.5
    x1 = torch.tensor([kp1[m.trainIdx].pt for m in good], dtype=torch.float64) + 0.5
    cams = scene.views.cameras
    K0, K1 = cams.K[0].double(), cams.K[2].double()
    rel = cams.w2c[2].double() @ torch.linalg.inv(cams.w2c[0].double())
    F = torch.linalg.inv(K1).T @ skew(rel[:3, 3]) @ rel[:3, :3] @ torch.linalg.inv(K0)
    h0 = torch.cat([x0, torch.ones(len(x0), 1, dtype=torch.float64)], 1)
    h1 = torch.cat([x1, torch.ones(len(x1), 1, dtype=torch.float64)], 1)
    Fx0 = h0 @ F.T
    Ftx1 = h1 @ F
    num = (h1 * Fx0).sum(1) ** 2
    den = Fx0[:, 0] ** 2 + Fx0[:, 1] ** 2 + Ftx1[:, 0] ** 2 + Ftx1[:, 1] ** 2
    sampson_px = (num / den).sqrt()
    assert sampson_px.median() < 0.5


def test_render_of_training_cameras_reproduces_the_training_views(scene):
    images, depth = scene.render(scene.views.cameras)
    assert torch.equal(images, scene.views.images)
    assert torch.equal(depth, scene.depth)
    one, _ = scene.render(scene.views.cameras.subset([5]))
    assert torch.equal(one[0], scene.views.images[5])
    # and the pixels are not trivially equal: the views differ from each other
    assert (scene.views.images[0] - scene.views.images[1]).abs().mean() > 0.02


def test_same_seed_same_scene_other_seed_other_textures():
    cfg = SceneConfig(n_views=2, width=64, height=48, seed=3)
    a = make_scene(cfg)
    b = make_scene(SceneConfig(n_views=2, width=64, height=48, seed=3))
    c = make_scene(SceneConfig(n_views=2, width=64, height=48, seed=4))
    assert torch.equal(a.views.images, b.views.images)
    assert torch.equal(a.views.cameras.w2c, c.views.cameras.w2c)  # seed changes textures, not geometry
    assert torch.equal(a.depth, c.depth)
    assert (a.views.images - c.views.images).abs().mean() > 0.05


def test_oracle_prior_matches_geometry(scene):
    prior = scene.prior_result(stride=2)
    cams = scene.views.cameras
    assert prior.pointmaps.shape == (8, 48, 64, 3)
    assert torch.equal(prior.cameras.K, cams.K)  # K of the full-size views, as PriorResult documents
    assert torch.allclose(prior.pointmaps, scene.pointmaps(cams.scaled(0.5)), atol=1e-5)
    # point map z in each camera frame equals the reported depth
    z = transform_points(cams.w2c.double(), prior.pointmaps.reshape(8, -1, 3).double())[..., 2]
    assert torch.allclose(z.reshape(8, 48, 64), prior.depth.double(), rtol=1e-5)
    # point-map pixel (i, j) covers image pixels [2i, 2i + 2) x [2j, 2j + 2): its colour is their average
    pooled = scene.views.images.reshape(8, 48, 2, 64, 2, 3).mean((2, 4))
    assert (prior.colors - pooled).abs().mean() < 0.02
    assert torch.equal(prior.conf, torch.ones(8, 48, 64))
    # a prior with wrong poses: same depth and colours, point maps placed by its own cameras
    pert = perturb_cameras(cams, rot_deg=2.0, trans=0.1, seed=0)
    off = scene.prior_result(cameras=pert, stride=2)
    assert torch.equal(off.colors, prior.colors) and torch.equal(off.depth, prior.depth)
    z_off = transform_points(pert.w2c.double(), off.pointmaps.reshape(8, -1, 3).double())[..., 2]
    assert torch.allclose(z_off.reshape(8, 48, 64), prior.depth.double(), rtol=1e-5)
    assert (off.pointmaps - prior.pointmaps).norm(dim=-1).mean() > 0.05
    with pytest.raises(ReconError):
        scene.prior_result(cameras=cams.subset([0, 1]))
    noisy = scene.prior_result(stride=2, noise=0.01)
    rel = noisy.depth / prior.depth - 1
    assert abs(float(rel.std()) - 0.01) < 0.001 and abs(float(rel.mean())) < 0.001


def test_novel_interpolated_and_perturbed_cameras(scene):
    cams = scene.views.cameras
    nov = novel_cameras(scene, 7)
    c_train, c_nov = cams.centers, nov.centers
    gap = (c_train[1:] - c_train[:-1]).norm(dim=-1)
    d_prev = (c_nov - c_train[:-1]).norm(dim=-1)
    d_next = (c_nov - c_train[1:]).norm(dim=-1)
    assert torch.allclose(d_prev, gap / 2, rtol=0.05) and torch.allclose(d_next, gap / 2, rtol=0.05)
    images, depth = scene.render(nov)
    assert images.shape == (7, 96, 128, 3) and bool(torch.isfinite(depth).all())
    # a held-out view is new: not a copy of a training view
    assert (images[0] - scene.views.images[0]).abs().mean() > 0.02

    mid = interpolate_cameras(cams, 2, 3, [0.0, 0.5, 1.0])
    assert torch.allclose(mid.w2c[0], cams.w2c[2], atol=1e-5)
    assert torch.allclose(mid.w2c[2], cams.w2c[3], atol=1e-5)
    half = rotation_angle_deg(mid.w2c[1, :3, :3], cams.w2c[2, :3, :3])
    full = rotation_angle_deg(cams.w2c[3, :3, :3], cams.w2c[2, :3, :3])
    assert abs(float(half) - float(full) / 2) < 1e-2

    pert = perturb_cameras(cams, rot_deg=3.0, trans=0.2, seed=1)
    ang = rotation_angle_deg(pert.w2c[:, :3, :3], cams.w2c[:, :3, :3])
    assert torch.allclose(ang, torch.full((8,), 3.0), atol=1e-2)
    moved = (pert.centers - cams.centers).norm(dim=-1)
    assert bool((moved > 0.05).all())


def test_orbit_scene_sees_closed_geometry():
    sc = make_scene(SceneConfig(n_views=6, width=64, height=48, trajectory="orbit", seed=1))
    c = sc.views.cameras.centers
    assert bool(torch.isfinite(sc.depth).all()) and float(sc.depth.min()) > 0.5
    assert bool(((c >= sc.bounds[0]) & (c <= sc.bounds[1])).all())
    # full circle with no duplicated end view: all centres distinct and equally spaced
    gaps = (c - c.roll(1, 0)).norm(dim=-1)
    assert float(gaps.min()) > 1.0 and float(gaps.max() - gaps.min()) < 0.2


def test_rendering_eight_views_is_fast():
    sc = make_scene(SceneConfig(n_views=1))
    cams = novel_cameras(sc, 8)
    t0 = time.process_time()  # CPU time: the machine running the tests may be shared
    sc.render(cams)
    assert time.process_time() - t0 < 2.0


def test_save_views_writes_the_pngs_atomically(scene, tmp_path):
    paths = save_views(scene.views, tmp_path / "imgs")
    assert [p.name for p in paths] == scene.views.names
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == scene.views.names  # no temp files left
    back = cv2.cvtColor(cv2.imread(str(paths[4])), cv2.COLOR_BGR2RGB)
    expect = (scene.views.images[4].numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(back, expect)


def test_bad_input_raises_recon_error(scene):
    with pytest.raises(ReconError):
        make_scene(SceneConfig(n_views=0))
    cams = scene.views.cameras.subset([0, 1])
    mixed = Cameras(cams.K, cams.w2c, torch.tensor([[128, 96], [64, 48]]), cams.names)
    with pytest.raises(ReconError):
        scene.render(mixed)
    outside = cams.clone()
    outside.w2c[:, :3, 3] -= outside.w2c[:, :3, :3] @ torch.tensor([0.0, 0.0, 50.0])  # centre 50 above
    with pytest.raises(ReconError):
        scene.render(outside)
