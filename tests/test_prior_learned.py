"""Learned priors (DUSt3R, MASt3R, VGGT) with the tiny random-weight fixtures: pair graph, inference
paths, cameras as the alignment/pose encoding give them, point maps on the views' pixels, robustness to
garbage outputs, checkpoint errors and the end-to-end CLI.

Random weights give meaningless geometry, so the tests check structure and exact agreement with
independent computations (direct network calls, hand conversions), never geometric accuracy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import shared_fixture

from recon.cameras import invert_rigid, pixel_centers, project
from recon.cli import main
from recon.errors import ReconError
from recon.priors import learned
from recon.priors.align import AlignConfig, global_align
from recon.priors.base import PriorResult
from recon.priors.checkpoints import build_dust3r, read_weights
from recon.priors.learned import (
    LearnedConfig,
    LearnedPrior,
    alignment_stride,
    assemble_result,
    guard_pose_encoding,
    pair_graph,
    pool_pair_maps,
    predict_pairs,
    sanitize_depth,
)
from recon.priors.networks.dust3r import NetworkCrop
from recon.synthetic import SceneConfig, make_scene, save_views
from recon.views import Views


def weights(name: str) -> Path:
    return shared_fixture("priors", name, "weights.safetensors")


@pytest.fixture(scope="module")
def views() -> Views:
    return make_scene(SceneConfig(n_views=3, width=64, height=48)).views


# --------------------------------------------------------------------------------------------------
# Pair graph and helpers
# --------------------------------------------------------------------------------------------------


def test_pair_graph_complete_for_few_views():
    pairs = pair_graph(4)
    assert pairs == [(i, j) for i in range(4) for j in range(4) if i != j]


def test_pair_graph_window_plus_keyframes_for_many_views():
    n, window = 20, 3
    pairs = set(pair_graph(n, complete_max_views=12, window=window))
    # every window edge, both orders
    for i in range(n):
        for d in range(1, window + 1):
            if i + d < n:
                assert (i, i + d) in pairs and (i + d, i) in pairs
    # keyframes round(sqrt(20)) = 4 evenly spaced views 0, 6, 13, 19 are linked to each other
    keys = [0, 6, 13, 19]
    for a in keys:
        for b in keys:
            if a != b:
                assert (a, b) in pairs
    # nothing else: 54 window edges + 6 keyframe edges (none within the window), both orders
    assert len(pairs) == 2 * (54 + 6)
    assert (0, 5) not in pairs and (1, 8) not in pairs
    assert {i for i, _ in pairs} == set(range(n))  # every view is the first view of some pair


def test_alignment_stride_powers_of_two():
    assert alignment_stride(384, 512, 64) == 8
    assert alignment_stride(384, 512, 128) == 4
    assert alignment_stride(384, 512, 600) == 1
    assert alignment_stride(48, 64, 64) == 1
    assert alignment_stride(48, 80, 8) == 16  # 48 = 16 * 3: no power of two beyond 16 divides it


def test_pool_pair_maps_confidence_weighted_and_non_finite():
    pts = torch.zeros(1, 2, 4, 3)
    pts[0, :, :2] = torch.tensor([[[1.0, 0, 0], [3.0, 0, 0]], [[5.0, 0, 0], [float("nan"), 0, 0]]])
    pts[0, :, 2:] = float("inf")
    conf = torch.tensor([[[1.0, 3.0, 2.0, 2.0], [4.0, 9.0, 2.0, 2.0]]])
    p, c = pool_pair_maps(pts, conf, 2)
    assert p.shape == (1, 1, 2, 3) and c.shape == (1, 1, 2)
    # block 1: (1*1 + 3*3 + 5*4) / (1 + 3 + 4), the NaN pixel counts with confidence 0
    assert p[0, 0, 0, 0].item() == pytest.approx(30.0 / 8.0)
    assert c[0, 0, 0].item() == pytest.approx(8.0 / 4.0)
    # block 2: all points infinite -> no confidence, finite (zero) point
    assert c[0, 0, 1].item() == 0.0 and torch.isfinite(p).all()


def test_sanitize_depth_clamps_and_zeroes_confidence():
    depth = torch.tensor([[[1.0, 2.0, 3.0, float("nan")], [-1.0, 1e9, 2.0, 2.0]]])
    conf = torch.tensor([[[1.0, 1.0, float("inf"), 1.0], [1.0, 1.0, 1.0, 1.0]]])
    d, c, bad = sanitize_depth(depth, conf)
    med = torch.tensor([1.0, 2.0, 1e9, 2.0, 2.0]).median()  # of the valid depths (conf finite)
    assert bad == 3  # NaN depth, negative depth, infinite confidence
    assert c[0, 0, 3] == 0 and c[0, 1, 0] == 0 and c[0, 0, 2] == 0 and c[0, 0, 0] == 1
    assert d[0, 0, 3] == med and d[0, 1, 0] == med
    assert d[0, 1, 1] == pytest.approx(float(med) * 1e3)
    assert torch.isfinite(d).all() and (d > 0).all()


def test_guard_pose_encoding_clamps_fov_and_refuses_nan():
    enc = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 0.0, 1.0], [0, 0, 0, 0, 0, 0, 1, 1.0, 3.1]])
    out, n = guard_pose_encoding(enc)
    assert n == 2
    assert out[0, 7].item() == pytest.approx(math.radians(1.0))
    assert out[1, 8].item() == pytest.approx(math.radians(175.0))
    assert torch.equal(out[:, :7], enc[:, :7])
    with pytest.raises(ReconError, match="non-finite cameras"):
        guard_pose_encoding(torch.full((1, 9), float("nan")))


def test_assemble_result_survives_garbage_depth(views):
    """Non-finite / negative depths give finite points with confidence 0; the rest stays exact."""
    N, (W, H) = len(views), views.size
    crop = NetworkCrop((W, H), (W, H), (0, 0), (W, H))
    K = torch.tensor([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]]).expand(N, 3, 3)
    w2c = torch.eye(4).expand(N, 4, 4)
    depth = torch.full((N, H, W), 2.0)
    depth[0, :5] = float("nan")
    depth[1, :, :3] = -1.0
    depth[2, 0, 0] = float("inf")
    res = assemble_result(views, crop, 1, w2c, K, depth, torch.ones(N, H, W), (W, H))
    assert torch.isfinite(res.pointmaps).all() and torch.isfinite(res.depth).all()
    assert (res.conf[0, :5] == 0).all() and (res.conf[1, :, :3] == 0).all() and res.conf[2, 0, 0] == 0
    assert int((res.conf == 1).sum()) == N * H * W - 5 * W - 3 * H - 1
    # valid pixels: the ray through the pixel centre at depth 2
    uv = pixel_centers(H, W)
    expect = torch.cat([(uv - torch.tensor([W / 2, H / 2])) / 50.0, torch.ones(H, W, 1)], -1) * 2.0
    assert torch.allclose(res.pointmaps[0, 5:], expect[5:], atol=1e-6)
    assert torch.equal(res.colors, views.images)


# --------------------------------------------------------------------------------------------------
# DUSt3R / MASt3R
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,fixture,resolution",
    [("dust3r", "dust3r_linear", 128), ("dust3r", "dust3r_dpt", 64), ("mast3r", "mast3r_catmlp_dpt", 64)],
)
def test_pairwise_prior_cameras_are_the_alignment(views, kind, fixture, resolution, monkeypatch):
    cfg = LearnedConfig(resolution=resolution, align=AlignConfig(iters=10))
    prior = LearnedPrior(kind, weights(fixture), cfg, "cpu")
    seen = []  # (n, pair predictions, alignment) as the prior ran them

    def spy(n, preds, align_cfg):
        seen.append((n, preds, global_align(n, preds, align_cfg)))
        return seen[-1][2]

    monkeypatch.setattr(learned, "global_align", spy)
    res = prior(views)
    N, (W, H) = len(views), views.size

    # structure
    assert res.cameras.names == views.names and res.failed == {}
    assert res.cameras.sizes.tolist() == [[W, H]] * N
    assert (
        res.pointmaps.shape == (N, H, W, 3) and res.conf.shape == (N, H, W) and res.depth.shape == (N, H, W)
    )
    assert torch.isfinite(res.pointmaps).all() and torch.isfinite(res.cameras.K).all()
    assert (res.conf >= 1).all()  # DUSt3R confidences are >= 1 and the crop covers the whole 4:3 image
    assert torch.equal(res.colors, views.images)  # the output grid is the image grid here
    info = res.info
    assert info["pairs"] == N * (N - 1) and info["batches"] == math.ceil(N * (N - 1) / cfg.batch_size)
    sx = resolution / W  # network input = the image scaled by sx (4:3 images need no crop)
    stride = round(sx)  # the alignment grid is the image size here: network pixels pooled by sx
    assert info["network_size"] == [resolution, resolution * 3 // 4] and info["grid_stride"] == stride
    assert info["map_size"] == [W, H]
    assert info["seconds"] > 0 and info["peak_rss_mb"] > 0

    # the alignment of every ordered pair at the grid resolution, converted by hand:
    # grid focal * stride = network focal; network -> image: / sx
    ((n, preds, ref),) = seen
    assert n == N and [(p.i, p.j) for p in preds] == pair_graph(N)
    assert preds[0].pts_i.shape == (H, W, 3)
    f_img = ref.focal * stride / sx
    assert torch.allclose(res.cameras.K[:, 0, 0], f_img, rtol=1e-5)
    assert torch.allclose(res.cameras.K[:, 1, 1], f_img, rtol=1e-5)
    assert torch.allclose(res.cameras.K[:, :2, 2], torch.tensor([W / 2, H / 2]).expand(N, 2))
    assert torch.allclose(res.cameras.w2c, invert_rigid(ref.c2w), atol=1e-5)
    # depths: the aligned ones after the documented clamp (random weights put some far from the median)
    clamped, _, _ = sanitize_depth(ref.depth.double(), ref.conf.double())
    assert torch.allclose(res.depth, clamped.float(), rtol=1e-5)
    same = clamped.float() == ref.depth
    assert same.float().mean() > 0.5
    scale = float(ref.pointmaps[same].abs().max())
    assert torch.allclose(res.pointmaps[same], ref.pointmaps[same], atol=1e-5 * scale)
    assert torch.equal(res.conf, ref.conf)


def test_predict_pairs_equals_direct_forward(views):
    """Encoding each image once and decoding pairs in batches gives the network's own two-view output."""
    prior = LearnedPrior("dust3r", weights("dust3r_linear"), LearnedConfig(resolution=64), "cpu")
    model = prior.model
    x, _ = prior.prepare(model, views)
    pairs = [(0, 1), (2, 0), (1, 2)]
    preds, stats = predict_pairs(model, x, pairs, batch_size=2, stride=1)
    assert stats == {"pairs": 3, "batches": 2, "encoder_batches": 2}
    with torch.no_grad():
        res1, res2 = model(x[[0, 2, 1]], x[[1, 0, 2]])
    for b, p in enumerate(preds):
        assert (p.i, p.j) == pairs[b]
        assert torch.allclose(p.pts_i, res1["pts3d"][b], atol=1e-5)
        assert torch.allclose(p.pts_j, res2["pts3d_in_other_view"][b], atol=1e-5)
        assert torch.allclose(p.conf_i, res1["conf"][b], atol=1e-5)
        assert torch.allclose(p.conf_j, res2["conf"][b], atol=1e-5)


def test_landscape_only_networks_take_portraits_transposed():
    """A landscape-only (official ManyAR layout) network on portrait views gives the same predictions as
    the same weights built for true-orientation inputs."""
    sd, config = read_weights(weights("dust3r_linear"))
    plain = build_dust3r(sd, config)
    land = build_dust3r(
        sd, {**config, "constructor_kwargs": {**config["constructor_kwargs"], "landscape_only": True}}
    )
    assert land.landscape_only and not plain.landscape_only
    x = torch.rand(2, 3, 64, 48) * 2 - 1  # portrait network inputs (H > W)
    a, _ = predict_pairs(plain, x, [(0, 1), (1, 0)], stride=1)
    b, _ = predict_pairs(land, x, [(0, 1), (1, 0)], stride=1)
    for p, q in zip(a, b, strict=True):
        assert p.pts_i.shape == (64, 48, 3)
        assert torch.allclose(p.pts_i, q.pts_i, atol=1e-5) and torch.allclose(p.pts_j, q.pts_j, atol=1e-5)
        assert torch.allclose(p.conf_j, q.conf_j, atol=1e-5)


def test_square_views_are_cropped_to_4_3_and_mapped_back():
    """Square photos become 4:3 network inputs; the output still covers the whole image, with confidence 0
    on the cropped rows and K for the full image (principal point at its centre)."""
    sq = make_scene(SceneConfig(n_views=2, width=48, height=48)).views
    prior = LearnedPrior(
        "dust3r", weights("dust3r_linear"), LearnedConfig(resolution=64, align=AlignConfig(iters=5)), "cpu"
    )
    res = prior(sq)
    # 48 px -> 64 px (scale 4/3) -> 64 x 48 input keeping network rows 8..56 = image rows 6..42; the
    # alignment grid is pooled by 2 (32 x 24, long side <= the images' 48), so the output grid is 32 x 32
    assert res.info["network_size"] == [64, 48] and res.info["grid_stride"] == 2
    assert res.pointmaps.shape == (2, 32, 32, 3) and torch.isfinite(res.pointmaps).all()
    centre_y = (torch.arange(32) + 0.5) * 48 / 32  # output row centres in image pixels
    inside = (centre_y >= 6) & (centre_y < 42)
    assert int(inside.sum()) == 24
    assert (res.conf[:, ~inside] == 0).all() and (res.conf[:, inside] > 0).all()
    assert res.info["covered_fraction"] == pytest.approx(24 / 32)
    assert torch.allclose(res.cameras.K[:, :2, 2], torch.tensor([24.0, 24.0]).expand(2, 2))
    # every valid point projects onto its own pixel centre
    for v in range(2):
        uv, z = project(res.pointmaps[v].reshape(-1, 3), res.cameras.K[v], res.cameras.w2c[v])
        ok = res.conf[v].reshape(-1) > 0
        assert (z[ok] > 0).all()
        # random weights put some points at depth ~1e-4, where float32 rounding of a world point of size
        # |X| moves its projection by about f |X| eps / z: allow that on top of 1e-3 px
        X = res.pointmaps[v].reshape(-1, 3)[ok]
        tol = 1e-3 + res.cameras.K[v, 0, 0] * X.norm(dim=-1) * 1e-6 / z[ok]
        err = (uv[ok] - pixel_centers(32, 32).reshape(-1, 2)[ok] * 1.5).norm(dim=-1)
        assert (err <= tol).all(), float((err / tol).max())


# --------------------------------------------------------------------------------------------------
# VGGT
# --------------------------------------------------------------------------------------------------


def _rotation_from_xyzw(q: torch.Tensor) -> torch.Tensor:
    x, y, z, w = (q / q.norm()).tolist()
    return torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ],
        dtype=torch.float64,
    )


def _run_capturing_network(prior: LearnedPrior, views: Views) -> tuple[PriorResult, torch.Tensor, dict]:
    """Run the prior, capturing the network's input and output in flight (no second forward pass)."""
    seen = []
    handle = prior.model.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    try:
        res = prior(views)
    finally:
        handle.remove()
    ((x, out),) = seen
    return res, x, out


def test_vggt_prior_is_the_network_output_converted(views):
    from recon.priors.networks.vggt import prepare_images

    prior = LearnedPrior("vggt", weights("vggt"), LearnedConfig(), "cpu")
    res, x, out = _run_capturing_network(prior, views)
    N, (W, H) = len(views), views.size
    assert res.cameras.names == views.names and res.cameras.sizes.tolist() == [[W, H]] * N
    assert res.pointmaps.shape == (N, H, W, 3) and torch.isfinite(res.pointmaps).all()
    assert (res.conf >= 1).all() and res.info["pairs"] == 0 and res.info["batches"] == 1

    # the input: the official preprocessing at the fixture's training width 70 -> 70 x 56
    assert torch.equal(x, prepare_images(views.images, 70)[0])
    assert tuple(x.shape) == (N, 3, 56, 70)
    sx, sy = 70 / W, 56 / H
    for v in range(N):
        enc = out["pose_enc"][0, v].double()
        R = _rotation_from_xyzw(enc[3:7])
        assert torch.allclose(res.cameras.w2c[v, :3, :3].double(), R, atol=1e-5)
        assert torch.allclose(res.cameras.w2c[v, :3, 3].double(), enc[:3], atol=1e-5)
        fx_net = 35.0 / math.tan(float(enc[8]) / 2)  # (w / 2) / tan(fov_w / 2)
        fy_net = 28.0 / math.tan(float(enc[7]) / 2)
        K = res.cameras.K[v].double()
        assert K[0, 0].item() == pytest.approx(fx_net / sx, rel=1e-5)
        assert K[1, 1].item() == pytest.approx(fy_net / sy, rel=1e-5)
        assert K[0, 2].item() == pytest.approx(W / 2) and K[1, 2].item() == pytest.approx(H / 2)
    # depth: output pixel (i, j) takes the network pixel under its centre
    jj = torch.floor((torch.arange(W) + 0.5) * sx).long()
    ii = torch.floor((torch.arange(H) + 0.5) * sy).long()
    net_depth = out["depth"][0, ..., 0]
    assert torch.allclose(res.depth, net_depth[:, ii][:, :, jj], rtol=1e-6)
    assert torch.allclose(res.conf, out["depth_conf"][0][:, ii][:, :, jj], rtol=1e-6)
    # and the points are those depths along the returned cameras' pixel rays
    for v in range(N):
        uv, z = project(res.pointmaps[v].reshape(-1, 3), res.cameras.K[v], res.cameras.w2c[v])
        assert torch.allclose(z, res.depth[v].reshape(-1), rtol=1e-4)
        assert torch.allclose(uv, pixel_centers(H, W).reshape(-1, 2), atol=1e-3)


def test_vggt_point_head_option(views):
    prior = LearnedPrior("vggt", weights("vggt"), LearnedConfig(vggt_points="pointmap"), "cpu")
    res, _, out = _run_capturing_network(prior, views)
    W, H = views.size
    jj = torch.floor((torch.arange(W) + 0.5) * 70 / W).long()
    ii = torch.floor((torch.arange(H) + 0.5) * 56 / H).long()
    expect = out["world_points"][0][:, ii][:, :, jj]
    assert torch.allclose(res.pointmaps, expect, atol=1e-6)
    # confidence: the point head's, zero where a point is behind its own camera
    z = res.depth
    assert torch.allclose(res.conf, out["world_points_conf"][0][:, ii][:, :, jj] * (z > 0), rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Checkpoint errors and lookup
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def empty_checkpoint_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("RECON_CHECKPOINT_DIR", str(tmp_path / "ckpts"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~/.cache/recon/checkpoints -> empty
    return tmp_path / "ckpts"


def test_missing_checkpoint_message(empty_checkpoint_dirs):
    with pytest.raises(ReconError) as e:
        LearnedPrior("mast3r", None, LearnedConfig(), "cpu")
    msg = str(e.value)
    assert msg.startswith("the mast3r prior needs a checkpoint: pass --checkpoint PATH to the official ")
    assert "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth (or .safetensors)" in msg
    assert f"$RECON_CHECKPOINT_DIR ({empty_checkpoint_dirs})" in msg and "~/.cache/recon/checkpoints" in msg
    assert "\n" not in msg


def test_checkpoint_found_in_local_folder(empty_checkpoint_dirs, views):
    folder = empty_checkpoint_dirs / "vggt"
    folder.mkdir(parents=True)
    for name in ("weights.safetensors", "config.json"):
        (folder / name).symlink_to(weights("vggt").parent / name)
    prior = LearnedPrior("vggt", None, LearnedConfig(), "cpu")
    assert prior.checkpoint == folder
    assert prior.model.cfg.img_size == 70  # the fixture's config.json was read beside the weights


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, views) -> Path:
    d = tmp_path_factory.mktemp("views")
    save_views(views, d)
    return d


def test_cli_missing_checkpoint_exit_2(image_folder, empty_checkpoint_dirs, tmp_path, capsys):
    rc = main(["run", str(image_folder), "--prior", "dust3r", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "the dust3r prior needs a checkpoint" in err and "DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth" in err


def test_cli_wrong_kind_exit_2(image_folder, tmp_path, capsys):
    rc = main(
        [
            "run",
            str(image_folder),
            "--prior",
            "dust3r",
            "--checkpoint",
            str(weights("vggt")),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "is a VGGT checkpoint, not DUSt3R; use --prior vggt" in err


# --------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------


FAST_CLI = ["--learned.resolution", "64", "--learned.align.iters", "10"]


@pytest.mark.parametrize(
    "kind,fixture,extra",
    [
        ("vggt", "vggt", []),
        ("dust3r", "dust3r_linear", FAST_CLI),
        # the same path with heavier heads (~30 s each on a loaded 2-core machine)
        pytest.param("dust3r", "dust3r_dpt", FAST_CLI, marks=pytest.mark.slow),
        pytest.param("mast3r", "mast3r_catmlp_dpt", FAST_CLI, marks=pytest.mark.slow),
    ],
)
def test_cli_run_end_to_end(image_folder, views, tmp_path, kind, fixture, extra):
    out = tmp_path / "out"
    argv = [
        "run",
        str(image_folder),
        "--prior",
        kind,
        "--checkpoint",
        str(weights(fixture)),
        "--out",
        str(out),
    ]
    assert main([*argv, "--iters", "20", *extra]) == 0
    for f in (
        "point_cloud.ply",
        "cameras.json",
        "metrics.json",
        "sparse/0/cameras.txt",
        "sparse/0/images.txt",
        "sparse/0/points3D.txt",
    ):
        assert (out / f).is_file(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prior"]["prior"] == kind and metrics["views"]["registered"] == len(views)
    assert metrics["prior"]["seconds"] > 0
    cams = json.loads((out / "cameras.json").read_text())
    text = json.dumps(cams)
    assert all(name in text for name in views.names) and "NaN" not in text and "Infinity" not in text
    renders = sorted(p.name for p in (out / "renders").rglob("*.png"))
    assert len(renders) >= len(views)
    assert math.isfinite(metrics["train"]["psnr"]) and metrics["train"]["psnr"] > 0
