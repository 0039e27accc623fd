"""VGGT network against the official reference fixture (tiny random weights, official outputs), its pose
conversion to the project's conventions, and the input preparation rules.

The fixture holds the official module's full state_dict, its inputs and its outputs; our module must load
the weights with strict=True and reproduce every output (rtol 1e-4, atol 1e-5: the official run itself
moves by ~1e-6 between CPU thread counts).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import shared_fixture
from PIL import Image
from safetensors.torch import load_file, save_file

from recon.cameras import (
    camera_centers,
    focal_to_fov,
    pixel_centers,
    project,
    quat_xyzw_to_wxyz,
    rotmat_to_quat,
    so3_exp,
)
from recon.errors import ReconError
from recon.priors.checkpoints import load_network
from recon.priors.networks.vggt import (
    VGGT,
    network_crop,
    outputs_to_image,
    pose_encoding_to_extrinsic_intrinsic,
    pose_encoding_to_w2c_K,
    predict,
    prepare_images,
    vggt_config_from_dict,
)
from recon.priors.networks.vggt.aggregator import IMAGENET_MEAN, IMAGENET_STD

RTOL, ATOL = 1e-4, 1e-5
OUTPUT_KEYS = (
    "pose_enc",
    "pose_enc_list",
    "extrinsic",
    "intrinsic",
    "depth",
    "depth_conf",
    "world_points",
    "world_points_conf",
)


# one thread: the official outputs were made with one; it is also faster for these tiny models
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def fixture():
    d = shared_fixture("priors", "vggt")
    cfg = json.loads((d / "config.json").read_text())
    return d, cfg, np.load(d / "inputs.npz"), np.load(d / "outputs.npz")


@pytest.fixture(scope="module")
def model(fixture) -> VGGT:
    d, cfg, _, _ = fixture
    m = VGGT(vggt_config_from_dict(cfg)).eval()
    m.load_state_dict(load_file(str(d / "weights.safetensors")), strict=True)
    return m


def _assert_close(name: str, ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} vs {ref.shape}"
    if name == "intrinsic":  # values up to ~190 px: relative tolerance only (its zeros are exact)
        np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=0, err_msg=name)
    else:
        np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL, err_msg=name)


def _collapse(key: str) -> str:
    return re.sub(r"\.\d+\.", ".#.", key)


# --------------------------------------------------------------------------------------------------
# Official fixture
# --------------------------------------------------------------------------------------------------


def test_config_from_fixture_json(fixture):
    _, cfg, _, _ = fixture
    c = vggt_config_from_dict(cfg)
    pe, agg, cam, dpt = cfg["patch_embed_vit"], cfg["aggregator"], cfg["camera_head"], cfg["dpt_heads"]
    assert (c.img_size, c.patch_size, c.embed_dim) == (70, 14, 48)
    assert (c.patch_embed_depth, c.patch_embed_num_heads) == (pe["depth"], pe["num_heads"])
    assert (c.depth, c.num_heads, c.rope_freq) == (agg["depth"], agg["num_heads"], agg["rope_freq"])
    assert c.patch_start_idx == agg["patch_start_idx"]
    assert (c.camera_trunk_depth, c.camera_num_heads) == (cam["trunk_depth"], cam["num_heads"])
    assert c.camera_num_iterations == cam["num_iterations"]
    assert c.dpt_out_channels == tuple(dpt["out_channels"])
    assert c.dpt_intermediate_layer_idx == tuple(dpt["intermediate_layer_idx"])
    assert not c.extra.get("enable_track", False)


def test_weights_load_strict(fixture, model):
    d, cfg, _, _ = fixture
    sd = load_file(str(d / "weights.safetensors"))
    assert len(sd) == cfg["state_dict"]["num_keys"] == len(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_reproduces_official_outputs(fixture, model):
    _, _, inp, ref = fixture
    with torch.no_grad():
        out = model(torch.from_numpy(inp["images"]))
    assert set(OUTPUT_KEYS) <= set(out)
    for k in OUTPUT_KEYS:
        _assert_close(k, out[k].numpy(), ref[k])


def test_reproduces_official_intermediates(fixture, model):
    """The debug tensors locate a mismatch: patch embed, every aggregator output, DPT internals."""
    _, _, inp, ref = fixture
    x = torch.from_numpy(inp["images"])
    hw = tuple(x.shape[-2:])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = model.aggregator(x[None])
        ours = {
            "debug_patch_embed_x_norm_patchtokens": model.aggregator.patch_embed((x - mean) / std),
            "debug_depth_head_fused_features": model.depth_head.features(tokens, hw),
            "debug_depth_head_raw": model.depth_head.raw(tokens, hw),
            "debug_point_head_raw": model.point_head.raw(tokens, hw),
        }
    ours.update({f"debug_aggregated_tokens_{i:02d}": t for i, t in enumerate(tokens)})
    assert model.aggregator.patch_start_idx == int(ref["debug_patch_start_idx"])
    debug_keys = [k for k in ref.files if k.startswith("debug_") and k != "debug_patch_start_idx"]
    assert sorted(debug_keys) == sorted(ours)
    for k in debug_keys:
        _assert_close(k, ours[k].numpy(), ref[k])


def test_frame_chunks_and_batches_do_not_change_outputs(fixture, model):
    """DPT frame chunking is a memory knob only; a batch of two identical sequences gives the same
    outputs twice (the special-token variants are per sequence, not per batch)."""
    d, _, inp, ref = fixture
    chunked = VGGT(replace(model.cfg, dpt_frames_chunk_size=2)).eval()
    chunked.load_state_dict(model.state_dict(), strict=True)
    x = torch.from_numpy(inp["images"])
    with torch.no_grad():
        out = chunked(torch.stack((x, x)))
    for k in ("depth", "depth_conf", "world_points", "world_points_conf", "pose_enc"):
        for b in range(2):
            _assert_close(k, out[k][b : b + 1].numpy(), ref[k])


def test_load_network_from_fixture_folder(fixture, tmp_path):
    """Through the project loader: config.json beside the weights; track_head.* keys (in the released
    checkpoint) are dropped; a missing key is a one-line ReconError."""
    d, _, inp, ref = fixture
    sd = load_file(str(d / "weights.safetensors"))
    sd["track_head.feature_extractor.norm.weight"] = torch.ones(4)
    save_file(sd, str(tmp_path / "weights.safetensors"))
    shutil.copy(d / "config.json", tmp_path / "config.json")
    net = load_network("vggt", tmp_path)
    assert isinstance(net, VGGT) and not net.training
    with torch.no_grad():
        out = net(torch.from_numpy(inp["images"]))
    _assert_close("depth", out["depth"].numpy(), ref["depth"])

    del sd["camera_head.embed_pose.bias"]
    save_file(sd, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ReconError, match="missing"):
        load_network("vggt", tmp_path)


def test_sizes_inferred_from_weights(fixture):
    """Everything but head counts and DPT hooks is read from the weights; without head counts the
    loader asks for them instead of guessing."""
    d, cfg, _, _ = fixture
    sd = load_file(str(d / "weights.safetensors"))
    heads = {
        "patch_embed_vit": {"num_heads": 4},
        "aggregator": {"num_heads": 4},
        "camera_head": {"num_heads": 4},
        "dpt_heads": {"intermediate_layer_idx": [0, 1, 2, 3]},
    }
    assert vggt_config_from_dict(heads, sd) == vggt_config_from_dict(cfg)
    with pytest.raises(ValueError, match="num_heads"):
        vggt_config_from_dict(None, sd)


def test_full_size_key_layout(fixture):
    """The default (released VGGT-1B) network has the official key structure and sizes."""
    _, cfg, _, _ = fixture
    with torch.device("meta"):
        full = VGGT()
    sd = full.state_dict()
    tiny = load_file(str(shared_fixture("priors", "vggt", "weights.safetensors")))
    assert len(sd) == cfg["state_dict"]["key_patterns_vs_full_size_official"]["full_size_num_keys"]
    assert {_collapse(k) for k in sd} == {_collapse(k) for k in tiny}
    assert all(sd[k].dim() == tiny[k].dim() for k in tiny)
    fs = cfg["patch_embed_vit"]["official_full_size"]
    assert tuple(sd["aggregator.patch_embed.pos_embed"].shape) == tuple(fs["pos_embed_shape"])
    for blocks, depth in (
        ("aggregator.frame_blocks.", cfg["aggregator"]["official_full_size"]["depth"]),
        ("aggregator.global_blocks.", cfg["aggregator"]["official_full_size"]["depth"]),
        ("aggregator.patch_embed.blocks.", fs["depth"]),
    ):
        assert max(int(k[len(blocks) :].split(".")[0]) for k in sd if k.startswith(blocks)) + 1 == depth
    assert sd["camera_head.token_norm.weight"].shape[0] == cfg["camera_head"]["official_full_size"]["dim_in"]
    dfs = cfg["dpt_heads"]["official_full_size"]
    assert [sd[f"depth_head.projects.{i}.weight"].shape[0] for i in range(4)] == dfs["out_channels"]
    assert sd["depth_head.scratch.layer1_rn.weight"].shape[0] == dfs["features"]


# --------------------------------------------------------------------------------------------------
# Pose encodings -> project cameras
# --------------------------------------------------------------------------------------------------


def test_pose_conversion_on_fixture(fixture):
    """Our w2c / K from the official pose encodings equal the official extrinsic / intrinsic, and are
    valid cameras in the project's conventions."""
    _, cfg, _, ref = fixture
    H, W = cfg["inputs"]["H"], cfg["inputs"]["W"]
    enc = torch.from_numpy(ref["pose_enc"][0])  # (S, 9)
    w2c, K = pose_encoding_to_w2c_K(enc, (H, W))
    assert w2c.shape == (3, 4, 4) and K.shape == (3, 3, 3)
    np.testing.assert_allclose(w2c[:, :3, :].numpy(), ref["extrinsic"][0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(K.numpy(), ref["intrinsic"][0], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(w2c[:, 3].numpy(), np.tile([0.0, 0.0, 0.0, 1.0], (3, 1)))
    R = w2c[:, :3, :3].double()
    np.testing.assert_allclose((R @ R.transpose(1, 2)).numpy(), np.tile(np.eye(3), (3, 1, 1)), atol=1e-6)
    np.testing.assert_allclose(torch.linalg.det(R).numpy(), 1.0, atol=1e-6)
    for i in range(3):  # FoV <-> focal with the project's own helper; centred principal point
        assert focal_to_fov(float(K[i, 0, 0]), W) == pytest.approx(float(enc[i, 8]), rel=1e-6)
        assert focal_to_fov(float(K[i, 1, 1]), H) == pytest.approx(float(enc[i, 7]), rel=1e-6)
        assert (float(K[i, 0, 2]), float(K[i, 1, 2])) == (W / 2, H / 2)
    ext, intr = pose_encoding_to_extrinsic_intrinsic(enc, (H, W))
    assert torch.equal(ext, w2c[:, :3, :]) and torch.equal(intr, K)


def test_pose_conversion_conventions():
    """A known camera: quaternion order (xyzw in the encoding), un-normalised quaternions, world-to-camera
    translation, and FoV = the angle the image spans (a point at half the FoV projects onto the edge)."""
    omega = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    R = so3_exp(omega)
    q_wxyz = rotmat_to_quat(R)
    q_xyzw = torch.cat((q_wxyz[1:], q_wxyz[:1]))
    assert torch.allclose(quat_xyzw_to_wxyz(q_xyzw), q_wxyz)
    t = torch.tensor([0.2, -0.1, 1.5], dtype=torch.float64)
    fov_h, fov_w = 0.9, 1.2
    enc = torch.cat((t, 3.0 * q_xyzw, torch.tensor([fov_h, fov_w], dtype=torch.float64)))
    H, W = 300, 400
    w2c, K = pose_encoding_to_w2c_K(enc, (H, W))
    torch.testing.assert_close(w2c[:3, :3], R, rtol=0, atol=1e-12)
    torch.testing.assert_close(w2c[:3, 3], t)
    torch.testing.assert_close(camera_centers(w2c), -R.T @ t)
    # Points in the camera frame at the right edge / bottom edge of the field of view.
    X_cam = torch.tensor(
        [[math.tan(fov_w / 2), 0.0, 1.0], [0.0, math.tan(fov_h / 2), 1.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    X_world = (X_cam - t) @ R  # R^T (x - t) for each row
    uv, z = project(X_world, K, w2c)
    torch.testing.assert_close(z, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(
        uv, torch.tensor([[W, H / 2], [W / 2, H], [W / 2, H / 2]], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="9 values"):
        pose_encoding_to_w2c_K(enc[:8], (H, W))


# --------------------------------------------------------------------------------------------------
# Input preparation and the way back
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "mode", "resized", "offset", "net"),
    [
        # crop: width -> 518, height -> round(H * 518 / W / 14) * 14, central 518 rows if taller
        ((640, 480), "crop", (518, 392), (0, 0), (518, 392)),  # 480 * 518 / 640 / 14 = 27.75 -> 28
        ((480, 640), "crop", (518, 686), (0, 84), (518, 518)),  # 49.33 -> 49; (686 - 518) / 2 = 84
        ((518, 518), "crop", (518, 518), (0, 0), (518, 518)),
        ((1000, 100), "crop", (518, 56), (0, 0), (518, 56)),  # 3.7 -> 4
        # pad: long side -> 518, short side rounded likewise, centred on a 518 x 518 canvas
        ((640, 480), "pad", (518, 392), (0, -63), (518, 518)),
        ((480, 640), "pad", (392, 518), (-63, 0), (518, 518)),
    ],
)
def test_network_crop_size_rules(size, mode, resized, offset, net):
    c = network_crop(size, 518, mode)
    assert (c.image_size, c.resized_size, c.offset, c.size) == (size, resized, offset, net)
    assert net[0] % 14 == 0 and net[1] % 14 == 0


def test_prepare_images_content():
    """Pixels are PIL bicubic resizes of the 8-bit images; crop keeps the central rows, pad fills white."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(2, 64, 48, 3), dtype=np.uint8)  # portrait 48 x 64
    x, c = prepare_images(imgs.astype(np.float32) / 255.0, target_width=42, mode="crop")
    # 64 * 42 / 48 / 14 = 4 -> 56 rows, central 42 kept (offset 7)
    assert tuple(x.shape) == (2, 3, 42, 42) and c.offset == (0, 7)
    for i in range(2):
        r = np.asarray(Image.fromarray(imgs[i]).resize((42, 56), Image.Resampling.BICUBIC), dtype=np.float32)
        np.testing.assert_array_equal(x[i].permute(1, 2, 0).numpy(), r[7:49] / 255.0)
    xp, cp = prepare_images(torch.from_numpy(imgs), target_width=42, mode="pad")
    assert tuple(xp.shape) == (2, 3, 42, 42) and cp.resized_size == (28, 42) and cp.offset == (-7, 0)
    r = np.asarray(Image.fromarray(imgs[0]).resize((28, 42), Image.Resampling.BICUBIC), dtype=np.float32)
    np.testing.assert_array_equal(xp[0, :, :, 7:35].permute(1, 2, 0).numpy(), r / 255.0)
    assert bool((xp[:, :, :, :7] == 1.0).all()) and bool((xp[:, :, :, 35:] == 1.0).all())


def test_prepare_images_errors():
    with pytest.raises(ReconError, match=r"\(N, H, W, 3\)"):
        prepare_images(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ReconError, match="elongated"):
        prepare_images(np.zeros((1, 4, 2000, 3), np.float32))
    with pytest.raises(ValueError, match="multiple"):
        network_crop((100, 100), target_width=500)


def test_prepare_reproduces_fixture_inputs(fixture):
    """At the fixture's own size (70 x 56, already a multiple of 14) preparation is the official
    ``rgb_uint8 / 255`` exactly."""
    _, _, inp, _ = fixture
    x, c = prepare_images(inp["rgb_uint8"].astype(np.float32) / 255.0, target_width=70)
    assert c.resized_size == c.size == c.image_size == (70, 56) and c.offset == (0, 0)
    np.testing.assert_array_equal(x.numpy(), inp["images"])


def test_predict_on_fixture_size(fixture, model):
    """End to end at the identity crop: outputs in project conventions equal the official ones."""
    _, _, inp, ref = fixture
    pred = predict(model, inp["rgb_uint8"], target_width=70)
    np.testing.assert_allclose(pred.depth.numpy(), ref["depth"][0, ..., 0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(pred.world_points.numpy(), ref["world_points"][0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(pred.depth_conf.numpy(), ref["depth_conf"][0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(pred.K.numpy(), ref["intrinsic"][0], rtol=RTOL, atol=0)
    np.testing.assert_allclose(pred.w2c[:, :3].numpy(), ref["extrinsic"][0], rtol=RTOL, atol=ATOL)
    assert bool(pred.valid.all())


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_outputs_to_image_geometry(mode):
    """Mapping back to a 96 x 128 portrait photo: K's principal point is the photo's centre, each
    original pixel's ray under K equals the ray of its network pixel under the network K, per-pixel maps
    are resampled, and (crop) rows outside the network input are flagged invalid."""
    W0, H0 = 96, 128
    crop = network_crop((W0, H0), 42, mode)
    w, h = crop.size
    enc = torch.tensor([[0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 1.0, 0.8, 0.7]])
    # A depth linear in the network pixel coordinates: bilinear resampling reproduces it exactly inside.
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    depth = (1.0 + 0.01 * xs + 0.02 * ys).float()[None, None, ..., None]
    pred = {"pose_enc": enc[None], "depth": depth, "depth_conf": 1.0 + depth[..., 0]}
    out = outputs_to_image(pred, crop)
    K_net = pose_encoding_to_w2c_K(enc[0], (h, w))[1]
    assert out.K.shape == (1, 3, 3) and out.depth.shape == (1, H0, W0) and out.world_points is None
    torch.testing.assert_close(out.K[0, :2, 2], torch.tensor([W0 / 2, H0 / 2]))
    uv_img = pixel_centers(H0, W0).reshape(-1, 2)
    uv_net = crop.image_to_network(uv_img)
    ones = torch.ones(len(uv_img), 1)
    rays_img = torch.cat((uv_img, ones), 1) @ torch.linalg.inv(out.K[0]).T
    rays_net = torch.cat((uv_net, ones), 1) @ torch.linalg.inv(K_net).T
    torch.testing.assert_close(rays_img, rays_net, rtol=1e-5, atol=1e-5)
    valid = out.valid[0].reshape(-1)
    if mode == "pad":
        assert bool(valid.all())
    else:  # the photo's top and bottom rows are cropped away
        assert not bool(valid.all()) and bool(valid.reshape(H0, W0)[H0 // 2].all())
    u, v = uv_net[:, 0], uv_net[:, 1]
    inside = valid & (u > 0.5) & (u < w - 0.5) & (v > 0.5) & (v < h - 0.5)
    expected = 1.0 + 0.01 * (u - 0.5) + 0.02 * (v - 0.5)
    torch.testing.assert_close(out.depth[0].reshape(-1)[inside], expected[inside], rtol=1e-5, atol=1e-5)
