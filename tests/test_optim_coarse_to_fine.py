"""The trainer's cheap steps: coarse-to-fine levels and full-resolution random crops render what they
claim (the same scene, the right pixels), and training and pose fitting with them still converge."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recon.cameras import Cameras, rotation_angle_deg
from recon.gaussians.init import InitConfig, init_from_prior
from recon.metrics import psnr
from recon.optim.batches import _random_crop, image_pyramid
from recon.optim.pose import fit_poses
from recon.optim.schedules import resolution_level
from recon.optim.trainer import TrainConfig, train
from recon.render.gaussians import render_images
from recon.synthetic import SceneConfig, make_scene, novel_cameras, perturb_cameras

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def scene():
    torch.set_num_threads(1)
    return make_scene(SceneConfig(n_views=4, width=256, height=192, seed=1))


@pytest.fixture(scope="module")
def trained(scene):
    """Gaussians fitted to the scene's views with full-resolution steps only."""
    g, _ = init_from_prior(scene.prior_result(), InitConfig(max_gaussians=20000))
    cfg = TrainConfig(iters=120, optimize_poses=False, sh_degree=0, coarse_levels=0)
    return train(g, scene.views.cameras, scene.views.images, cfg, progress=False).gaussians


def test_resolution_schedule_counts_down_then_stays_at_full_resolution():
    levels = [resolution_level(s, 100, 2, 0.5) for s in range(100)]
    assert levels[:25] == [2] * 25 and levels[25:50] == [1] * 25 and levels[50:] == [0] * 50
    assert all(resolution_level(s, 100, 0, 0.5) == 0 for s in range(100))


def test_pyramid_level_renders_the_downsampled_image(scene, trained):
    """Rendering with a level's K and size matches the area-downsampled full render; K is scaled with the
    pixel-corner convention, so a principal point shifted by half a pixel (the classic mistake) matches
    clearly worse."""
    g = trained
    cams = scene.views.cameras.subset([0])
    with torch.no_grad():
        full = render_images(g, cams)
        pyr = image_pyramid(full, cams.K, levels=2, min_side=32)
        assert [(lv.width, lv.height) for lv in pyr] == [(256, 192), (128, 96), (64, 48)]
        assert torch.allclose(pyr[1].images, F.avg_pool2d(full.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1))
        lv = pyr[1]
        size = torch.tensor([[lv.width, lv.height]])
        good = float(psnr(render_images(g, Cameras(lv.K, cams.w2c, size, cams.names))[0], lv.images[0]))
        K_bad = lv.K.clone()
        K_bad[:, :2, 2] += 0.5
        bad = float(psnr(render_images(g, Cameras(K_bad, cams.w2c, size, cams.names))[0], lv.images[0]))
    assert good > 25.0 and good > bad + 1.0, (good, bad)


def test_a_random_crop_renders_exactly_that_window(scene):
    g, _ = init_from_prior(scene.prior_result(), InitConfig(max_gaussians=20000))
    cams = scene.views.cameras.subset([1])
    with torch.no_grad():
        full = render_images(g, cams)
        level = image_pyramid(full, cams.K, levels=0)[0]
        gen = torch.Generator().manual_seed(3)
        crops = [_random_crop(level, 0.5, gen) for _ in range(3)]
        offsets = set()
        for crop in crops:
            x0 = round(float(cams.K[0, 0, 2] - crop.K[0, 0, 2]))
            y0 = round(float(cams.K[0, 1, 2] - crop.K[0, 1, 2]))
            offsets.add((x0, y0))
            assert (crop.width, crop.height) == (128, 96)
            window = full[:, y0 : y0 + 96, x0 : x0 + 128]
            assert torch.equal(crop.images, window)
            rendered = render_images(g, Cameras(crop.K, cams.w2c, torch.tensor([[128, 96]]), cams.names))
            # equal up to float rounding of pixel coordinates (which can flip the 1/255 alpha cut-off
            # of a Gaussian at a single pixel)
            diff = (rendered - window).abs().amax(-1)
            assert float(diff.max()) < 0.01 and float((diff > 2e-3).float().mean()) < 1e-3
    assert len(offsets) > 1  # the windows move


def test_training_with_coarse_levels_and_crops_fits_the_views_as_well_as_full_steps(scene):
    g, _ = init_from_prior(scene.prior_result(), InitConfig(max_gaussians=8000))
    base = TrainConfig(iters=150, optimize_poses=False, sh_degree=0, coarse_levels=0)
    cheap = TrainConfig(iters=150, optimize_poses=False, sh_degree=0, coarse_levels=1, coarse_fraction=0.4,
                        coarse_min_side=64, crop_until=0.8)
    with torch.no_grad():
        p0 = float(psnr(render_images(g, scene.views.cameras), scene.views.images))
    scores = []
    for cfg in (base, cheap):
        res = train(g, scene.views.cameras, scene.views.images, cfg, progress=False)
        with torch.no_grad():
            scores.append(float(psnr(render_images(res.gaussians, scene.views.cameras), scene.views.images)))
    p_full, p_cheap = scores
    assert p_cheap > p0 + 6.0 and p_cheap > p_full - 1.5, (p0, p_full, p_cheap)


def test_coarse_to_fine_pose_fitting_recovers_held_out_poses(scene, trained):
    g = trained
    test = novel_cameras(scene, 2)
    images, _ = scene.render(test)
    start = perturb_cameras(test, 3.0, 0.05 * scene.extent, seed=3)
    fitted = fit_poses(g, start, images, iters=200, coarse_levels=1, coarse_fraction=0.6, coarse_min_side=64,
                       crop_until=0.9)
    rot = rotation_angle_deg(fitted.w2c[:, :3, :3], test.w2c[:, :3, :3])
    assert float(rot.max()) < 0.5, rot
