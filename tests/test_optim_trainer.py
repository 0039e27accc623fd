"""The joint trainer on the synthetic scene: PSNR rises, perturbed poses are corrected, resume is exact,
stop/pause work, densification changes the set and keeps training stable."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

from recon.cameras import rotation_angle_deg
from recon.errors import ReconError
from recon.gaussians.init import InitConfig, init_from_prior
from recon.metrics import pose_metrics, psnr
from recon.optim.checkpoint import checkpoint_path, load_checkpoint
from recon.optim.losses import pearson_depth_loss
from recon.optim.strategy import DensifyConfig
from recon.optim.trainer import TrainConfig, TrainState, train
from recon.render import render_gaussians
from recon.render.gaussians import render_images
from recon.synthetic import SceneConfig, make_scene, perturb_cameras

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def scene():
    return make_scene(SceneConfig(n_views=6, width=64, height=48, seed=0))


@pytest.fixture(scope="module")
def init_gaussians(scene):
    g, _ = init_from_prior(scene.prior_result(), InitConfig(max_gaussians=4000))
    return g


@pytest.fixture(scope="module")
def small_scene():
    return make_scene(SceneConfig(n_views=4, width=32, height=24, seed=1, supersample=1))


@pytest.fixture(scope="module")
def small_gaussians(small_scene):
    g, _ = init_from_prior(small_scene.prior_result(stride=2), InitConfig(max_gaussians=600))
    return g


def test_training_raises_psnr(scene, init_gaussians):
    cams, imgs = scene.views.cameras, scene.views.images
    with torch.no_grad():
        before = psnr(render_images(init_gaussians, cams), imgs)
    res = train(init_gaussians, cams, imgs, TrainConfig(iters=300, optimize_poses=False, sh_degree=0),
                progress=False)
    with torch.no_grad():
        after = psnr(render_images(res.gaussians, res.cameras), imgs)
    # Measured: ~15.4 dB at initialisation, ~27.1 dB after 300 steps.
    assert after > 25.0
    assert after > before + 8.0
    assert res.steps == 300 and not res.stopped
    assert [h["step"] for h in res.history][:2] == [10, 20] and res.history[-1]["step"] == 300
    assert res.history[-1]["psnr"] > res.history[0]["psnr"] + 5
    # Poses were not optimised: the cameras come back unchanged.
    assert torch.equal(res.cameras.w2c, cams.w2c)


def test_joint_optimisation_corrects_perturbed_poses(scene, init_gaussians):
    """Acceptance: 3 degree / 5%-of-scene-scale pose errors fall below 0.5 degrees.

    The Gaussians start from exact geometry (oracle point maps); every training camera is perturbed, and
    Gaussians and poses are optimised together. Rotation errors are measured after the one global
    rotation that best aligns all orientations (the joint problem's gauge) and as relative errors.
    """
    ref, imgs = scene.views.cameras, scene.views.images
    start = perturb_cameras(ref, 3.0, 0.05 * scene.extent, seed=1)
    before = pose_metrics(start.w2c, ref.w2c)
    cfg = TrainConfig(iters=1000, sh_degree=0, batch_size=6)  # the pipeline's default steps and pose rates
    res = train(init_gaussians, start, imgs, cfg, progress=False)
    after = pose_metrics(res.cameras.w2c, ref.w2c)
    raw = rotation_angle_deg(res.cameras.w2c[:, :3, :3], ref.w2c[:, :3, :3])
    # Measured: rot_err 3.0 -> ~0.13 deg, RRE 4.5 -> ~0.20 deg, ATE 0.24 -> ~0.005.
    assert before["rot_err_deg"] > 2.0 and before["rre_deg"] > 3.0
    assert after["rot_err_deg"] < 0.5
    assert after["rre_deg"] < 0.5
    assert after["ate"] < 0.25 * before["ate"]
    assert float(raw.mean()) < 1.0  # even without any alignment, far closer than the 3 degrees at start


def _small_cfg(**kw) -> TrainConfig:
    dcfg = DensifyConfig(densify_from=4, densify_every=4, densify_until=10, opacity_reset_every=8,
                         grad_threshold=2e-5)
    base = TrainConfig(iters=12, sh_degree=1, sh_increase_every=5, densify=True, densify_cfg=dcfg,
                       batch_size=2, checkpoint_every=5, log_every=3, callback_every=1)
    return replace(base, **kw)


def _stop_at(step: int):
    def callback(state: TrainState) -> None:
        if state.step == step:
            state.control.stop.set()

    return callback


def test_resume_reproduces_uninterrupted_training(small_scene, small_gaussians, tmp_path):
    cams = perturb_cameras(small_scene.views.cameras, 2.0, 0.1, seed=2)
    imgs = small_scene.views.images
    cfg = _small_cfg()
    full = train(small_gaussians, cams, imgs, cfg, progress=False)
    part = train(small_gaussians, cams, imgs, cfg, ckpt_dir=tmp_path, callback=_stop_at(7), progress=False)
    assert part.stopped and part.steps == 7
    state = load_checkpoint(tmp_path)
    assert state["step"] == 7
    # Ignored on resume: training continues from the checkpoint, not from these Gaussians.
    other = small_gaussians.map(lambda t: t + 1.0)
    res = train(other, cams, imgs, cfg, ckpt_dir=tmp_path, resume=True, progress=False)
    assert res.steps == 12 and not res.stopped
    assert len(res.gaussians) == len(full.gaussians) != len(small_gaussians)  # densification happened
    for name, value in full.gaussians.tensors().items():
        assert torch.equal(value, res.gaussians.tensors()[name]), name
    assert torch.equal(full.cameras.w2c, res.cameras.w2c)
    assert res.history == full.history
    # A finished run resumes to the same result without training.
    again = train(other, cams, imgs, cfg, ckpt_dir=tmp_path, resume=True, progress=False)
    assert again.steps == 12 and torch.equal(again.gaussians.means, full.gaussians.means)


def test_checkpoint_holds_only_safe_types(small_scene, small_gaussians, tmp_path):
    cfg = _small_cfg(iters=5, densify=False)
    train(small_gaussians, small_scene.views.cameras, small_scene.views.images, cfg, ckpt_dir=tmp_path,
          progress=False)
    path = checkpoint_path(tmp_path)
    state = torch.load(path, weights_only=True)  # raises if anything but tensors / plain types is inside
    assert state["step"] == 5 and state["config"]["iters"] == 5
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ReconError, match="delete it"):
        train(small_gaussians, small_scene.views.cameras, small_scene.views.images, cfg, ckpt_dir=tmp_path,
              resume=True, progress=False)


def test_stop_returns_a_valid_result(small_scene, small_gaussians):
    seen = []

    def callback(state: TrainState) -> None:
        seen.append(state.step)
        assert state.iters == 50 and len(state.cameras) == 4 and torch.isfinite(state.gaussians.means).all()
        if state.step == 6:
            state.control.stop.set()

    res = train(small_gaussians, small_scene.views.cameras, small_scene.views.images,
                _small_cfg(iters=50, densify=False), callback=callback, progress=False)
    assert res.stopped and res.steps == 6
    assert seen == [1, 2, 3, 4, 5, 6, 6]  # every step, then once more with the final state
    assert len(res.gaussians) == len(small_gaussians)
    assert all(torch.isfinite(t).all() for t in res.gaussians.tensors().values())
    assert res.cameras.w2c.shape == (4, 4, 4) and res.history[-1]["step"] == 6


def test_pause_holds_training_until_released(small_scene, small_gaussians):
    from recon.optim.trainer import TrainControl

    control = TrainControl()
    control.pause.set()
    timer = threading.Timer(0.5, control.pause.clear)
    timer.start()
    res = train(small_gaussians, small_scene.views.cameras, small_scene.views.images,
                _small_cfg(iters=3, densify=False), control=control, progress=False)
    timer.join()
    assert res.steps == 3 and not res.stopped
    assert res.seconds >= 0.5


def test_densify_changes_counts_and_stays_stable(scene, init_gaussians):
    cams, imgs = scene.views.cameras, scene.views.images
    dcfg = DensifyConfig(densify_from=20, densify_every=20, densify_until=80, opacity_reset_every=60)
    cfg = TrainConfig(iters=120, sh_degree=0, optimize_poses=False, densify=True, densify_cfg=dcfg)
    res = train(init_gaussians, cams, imgs, cfg, progress=False)
    counts = [h["num_gaussians"] for h in res.history]
    assert max(counts) > len(init_gaussians)  # clones / splits happened
    assert len(res.gaussians) != len(init_gaussians)
    assert all(torch.isfinite(t).all() for t in res.gaussians.tensors().values())
    with torch.no_grad():
        final = psnr(render_images(res.gaussians, cams), imgs)
    plain = train(init_gaussians, cams, imgs, replace(cfg, densify=False), progress=False)
    with torch.no_grad():
        final_plain = psnr(render_images(plain.gaussians, cams), imgs)
    # Measured: 3912 -> ~18k Gaussians; ~24.7 dB densified vs ~23.9 dB without. The opacity reset at step 60
    # drops the training PSNR to ~9 dB; stable means it recovers.
    assert final > 21.0
    assert final > final_plain - 1.0
    assert res.history[-1]["psnr"] > 20.0


def test_depth_prior_improves_rendered_depth(small_scene):
    # Gaussians from a noisy prior (10% depth noise); GT depth as the prior for the Pearson loss.
    g, _ = init_from_prior(small_scene.prior_result(stride=2, noise=0.1), InitConfig(max_gaussians=600))
    cams, imgs, depth = small_scene.views.cameras, small_scene.views.images, small_scene.depth

    def correlation(gs) -> float:
        with torch.no_grad():
            out = render_gaussians(gs, cams)
            return 1 - float(pearson_depth_loss(out.depth[..., 0], depth, out.alpha[..., 0] > 0.5))

    cfg = TrainConfig(iters=60, sh_degree=0, optimize_poses=False, depth_lambda=0.5)
    with_depth = correlation(train(g, cams, imgs, cfg, depths=depth, progress=False).gaussians)
    without = correlation(train(g, cams, imgs, replace(cfg, depth_lambda=0.0), depths=depth,
                                progress=False).gaussians)
    # Measured: 0.909 at initialisation, 0.939 photometric only, 0.968 with the depth term.
    assert with_depth > without + 0.01
    assert with_depth > 0.95


def test_fix_first_pose_pins_camera_zero(small_scene, small_gaussians):
    cams = perturb_cameras(small_scene.views.cameras, 2.0, 0.1, seed=5)
    res = train(small_gaussians, cams, small_scene.views.images,
                TrainConfig(iters=10, sh_degree=0, batch_size=4, fix_first_pose=True), progress=False)
    assert torch.equal(res.cameras.w2c[0], cams.w2c[0])
    moved = (res.cameras.w2c[1:] - cams.w2c[1:]).abs().amax(dim=(1, 2))
    assert bool((moved > 1e-4).all())


def test_bad_inputs_raise_recon_error(small_scene, small_gaussians):
    cams, imgs = small_scene.views.cameras, small_scene.views.images
    with pytest.raises(ReconError, match="images for"):
        train(small_gaussians, cams, imgs[:3], TrainConfig(iters=1), progress=False)
    with pytest.raises(ReconError, match="do not match"):
        train(small_gaussians, cams, imgs[:, :20], TrainConfig(iters=1), progress=False)


def test_trainer_state_dict_round_trip_is_exact(small_scene, small_gaussians):
    """A Trainer rebuilt from another's state_dict mid-run (with densification) continues bit for bit."""
    from recon.optim.trainer import Trainer

    cams, imgs = small_scene.views.cameras, small_scene.views.images
    dens = DensifyConfig(densify_from=4, densify_until=16, densify_every=4)
    cfg = TrainConfig(iters=20, densify=True, densify_cfg=dens, sh_degree=1, sh_increase_every=5, log_every=3)
    whole = Trainer(small_gaussians, cams, imgs, cfg)
    for _ in range(20):
        whole.step()
    first = Trainer(small_gaussians, cams, imgs, cfg)
    for _ in range(9):
        first.step()
    second = Trainer(small_gaussians, cams, imgs, cfg)
    second.load_state_dict(first.state_dict())
    for _ in range(11):
        second.step()
    for k, v in whole.gaussians().tensors().items():
        assert torch.equal(v, second.gaussians().tensors()[k]), k
    assert torch.equal(whole.cameras().w2c, second.cameras().w2c)
    assert whole.history == second.history and second.step_count == 20


def test_extra_views_train_beside_frozen_poses(small_scene, small_gaussians):
    """Extra (pseudo) views join every step with their own weight; frozen poses stay exactly as given."""
    from recon.optim.trainer import ExtraViews, Trainer

    cams, imgs = small_scene.views.cameras, small_scene.views.images
    cfg = TrainConfig(iters=10, optimize_poses=False, coarse_levels=0, crop_until=0.0, sh_degree=0)
    extra = ExtraViews(cams.subset([0, 1]), imgs[:2].flip(2), weight=0.5)  # mirrored: a different target
    t = Trainer(small_gaussians, cams, imgs, cfg, extra=extra, sampling="uniform")
    base = Trainer(small_gaussians, cams, imgs, cfg, sampling="uniform")
    for _ in range(10):
        t.step()
        base.step()
    assert torch.equal(t.cameras().w2c, cams.w2c.float()) and len(t.cameras()) == len(cams)
    assert not torch.equal(t.gaussians().sh0, base.gaussians().sh0)
    with pytest.raises(ReconError, match="do not match"):
        Trainer(small_gaussians, cams, imgs, cfg, extra=ExtraViews(cams.subset([0]), imgs[:1, :8], 1.0))
