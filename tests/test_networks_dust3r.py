"""DUSt3R/MASt3R networks against the official reference fixtures (tiny random weights, official outputs).

Each fixture holds the official module's full state_dict, its inputs and its outputs; our modules must
load the weights with strict=True and reproduce every output (rtol 1e-4, atol 1e-5: the official run
itself moves by ~1e-6 between CPU thread counts).
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import shared_fixture
from safetensors.torch import load_file

from recon.priors.checkpoints import load_network
from recon.priors.networks.dust3r import (
    DUSt3R,
    Dust3RConfig,
    config_from_dict,
    infer_config_from_weights,
    mast3r_default_config,
    prepare_image,
)
from recon.priors.networks.mast3r import MASt3R

FIXTURES = {"dust3r_linear": "dust3r", "dust3r_dpt": "dust3r", "mast3r_catmlp_dpt": "mast3r"}
RTOL, ATOL = 1e-4, 1e-5


# one thread: the official outputs were made with one; it is also faster for these tiny models
pytestmark = pytest.mark.usefixtures("single_thread")


def _load(name: str):
    d = shared_fixture("priors", name)
    inp, ref = np.load(d / "inputs.npz"), np.load(d / "outputs.npz")
    return d, inp, ref


def _run(model, inp) -> dict[str, np.ndarray]:
    with torch.no_grad():
        res1, res2 = model(
            torch.from_numpy(inp["view1_img"]),
            torch.from_numpy(inp["view2_img"]),
            torch.from_numpy(inp["view1_true_shape"]),
            torch.from_numpy(inp["view2_true_shape"]),
        )
    out = {f"view1_{k}": v.numpy() for k, v in res1.items()}
    out.update({f"view2_{k}": v.numpy() for k, v in res2.items()})
    return out


def _intermediates(model: DUSt3R, inp) -> dict[str, np.ndarray]:
    """Our tensors under the fixtures' debug_* names."""
    out = {}
    with torch.no_grad():
        feats = []
        for v in ("view1", "view2"):
            img = torch.from_numpy(inp[f"{v}_img"])
            tokens, pos = model.patch_embed(img)
            out[f"debug_{v}_patch_embed_tokens"], out[f"debug_{v}_pos"] = tokens.numpy(), pos.numpy()
            feats.append(model.encode(img))
        dec1, dec2 = model.decode(*feats[0], *feats[1])
        hw = tuple(inp["view1_img"].shape[-2:])
        for v, dec, head in (
            ("view1", dec1, model.downstream_head1),
            ("view2", dec2, model.downstream_head2),
        ):
            out[f"debug_{v}_enc_tokens"] = dec[0].numpy()
            for j in range(1, len(dec)):
                out[f"debug_{v}_decout_{j:02d}"] = dec[j].numpy()
            if hasattr(head, "proj"):
                out[f"debug_{v}_linear_proj"] = head.proj(dec[-1]).numpy()
            else:
                out[f"debug_{v}_dpt_raw"] = head.dpt([dec[h] for h in model.cfg.hooks], hw).numpy()
            if hasattr(head, "head_local_features"):
                cat = torch.cat((dec[0], dec[-1]), -1)
                out[f"debug_{v}_local_feat_mlp"] = head.head_local_features(cat).numpy()
    return out


@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_outputs_match_official(name):
    d, inp, ref = _load(name)
    model = load_network(FIXTURES[name], d / "weights.safetensors")  # strict load, sizes from config.json
    assert isinstance(model, MASt3R if FIXTURES[name] == "mast3r" else DUSt3R)
    ours = _run(model, inp)
    official = [k for k in ref.files if not k.startswith("debug_")]
    assert sorted(ours) == sorted(official)
    for k in official:
        assert ours[k].shape == ref[k].shape, k
        np.testing.assert_allclose(ours[k], ref[k], rtol=RTOL, atol=ATOL, err_msg=k)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_intermediates_match_official(name):
    d, inp, ref = _load(name)
    model = load_network(FIXTURES[name], d / "weights.safetensors")
    ours = _intermediates(model, inp)
    debug = [k for k in ref.files if k.startswith("debug_")]
    assert set(debug) <= set(ours), set(debug) - set(ours)
    for k in debug:
        if ref[k].dtype == np.int64:
            np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)
        else:
            np.testing.assert_allclose(ours[k], ref[k], rtol=RTOL, atol=ATOL, err_msg=k)


def _collapsed(keys) -> set[str]:
    return {re.sub(r"\.\d+\.", ".#.", re.sub(r"\.\d+\.", ".#.", k)) for k in keys}


@pytest.mark.parametrize(
    "name,cfg",
    [
        ("dust3r_linear", Dust3RConfig(head_type="linear")),
        ("dust3r_dpt", Dust3RConfig()),
        ("mast3r_catmlp_dpt", mast3r_default_config()),
    ],
)
def test_full_size_key_layout(name, cfg):
    """The default (official 512) sizes give the official full-size key count and key structure."""
    d = shared_fixture("priors", name)
    meta = json.loads((d / "config.json").read_text())["state_dict"]["key_patterns_vs_full_size_official"]
    with torch.device("meta"):
        model = (MASt3R if cfg.local_feat_dim else DUSt3R)(cfg)
    sd = model.state_dict()
    assert len(sd) == meta["full_size_num_keys"]
    tiny = load_file(str(d / "weights.safetensors"))
    assert _collapsed(sd) == _collapsed(tiny)
    ndim_tiny = {re.sub(r"\.\d+\.", ".#.", re.sub(r"\.\d+\.", ".#.", k)): v.ndim for k, v in tiny.items()}
    for k, v in sd.items():
        assert v.ndim == ndim_tiny[re.sub(r"\.\d+\.", ".#.", re.sub(r"\.\d+\.", ".#.", k))], k
    # official widths: ViT-L encoder (24 x 1024, 16 heads), ViT-B decoder (12 x 768, 12 heads)
    assert sd["patch_embed.proj.weight"].shape == (1024, 3, 16, 16)
    assert sd["enc_blocks.23.mlp.fc1.weight"].shape == (4096, 1024)
    assert sd["dec_blocks2.11.cross_attn.projq.weight"].shape == (768, 768)
    if cfg.head_type != "linear":
        assert sd["downstream_head2.dpt.head.2.weight"].shape == (128, 128, 3, 3)
    if cfg.local_feat_dim:
        assert sd["downstream_head1.head_local_features.fc2.weight"].shape == (25 * 256, 4 * 1792)


def test_sizes_inferred_from_weights():
    """Without config.json everything but the head counts comes from the weight shapes."""
    d, inp, ref = _load("mast3r_catmlp_dpt")
    sd = load_file(str(d / "weights.safetensors"))
    cfg = infer_config_from_weights(sd, mast3r_default_config())
    assert (cfg.enc_embed_dim, cfg.enc_depth, cfg.dec_embed_dim, cfg.dec_depth) == (64, 2, 32, 10)
    assert cfg.dpt_layer_dims == (16, 24, 32, 40) and (cfg.dpt_feature_dim, cfg.dpt_last_dim) == (16, 8)
    assert cfg.hooks == (0, 5, 7, 10) and cfg.mlp_hidden_factor == 0.125
    assert (cfg.local_feat_dim, cfg.two_confs, cfg.head_type) == (24, True, "catmlp+dpt")
    with pytest.raises(ValueError, match="set dec_num_heads in config.json"):
        config_from_dict(None, sd, mast3r_default_config())  # 32 wide: head count unknowable, no guess
    cfg = config_from_dict({"enc_num_heads": 4, "dec_num_heads": 4}, sd, mast3r_default_config())
    model = MASt3R(cfg).eval()
    model.load_state_dict(sd, strict=True)
    ours = _run(model, inp)
    np.testing.assert_allclose(ours["view2_desc"], ref["view2_desc"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ours["view1_pts3d"], ref["view1_pts3d"], rtol=RTOL, atol=ATOL)


def test_landscape_only_layout_matches_true_orientation(tmp_path):
    """Official ManyAR layout (portraits stored transposed in a landscape tensor, mixed batches allowed)
    gives the same predictions as feeding each image in its true orientation."""
    d, inp, _ = _load("dust3r_dpt")
    upright = load_network("dust3r", d / "weights.safetensors")
    lo_dir = tmp_path / "lo"
    lo_dir.mkdir()
    shutil.copy(d / "weights.safetensors", lo_dir / "weights.safetensors")
    cfg = json.loads((d / "config.json").read_text())
    cfg["constructor_kwargs"]["landscape_only"] = True
    (lo_dir / "config.json").write_text(json.dumps(cfg))
    landscape = load_network("dust3r", lo_dir / "weights.safetensors")
    assert landscape.landscape_only and not upright.landscape_only

    a = torch.from_numpy(inp["view1_img"])  # (2, 3, 48, 80), stored layout
    b = torch.from_numpy(inp["view2_img"])
    # sample 0 of each view is a portrait (80 x 48) image stored transposed; sample 1 is landscape
    ts = torch.tensor([[80, 48], [48, 80]])
    with torch.no_grad():
        r1, r2 = landscape(a, b, ts, ts)
        p1, p2 = upright(a[:1].transpose(-1, -2), b[:1].transpose(-1, -2))  # true portrait orientation
        l1, l2 = upright(a[1:], b[1:])
    for key, res, por, lan in (
        ("pts3d", r1, p1, l1),
        ("pts3d_in_other_view", r2, p2, l2),
        ("conf", r2, p2, l2),
    ):
        torch.testing.assert_close(res[key][0], por[key][0].transpose(0, 1), rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(res[key][1], lan[key][0], rtol=RTOL, atol=ATOL)
    # the portrait prediction is not a transposed copy of the landscape one: the check above has teeth
    assert (p1["pts3d"][0].transpose(0, 1) - l1["pts3d"][0]).abs().max() > 1e-2


def test_cached_encodings_and_unequal_view_sizes():
    """decode_pair on per-image encodings equals forward, also for two views of different sizes."""
    d, inp, _ = _load("mast3r_catmlp_dpt")
    model = load_network("mast3r", d / "weights.safetensors")
    img1 = torch.from_numpy(inp["view1_img"])  # (1, 3, 48, 80)
    img2 = torch.from_numpy(inp["view2_img"])[..., :64, :64].contiguous()
    img2 = torch.nn.functional.interpolate(img2, size=(64, 64))
    with torch.no_grad():
        r1, r2 = model(img1, img2)
        f1, p1 = model.encode(img1)
        f2, p2 = model.encode(img2)
        c1, c2 = model.decode_pair(f1, p1, f2, p2, (48, 80), (64, 64))
    assert r1["pts3d"].shape == (1, 48, 80, 3) and r2["pts3d_in_other_view"].shape == (1, 64, 64, 3)
    assert r2["desc"].shape == (1, 64, 64, 24)
    for a, b in ((r1, c1), (r2, c2)):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    torch.testing.assert_close(r2["desc"].norm(dim=-1), torch.ones(1, 64, 64), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Input preparation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wh,size,resized,net,offset",
    [
        ((640, 480), 512, (512, 384), (512, 384), (0, 0)),
        ((1000, 600), 512, (512, 307), (512, 304), (0, 1)),
        ((600, 600), 512, (512, 512), (512, 384), (0, 64)),
        ((480, 640), 512, (384, 512), (384, 512), (0, 0)),
        ((250, 130), 512, (512, 266), (512, 256), (0, 5)),
        ((640, 480), 224, (299, 224), (224, 224), (37, 0)),
    ],
)
def test_prepare_image_sizes(wh, size, resized, net, offset):
    W, H = wh
    rng = np.random.default_rng(0)
    img = rng.random((H, W, 3), dtype=np.float32)
    tensor, crop = prepare_image(img, size=size)
    assert crop.image_size == (W, H) and crop.resized_size == resized
    assert crop.size == net and crop.offset == offset
    assert tensor.shape == (3, net[1], net[0]) and tensor.dtype == torch.float32
    assert tensor.shape[1] % 16 == 0 and tensor.shape[2] % 16 == 0
    assert -1.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0


def test_prepare_image_normalisation():
    img = np.full((48, 64, 3), 0.25, dtype=np.float32)
    img[..., 1] = 1.0
    tensor, _ = prepare_image(img, size=64)
    expected = torch.tensor([2 * round(0.25 * 255) / 255 - 1, 1.0, 2 * round(0.25 * 255) / 255 - 1])
    torch.testing.assert_close(tensor.mean(dim=(1, 2)), expected, rtol=0, atol=1e-6)


def test_network_crop_maps_back_to_image():
    img = np.zeros((600, 1000, 3), dtype=np.uint8)
    _, crop = prepare_image(img)  # 1000x600 -> 512x307 -> 512x304 at y offset 1
    K = torch.tensor([[800.0, 0.0, 510.0], [0.0, 790.0, 290.0], [0.0, 0.0, 1.0]])
    Kn = crop.K_to_network(K)
    torch.testing.assert_close(crop.K_to_image(Kn), K)
    X = torch.tensor([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0]])
    uv_img = (X @ K.T)[:, :2] / X[:, 2:]
    uv_net = (X @ Kn.T)[:, :2] / X[:, 2:]
    torch.testing.assert_close(crop.image_to_network(uv_img), uv_net)
    torch.testing.assert_close(crop.network_to_image(uv_net), uv_img)

    # A map holding, at each network pixel, the original-image position of its centre resamples to the
    # original pixel centres (bilinear is exact on a linear function away from the clamped border).
    w, h = crop.size
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    net_map = crop.network_to_image(torch.stack((xs, ys), -1).float())
    back, valid = crop.to_image(net_map)
    W, H = crop.image_size
    assert back.shape == (H, W, 2) and valid.shape == (H, W)
    vy, vx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    pix = torch.stack((vx, vy), -1).float()
    inner = crop.image_to_network(pix)
    inner = (
        (inner[..., 0] > 0.5) & (inner[..., 0] < w - 0.5) & (inner[..., 1] > 0.5) & (inner[..., 1] < h - 0.5)
    )
    assert inner.sum() > 0.9 * H * W
    torch.testing.assert_close(back[inner], pix[inner], rtol=0, atol=1e-3)
    # rows outside the crop (1000x600 loses about 3 original rows at the bottom) are invalid
    assert not valid[-1].any() and valid[H // 2].all()
    assert valid.sum() < H * W
