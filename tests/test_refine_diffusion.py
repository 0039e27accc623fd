"""Diffusion-prior refinement without real weights: a tiny random-weight diffusers img2img pipeline built
in code and loaded back from a folder runs the whole stage (both modes); an oracle enhancer shows that the
plumbing passes a good model's improvement through (>= 1 dB held-out PSNR on a 3-view scene)."""

from __future__ import annotations

import json

import pytest
import torch

from recon.errors import ReconError
from recon.gaussians.init import InitConfig, init_from_prior
from recon.metrics import psnr
from recon.optim.trainer import TrainConfig, train
from recon.refine import RefineConfig, RefineContext, Scene, build_stages, prior_depths, refine
from recon.refine.diffusion import DiffusersEnhancer, DiffusionConfig, nearest_views, pseudo_cameras
from recon.render.gaussians import render_images
from recon.synthetic import SceneConfig, make_scene, novel_cameras

TRAIN = TrainConfig(iters=300, sh_degree=0, optimize_poses=False)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random-weight StableDiffusionImg2ImgPipeline (CLIP text encoder, UNet, VAE: a few thousand
    parameters) saved with save_pretrained, as a user's --diffusion-model folder would be."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("tiny_sd")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(0)
    tok = transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=8)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=32)
    pipe = diffusers.StableDiffusionImg2ImgPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=diffusers.DDIMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def scene():
    # A 60-degree arc: three views leave a good part of what lies between them unseen.
    return make_scene(SceneConfig(n_views=3, width=64, height=48, seed=0, arc_deg=60.0))


@pytest.fixture(scope="module")
def first_round(scene):
    prior = scene.prior_result(stride=2)
    g, _ = init_from_prior(prior, InitConfig(max_gaussians=3000))
    return prior, train(g, scene.views.cameras, scene.views.images, TRAIN, progress=False)


def test_pseudo_cameras_lie_between_and_around_training_cameras(scene):
    cams = scene.views.cameras
    pseudo = pseudo_cameras(cams, 8, extrapolate=0.25)
    assert len(pseudo) == 8 and torch.equal(pseudo.sizes, cams.sizes[:1].expand(8, 2))
    c, p = cams.centers.double(), pseudo.centers.double()
    # along the path direction, pseudo views run from before the first to beyond the last training view
    axis = (c[-1] - c[0]) / (c[-1] - c[0]).norm()
    s_train, s_pseudo = (c - c[0]) @ axis, (p - c[0]) @ axis
    assert s_pseudo.min() < s_train.min() and s_pseudo.max() > s_train.max()
    steps = torch.diff(s_pseudo)
    assert (steps > 0).all() or (steps < 0).all()  # a monotonic path (its direction is arbitrary)
    # no pseudo view duplicates a training view; the nearest training view is the closest centre
    assert torch.cdist(p, c).min() > 0.025 * (c[0] - c[-1]).norm()
    near = nearest_views(pseudo, cams)
    assert near == torch.cdist(p, c).argmin(1).tolist() and set(near) == {0, 1, 2}


def test_stage_skipped_without_model(scene, first_round):
    _, res = first_round
    lines: list[str] = []
    out = refine(
        Scene(res.gaussians, res.cameras),
        RefineContext(scene.views.images, TRAIN, progress=False, log=lines.append),
        build_stages(RefineConfig()),
    )
    assert lines == ["recon: diffusion refinement skipped (no --diffusion-model given)"]
    assert out.metrics["diffusion"] == {"skipped": "no diffusion model given"}
    assert torch.equal(out.gaussians.means, res.gaussians.means)


def test_bad_model_folder_is_a_user_error(tmp_path):
    with pytest.raises(ReconError, match="model_index.json"):
        DiffusersEnhancer(tmp_path, torch.device("cpu"), DiffusionConfig(model=tmp_path))


@pytest.mark.parametrize("mode", ["auto", "fixer"])
def test_tiny_diffusers_model_runs_the_whole_stage(scene, first_round, tiny_model, mode):
    prior, res = first_round
    cfg = RefineConfig()
    cfg.poses.enabled = False
    cfg.diffusion = DiffusionConfig(model=tiny_model, mode=mode, rounds=2, steps_per_round=5, num_pseudo=3,
                                    inference_steps=4, strength_start=0.6, strength_end=0.3, batch_size=2)
    out = refine(
        Scene(res.gaussians, res.cameras),
        RefineContext(scene.views.images, TRAIN, prior=prior, progress=False, log=lambda s: None),
        build_stages(cfg),
    )
    m = out.metrics["diffusion"]
    assert m["mode"] == ("img2img" if mode == "auto" else "fixer") and m["dtype"] == "float32"
    assert [r["round"] for r in m["rounds"]] == [0, 1]
    assert [r["strength"] for r in m["rounds"]] == pytest.approx([0.6, 0.3])
    assert m["pseudo_views"]["count"] == 3 and m["steps"] == 10
    # random weights produce noise, far from the renders; the Gaussians were trained on it and changed
    assert all(r["render_vs_enhanced_psnr"] < 20 for r in m["rounds"])
    assert not torch.equal(out.gaussians.sh0, res.gaussians.sh0)
    assert all(torch.isfinite(v).all() for v in out.gaussians.tensors().values())
    assert out.gaussians.means.device == res.gaussians.means.device
    assert torch.equal(out.cameras.w2c, res.cameras.w2c)


def test_enhancer_shapes_and_dtype(tiny_model):
    cfg = DiffusionConfig(model=tiny_model, inference_steps=2)
    enh = DiffusersEnhancer(tiny_model, torch.device("cpu"), cfg)
    x = torch.rand(3, 44, 60, 3)  # not a multiple of the model's stride: resized in and out
    y = enh(x, None, x, 0.5)
    assert y.shape == x.shape and y.dtype == torch.float32 and 0 <= float(y.min()) and float(y.max()) <= 1
    assert enh.pipe.unet.dtype == torch.float32
    enh.close()
    assert enh.pipe is None
    with pytest.raises(RuntimeError):
        enh(x, None, x, 0.5)


def test_oracle_enhancer_improves_held_out_psnr(scene, first_round):
    """An enhancer that returns the true image of each pseudo pose must lift held-out PSNR by >= 1 dB over
    the same stage with an identity enhancer (same steps, same depth term; pseudo views = own renders)."""
    prior, res = first_round
    test_cams = novel_cameras(scene, 4)
    test_imgs, _ = scene.render(test_cams)
    cfg = RefineConfig()
    cfg.poses.enabled = False
    cfg.diffusion = DiffusionConfig(rounds=2, steps_per_round=150, num_pseudo=8, pseudo_weight=0.5)

    def held_out(g) -> float:
        with torch.no_grad():
            return psnr(render_images(g, test_cams).clamp(0, 1), test_imgs)

    def run(enhancer):
        return refine(
            Scene(res.gaussians, res.cameras),
            RefineContext(scene.views.images, TRAIN, prior=prior, progress=False, log=lambda s: None),
            build_stages(cfg, enhancer),
        )

    oracle = run(lambda renders, cams, refs, strength: scene.render(cams)[0])
    identity = run(lambda renders, cams, refs, strength: renders)
    base, p_id, p_or = held_out(res.gaussians), held_out(identity.gaussians), held_out(oracle.gaussians)
    # Measured: base 21.6, identity 22.5, oracle 23.8 dB.
    assert p_or > p_id + 1.0, (base, p_id, p_or)
    assert p_or > base + 1.0
    assert len(oracle.metrics["diffusion"]["rounds"]) == 2


def test_prior_depths_match_the_scene(scene):
    prior = scene.prior_result(stride=2)
    d = prior_depths(prior, 48, 64)
    assert d.shape == (3, 48, 64)
    # nearest upsampling of the stride-2 depth: equal to the exact depth at the block-centre pixels' rays
    # up to the half-pixel offset; the median relative difference is small
    rel = ((d - scene.depth).abs() / scene.depth).median()
    assert rel < 0.05
