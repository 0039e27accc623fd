"""Checkpoint loading: official .pth layout via weights_only, safetensors + config.json, and refusals."""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import shared_fixture
from safetensors.torch import load_file, save_file

from recon.errors import ReconError
from recon.priors.checkpoints import (
    build_dust3r,
    detect_kind,
    load_network,
    parse_constructor_string,
    read_weights,
)

# The official constructor string of the dust3r_linear fixture (everything it needs is a kwarg).
LINEAR_MODEL = (
    "AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
    "head_type='linear', output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=48, dec_depth=3, dec_num_heads=4)"
)


# one thread: the official outputs were made with one; it is also faster for these tiny models
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def linear_fixture():
    d = shared_fixture("priors", "dust3r_linear")
    return d, load_file(str(d / "weights.safetensors"))


def _check_outputs(model, d):
    inp, ref = np.load(d / "inputs.npz"), np.load(d / "outputs.npz")
    with torch.no_grad():
        r1, r2 = model(torch.from_numpy(inp["view1_img"]), torch.from_numpy(inp["view2_img"]))
    np.testing.assert_allclose(r1["pts3d"].numpy(), ref["view1_pts3d"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r2["conf"].numpy(), ref["view2_conf"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        r2["pts3d_in_other_view"].numpy(), ref["view2_pts3d_in_other_view"], rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("args_as", ["namespace", "string"])
def test_official_pth_round_trip(tmp_path, linear_fixture, args_as):
    d, sd = linear_fixture
    args = (
        argparse.Namespace(model=LINEAR_MODEL, lr=1e-4, epochs=10) if args_as == "namespace" else LINEAR_MODEL
    )
    path = tmp_path / "DUSt3R_tiny_linear.pth"
    torch.save({"model": sd, "args": args, "epoch": 3}, path)

    loaded, config = read_weights(path)
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert config["official_class"] == "AsymmetricCroCo3DStereo"
    kw = config["constructor_kwargs"]
    assert kw["depth_mode"] == ("exp", -float("inf"), float("inf")) and kw["dec_depth"] == 3
    assert kw["img_size"] == (512, 512) and kw["head_type"] == "linear"

    model = load_network("dust3r", path)  # sizes from args (heads = 4 is not inferable from shapes)
    assert model.cfg.enc_num_heads == 4 and model.cfg.head_type == "linear"
    _check_outputs(model, d)


def test_plain_state_dict_pth_with_module_prefix_and_config_json(tmp_path, linear_fixture):
    d, sd = linear_fixture
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "weights.pth")
    shutil.copy(d / "config.json", tmp_path / "config.json")
    loaded, config = read_weights(tmp_path / "weights.pth")
    assert loaded.keys() == sd.keys()
    assert config["constructor_kwargs"]["dec_depth"] == 3
    _check_outputs(load_network("dust3r", tmp_path), d)  # a folder with one weights file works too


def test_safetensors_without_config_returns_none(tmp_path, linear_fixture):
    _, sd = linear_fixture
    save_file(sd, str(tmp_path / "model.safetensors"))
    loaded, config = read_weights(tmp_path / "model.safetensors")
    assert config is None and loaded.keys() == sd.keys()


class _Evil:
    """Unpickling this would call os.makedirs(marker)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_malicious_pickle_is_refused(tmp_path, linear_fixture):
    _, sd = linear_fixture
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"enc_norm.weight": sd["enc_norm.weight"]}, "args": _Evil(str(marker))}, path)
    with pytest.raises(ReconError, match="refusing to load .*os.makedirs"):
        read_weights(path)
    with pytest.raises(ReconError, match="refusing"):
        load_network("dust3r", path)
    assert not marker.exists()


def test_model_string_is_parsed_never_evaluated(tmp_path, linear_fixture):
    _, sd = linear_fixture
    marker = tmp_path / "pwned2"
    code = f"AsymmetricCroCo3DStereo(enc_depth=__import__('os').makedirs({str(marker)!r}))"
    with pytest.raises(ValueError):
        parse_constructor_string(code)
    torch.save({"model": sd, "args": argparse.Namespace(model=code)}, tmp_path / "x.pth")
    with pytest.raises(ReconError, match="cannot parse the model description"):
        read_weights(tmp_path / "x.pth")
    assert not marker.exists()


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nope" / "DUSt3R.pth"
    with pytest.raises(ReconError, match=f"checkpoint not found: {missing}"):
        read_weights(missing)
    with pytest.raises(ReconError, match="not found"):
        load_network("mast3r", missing)
    garbage = tmp_path / "garbage.pth"
    for seed in range(20):  # random bytes fail the unpickler in many different ways; each is one line
        garbage.write_bytes(np.random.default_rng(seed).bytes(1000))
        with pytest.raises(ReconError, match="cannot read|refusing to load"):
            read_weights(garbage)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ReconError, match="cannot read .*safetensors"):
        read_weights(bad_st)
    torch.save({"model": "not a state dict"}, tmp_path / "odd.pth")
    with pytest.raises(ReconError, match="not a model checkpoint"):
        read_weights(tmp_path / "odd.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReconError, match="no weights file"):
        read_weights(tmp_path / "empty")


def test_wrong_model_type(tmp_path, linear_fixture):
    _, sd = linear_fixture
    vggt_like = {
        "aggregator.patch_embed.cls_token": torch.zeros(1, 1, 8),
        "camera_head.trunk.0.norm1.weight": torch.ones(8),
        "depth_head.scratch.output_conv1.weight": torch.zeros(4, 8, 3, 3),
    }
    assert detect_kind(vggt_like) == "vggt" and detect_kind(sd) == "dust3r"
    save_file(vggt_like, str(tmp_path / "vggt.safetensors"))
    with pytest.raises(ReconError, match="is a VGGT checkpoint, not DUSt3R; use --prior vggt"):
        load_network("dust3r", tmp_path / "vggt.safetensors")

    m = shared_fixture("priors", "mast3r_catmlp_dpt") / "weights.safetensors"
    assert detect_kind(load_file(str(m))) == "mast3r"
    with pytest.raises(ReconError, match="is a MASt3R checkpoint, not DUSt3R; use --prior mast3r"):
        load_network("dust3r", m)
    with pytest.raises(ReconError, match="is a DUSt3R checkpoint, not MASt3R"):
        load_network("mast3r", shared_fixture("priors", "dust3r_dpt") / "weights.safetensors")
    with pytest.raises(ReconError, match="unknown model"):
        build_dust3r({"foo.weight": torch.zeros(2)}, None, "foo.pth")


def test_mismatched_keys_are_listed(linear_fixture):
    d, sd = linear_fixture
    cfg = {"constructor_kwargs": {"enc_num_heads": 4, "dec_num_heads": 4, "head_type": "linear"}}
    broken = dict(sd)
    del broken["dec_blocks2.1.norm_y.bias"]
    broken["dec_blocks.0.extra.weight"] = torch.zeros(3)
    broken["enc_norm.weight"] = torch.zeros(65)
    with pytest.raises(ReconError) as e:
        build_dust3r(broken, cfg, "tiny.pth")
    msg = str(e.value)
    assert "\n" not in msg
    assert "1 missing: dec_blocks2.1.norm_y.bias" in msg
    assert "1 unexpected: dec_blocks.0.extra.weight" in msg
    assert "shape mismatch: enc_norm.weight (65,) vs (64,)" in msg
    # sizes from a config that contradicts the weights: the extra block's keys are named
    with pytest.raises(ReconError, match=r"unexpected: dec_blocks\.2\."):
        build_dust3r(sd, {"constructor_kwargs": {**cfg["constructor_kwargs"], "dec_depth": 2}}, "tiny.pth")
    # and the intact weights load
    _check_outputs(build_dust3r(sd, cfg, "tiny.pth"), d)


def test_alias_keys_may_be_stored_once(tmp_path):
    """safetensors' save_model keeps one name per shared tensor: the DPT scratch aliases are refilled."""
    d = shared_fixture("priors", "dust3r_dpt")
    sd = load_file(str(d / "weights.safetensors"))
    dropped = {k: v for k, v in sd.items() if ".scratch.layer_rn." not in k}
    assert len(sd) - len(dropped) == 8
    save_file(dropped, str(tmp_path / "weights.safetensors"))
    shutil.copy(d / "config.json", tmp_path / "config.json")
    _check_outputs(load_network("dust3r", tmp_path / "weights.safetensors"), d)
