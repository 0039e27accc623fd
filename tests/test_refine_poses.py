"""Outlier pose correction: one of 5 training cameras rotated by 60 degrees and shifted is detected, put
back within 2 degrees, and the held-out PSNR returns to within 1 dB of the unperturbed run; without an
outlier nothing changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.cameras import rotation_angle_deg
from recon.gaussians.init import InitConfig, init_from_prior
from recon.optim.heldout import align_reference_cameras, evaluate_test_views
from recon.optim.trainer import TrainConfig, train
from recon.refine import RefineConfig, RefineContext, Scene, build_stages, refine, reposition_prior
from recon.refine.poses import _robust_outliers
from recon.synthetic import SceneConfig, make_scene, novel_cameras, perturb_cameras

OUTLIER = 2
TRAIN = TrainConfig(iters=250, sh_degree=0)
INIT = InitConfig(max_gaussians=3000)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def scene():
    return make_scene(SceneConfig(n_views=5, width=64, height=48, seed=0))


@pytest.fixture(scope="module")
def held_out(scene):
    cams = novel_cameras(scene, 4)
    return cams, scene.render(cams)[0]


def _first_round(scene, cameras):
    prior = scene.prior_result(cameras=cameras, stride=2)
    g, _ = init_from_prior(prior, INIT)
    return prior, train(g, cameras, scene.views.images, TRAIN, progress=False)


def _held_out_psnr(scene, held_out, gaussians, cameras, inliers) -> float:
    """Held-out PSNR with the test cameras aligned on the inlier training cameras (the pose-free protocol)."""
    ref = scene.views.cameras
    test_cams, test_imgs = held_out
    cams = align_reference_cameras(cameras.subset(inliers), ref.subset(inliers), test_cams)
    scores, _, _ = evaluate_test_views(gaussians, cams, test_imgs, fit_pose_iters=100)
    return scores.psnr


@pytest.fixture(scope="module")
def clean_run(scene):
    return _first_round(scene, scene.views.cameras)


def test_robust_outlier_rule():
    x = np.array([1.0, 1.1, 0.9, 1.05, 5.0])
    assert _robust_outliers(x, 4.0, 0.0).tolist() == [False, False, False, False, True]
    # an absolute floor above the outlier keeps it; NaNs never flag; identical values never flag
    assert not _robust_outliers(x, 4.0, 6.0).any()
    assert not _robust_outliers(np.array([1.0, np.nan, 1.0, 1.0]), 4.0, 0.0).any()
    assert not _robust_outliers(np.array([1.0, 1.0, 1.0, 1.0001]), 4.0, 0.0).any()


def test_reposition_prior_moves_point_maps_rigidly(scene):
    ref = scene.views.cameras
    bad = ref.clone()
    bad.w2c[1] = perturb_cameras(ref, 40.0, 0.5, seed=2).w2c[1]
    prior = scene.prior_result(cameras=bad, stride=4)
    fixed = reposition_prior(prior, ref)
    exact = scene.prior_result(stride=4)
    # the outlier's point map lands exactly where the true pose puts it; the others do not move
    assert torch.allclose(fixed.pointmaps, exact.pointmaps, atol=1e-4)
    assert torch.allclose(fixed.cameras.w2c, ref.w2c)


def test_no_outlier_changes_nothing(scene, clean_run):
    prior, res = clean_run
    out = refine(
        Scene(res.gaussians, res.cameras),
        RefineContext(scene.views.images, TRAIN, res.scene_extent, prior=prior, init_cfg=INIT, progress=False,
                      log=lambda s: None),
        build_stages(RefineConfig()),
    )
    pm = out.metrics["poses"]
    assert pm["flagged"] == [] and pm["corrected"] == []
    assert torch.equal(out.cameras.w2c, res.cameras.w2c)
    for k, v in out.gaussians.tensors().items():
        assert torch.equal(v, res.gaussians.tensors()[k]), k
    assert out.metrics["diffusion"] == {"skipped": "no diffusion model given"}
    # every view was scored; the match reprojection errors of a consistent scene are tiny
    assert len(pm["scores"]) == 5
    assert max(s["reproj"] for s in pm["scores"]) < 0.01


def test_outlier_is_corrected_and_psnr_recovers(scene, held_out, clean_run):
    ref = scene.views.cameras
    start = ref.clone()
    start.w2c[OUTLIER] = perturb_cameras(ref, 60.0, 0.15 * scene.extent, seed=3).w2c[OUTLIER]
    prior, res = _first_round(scene, start)
    inliers = [i for i in range(5) if i != OUTLIER]
    out = refine(
        Scene(res.gaussians, res.cameras),
        RefineContext(scene.views.images, TRAIN, res.scene_extent, prior=prior, init_cfg=INIT, progress=False,
                      log=lambda s: None),
        build_stages(RefineConfig()),
    )
    pm = out.metrics["poses"]
    name = ref.names[OUTLIER]
    assert pm["flagged"] == [name] and pm["corrected"] == [name]
    rec = pm["views"][name]
    assert rec["loss_after"] < 0.8 * rec["loss_before"]
    # the corrected pose, in the reference frame (aligned on the inliers), is within 2 degrees of the truth
    truth = align_reference_cameras(out.cameras.subset(inliers), ref.subset(inliers), ref.subset([OUTLIER]))
    R_true = truth.w2c[0, :3, :3].double()
    err = float(rotation_angle_deg(out.cameras.w2c[OUTLIER, :3, :3].double(), R_true))
    before = float(rotation_angle_deg(res.cameras.w2c[OUTLIER, :3, :3].double(), R_true))
    assert before > 30.0 and err < 2.0, (before, err)
    clean = _held_out_psnr(scene, held_out, clean_run[1].gaussians, clean_run[1].cameras, inliers)
    broken = _held_out_psnr(scene, held_out, res.gaussians, res.cameras, inliers)
    fixed = _held_out_psnr(scene, held_out, out.gaussians, out.cameras, inliers)
    assert fixed > clean - 1.0, (clean, broken, fixed)
    assert fixed > broken + 0.5, (clean, broken, fixed)


@pytest.mark.slow
def test_outlier_corrected_on_llff_fern():
    """A real scene: 5 LLFF fern training views (96 px, dense-stereo prior from the dataset's poses), one
    camera rotated by 60 degrees and shifted with its point map. Measured: 1.1 deg after correction (60
    before); held-out PSNR 24.2 dB vs 24.4 clean and 23.0 uncorrected."""
    from conftest import shared_scene

    from recon.eval.protocols import make_split
    from recon.io.datasets import load_views
    from recon.priors.classical.prior import ClassicalConfig
    from recon.priors.factory import dense_prior_for_cameras

    views = load_views(shared_scene("llff_fern"), max_side=96)
    split = make_split(views.names, views.source, 5)
    tr, te = views.subset(split.train), views.subset(split.test[:4])
    prior = dense_prior_for_cameras(tr, tr.cameras, ClassicalConfig())
    c = prior.cameras.centers.double()
    spread = 2 * float((c - c.mean(0)).norm(dim=1).max())  # shift: 15% of the cameras' spread
    bad_w2c = perturb_cameras(prior.cameras, 60.0, 0.15 * spread, seed=3).w2c[OUTLIER].double()
    T = torch.linalg.inv(bad_w2c) @ prior.cameras.w2c[OUTLIER].double()
    cams = prior.cameras.clone()
    cams.w2c[OUTLIER] = bad_w2c.float()
    bad = reposition_prior(prior, cams)  # the point map travels with the wrong pose
    moved = prior.pointmaps[OUTLIER].double().reshape(-1, 3) @ T[:3, :3].T + T[:3, 3]
    assert torch.allclose(bad.pointmaps[OUTLIER].double().reshape(-1, 3), moved, atol=1e-3)
    inliers = [i for i in range(5) if i != OUTLIER]

    def held_out(g, c) -> float:
        test_cams = align_reference_cameras(c.subset(inliers), tr.cameras.subset(inliers), te.cameras)
        return evaluate_test_views(g, test_cams, te.images, fit_pose_iters=100)[0].psnr

    results = {}
    for label, p in [("clean", prior), ("bad", bad)]:
        g, _ = init_from_prior(p, INIT)
        res = train(g, p.cameras, tr.images, TrainConfig(iters=300, sh_degree=0), progress=False)
        results[label] = (res, held_out(res.gaussians, res.cameras))
    res = results["bad"][0]
    out = refine(
        Scene(res.gaussians, res.cameras),
        RefineContext(tr.images, TrainConfig(iters=300, sh_degree=0), res.scene_extent, prior=bad,
                      init_cfg=INIT, progress=False, log=lambda s: None),
        build_stages(RefineConfig()),
    )
    assert out.metrics["poses"]["corrected"] == [tr.names[OUTLIER]]
    truth = align_reference_cameras(out.cameras.subset(inliers), tr.cameras.subset(inliers),
                                    tr.cameras.subset([OUTLIER]))
    err = float(rotation_angle_deg(out.cameras.w2c[OUTLIER, :3, :3].double(), truth.w2c[0, :3, :3].double()))
    assert err < 2.0
    fixed = held_out(out.gaussians, out.cameras)
    assert fixed > results["clean"][1] - 1.0, (results["clean"][1], results["bad"][1], fixed)
