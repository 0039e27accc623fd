"""The public entry points recon.render.rasterize / render_gaussians: wiring, gradients, backends."""

from __future__ import annotations

import pytest
import torch

import recon.render as render
from recon.cameras import Cameras, intrinsics, look_at_w2c, make_rigid, so3_exp
from recon.gaussians import Gaussians
from recon.render import rasterize, render_gaussians, sh_colors
from recon.render.torch_ref import project_gaussians, rasterize_dense


def tiny_scene(n=4, dtype=torch.float64, seed=0, sh_bands=4):
    """A few soft, semi-transparent Gaussians (no clamp, no early stop) seen by two cameras."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * 0.3
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.15 + 0.1
    opacities = torch.rand(n, generator=g, dtype=dtype) * 0.4 + 0.3
    sh = torch.randn(n, sh_bands, 3, generator=g, dtype=dtype) * 0.3
    w2c = torch.stack(
        [
            look_at_w2c(torch.tensor([0.2, -0.1, -2.5]), torch.zeros(3)),
            look_at_w2c(torch.tensor([-1.0, 0.3, -2.2]), torch.tensor([0.0, 0.1, 0.0])),
        ]
    ).to(dtype)
    K = torch.stack([intrinsics(14.0, 14.0, 6.0, 5.0), intrinsics(13.0, 15.0, 6.3, 4.8)]).to(dtype)
    return means, quats, scales, opacities, sh, w2c, K


def test_rasterize_torch_backend_is_the_two_stages_plus_background_and_expected_depth():
    means, quats, scales, opac, sh, w2c, K = tiny_scene(n=30, seed=1)
    W, H = 12, 10
    colors = torch.rand(30, 3, dtype=torch.float64)
    bg = torch.tensor([0.1, 0.7, 0.3], dtype=torch.float64)
    out = rasterize(means, quats, scales, opac, colors, w2c, K, W, H, background=bg, backend="torch")
    assert out.backend == "torch"
    assert (
        out.rgb.shape == (2, H, W, 3) and out.alpha.shape == (2, H, W, 1) and out.depth.shape == (2, H, W, 1)
    )
    assert out.means2d.shape == (2, 30, 2) and out.radii.shape == (2, 30, 2)

    m2, co, de, ra = project_gaussians(means, quats, scales, w2c, K, W, H)
    rgb, alpha, acc = rasterize_dense(m2, co, opac, colors.expand(2, -1, -1), de, ra, W, H)
    torch.testing.assert_close(out.alpha, alpha)
    torch.testing.assert_close(out.rgb, rgb + (1 - alpha) * bg)
    hit = alpha > 0
    assert hit.any() and (~hit).any()
    torch.testing.assert_close(out.depth[hit], acc[hit] / alpha[hit])
    assert (out.depth[~hit] == 0).all()
    # Expected depth is a convex combination of the Gaussians' depths.
    assert float(out.depth[hit].min()) >= float(de.min()) - 1e-9
    assert float(out.depth[hit].max()) <= float(de.max()) + 1e-9

    # A per-camera background (C, D) is used per camera.
    bgs = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    out2 = rasterize(means, quats, scales, opac, colors, w2c, K, W, H, background=bgs, backend="torch")
    torch.testing.assert_close(out2.rgb[0], rgb[0])
    torch.testing.assert_close(out2.rgb[1], rgb[1] + 1 - alpha[1])


def test_sh_colors_are_evaluated_per_camera():
    means, quats, scales, opac, sh, w2c, K = tiny_scene(n=20, seed=2, sh_bands=9)
    W, H = 12, 10
    out = rasterize(means, quats, scales, opac, sh, w2c, K, W, H, sh_degree=2, backend="torch")
    per_cam = sh_colors(2, sh, means, w2c)  # (C, N, 3): differs between the two cameras
    assert float((per_cam[0] - per_cam[1]).abs().max()) > 1e-3
    ref = rasterize(means, quats, scales, opac, per_cam, w2c, K, W, H, backend="torch")
    torch.testing.assert_close(out.rgb, ref.rgb)
    # Using fewer bands than stored ignores the rest.
    out1 = rasterize(means, quats, scales, opac, sh, w2c, K, W, H, sh_degree=1, backend="torch")
    ref1 = rasterize(means, quats, scales, opac, sh[:, :4], w2c, K, W, H, sh_degree=1, backend="torch")
    torch.testing.assert_close(out1.rgb, ref1.rgb)


def test_gradients_match_finite_differences_including_camera_pose():
    means, quats, scales, opac, sh, w2c, K = tiny_scene()
    W, H = 12, 10
    g = torch.Generator().manual_seed(3)
    probes = [torch.randn(2, H, W, d, generator=g, dtype=torch.float64) for d in (3, 1, 1)]

    def loss(means, quats, scales, opac, sh, w2c):
        out = rasterize(means, quats, scales, opac, sh, w2c, K, W, H, sh_degree=1, backend="torch")
        assert out.alpha.max() > 0.2  # the Gaussians are on screen
        return torch.stack(
            [(o * p).sum() for o, p in zip((out.rgb, out.alpha, out.depth), probes, strict=True)]
        )

    inputs = [t.clone().requires_grad_() for t in (means, quats, scales, opac, sh, w2c)]
    # Every entry of the w2c and means Jacobians, then a random projection of the full one (fast mode).
    assert torch.autograd.gradcheck(
        lambda m, T: loss(m, *inputs[1:5], T), (inputs[0], inputs[5]), eps=1e-6, atol=1e-6, rtol=1e-4
    )
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    grads = torch.autograd.grad(loss(*inputs).sum(), inputs)
    assert float(grads[-1][:, :3, :].abs().max()) > 1e-3  # the pose gradient is really exercised
    assert float(grads[-1][:, 3, :].abs().max()) == 0  # the constant last row of w2c is not used


def test_pose_gradient_through_se3_delta_matches_finite_differences():
    """The trainer's use: a left-multiplied se(3) delta on w2c (CONVENTIONS)."""
    from recon.cameras import se3_exp

    means, quats, scales, opac, sh, w2c, K = tiny_scene(n=6, seed=5)
    W, H = 12, 10
    colors = torch.rand(6, 3, dtype=torch.float64)
    target = torch.rand(2, H, W, 3, dtype=torch.float64)

    def photometric(xi):
        out = rasterize(means, quats, scales, opac, colors, se3_exp(xi) @ w2c, K, W, H, backend="torch")
        return ((out.rgb - target) ** 2).mean()

    xi = torch.zeros(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(photometric, (xi,), eps=1e-6, atol=1e-7, rtol=1e-4)


def test_means2d_keeps_its_gradient_for_densification():
    means, quats, scales, opac, sh, w2c, K = tiny_scene(n=10, dtype=torch.float32)
    means.requires_grad_()
    out = rasterize(means, quats, scales, opac, sh, w2c, K, 12, 10, sh_degree=1, backend="torch")
    assert out.means2d.requires_grad
    out.rgb.sum().backward()
    assert out.means2d.grad is not None and out.means2d.grad.shape == (2, 10, 2)
    visible = (out.radii > 0).all(-1)
    assert float(out.means2d.grad[visible].abs().sum()) > 0
    assert float(out.means2d.grad[~visible].abs().sum()) == 0


def test_backend_selection(monkeypatch):
    means, quats, scales, opac, sh, w2c, K = tiny_scene(n=5, dtype=torch.float32)
    args = (means, quats, scales, opac, sh[:, 0], w2c, K, 12, 10)
    auto = rasterize(*args)
    assert auto.backend == ("native" if render.native_available() else "torch")
    with pytest.raises(ValueError, match="CUDA"):
        rasterize(*args, backend="gsplat")
    with pytest.raises(ValueError, match="unknown render backend"):
        rasterize(*args, backend="vulkan")
    # Without a usable native module, auto falls back to torch and an explicit request fails clearly.
    monkeypatch.setattr(render, "_native_module", lambda: None)
    assert rasterize(*args).backend == "torch"
    with pytest.raises(RuntimeError, match="native"):
        rasterize(*args, backend="native")


def test_bad_shapes_are_reported():
    means, quats, scales, opac, sh, w2c, K = tiny_scene(n=5, dtype=torch.float32)
    with pytest.raises(ValueError, match="opacities"):
        rasterize(means, quats, scales, opac[:3], sh[:, 0], w2c, K, 12, 10, backend="torch")
    with pytest.raises(ValueError, match="SH colors"):
        rasterize(means, quats, scales, opac, sh, w2c, K, 12, 10, sh_degree=3, backend="torch")


def test_render_gaussians_uses_the_activated_model():
    g = torch.Generator().manual_seed(4)
    n = 25
    model = Gaussians(
        means=torch.randn(n, 3, generator=g) * 0.3,
        quats=torch.randn(n, 4, generator=g) * 3.0,  # unnormalised on purpose
        log_scales=torch.log(torch.rand(n, 3, generator=g) * 0.1 + 0.05),
        opacity_logits=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, 3, 3, generator=g) * 0.2,
    )
    w2c = torch.stack([look_at_w2c(torch.tensor([0.0, 0.0, -2.0]), torch.zeros(3))] * 2)
    w2c[1] = make_rigid(so3_exp(torch.tensor([0.0, 0.3, 0.0])), torch.tensor([0.2, 0.0, 2.0]))
    K = torch.stack([intrinsics(16.0, 16.0, 8.0, 6.0)] * 2)
    cams = Cameras(K=K, w2c=w2c, sizes=torch.tensor([[16, 12], [16, 12]]))
    out = render_gaussians(model, cams, backend="torch")
    ref = rasterize(
        model.means, model.quats, model.scales, model.opacities, model.sh, w2c, K, 16, 12,
        sh_degree=1, backend="torch",
    )  # fmt: skip
    torch.testing.assert_close(out.rgb, ref.rgb)
    assert out.rgb.shape == (2, 12, 16, 3) and float(out.alpha.max()) > 0.1
    mixed = Cameras(K=K, w2c=w2c, sizes=torch.tensor([[16, 12], [8, 6]]))
    with pytest.raises(ValueError, match="sizes"):
        render_gaussians(model, mixed, backend="torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the gsplat backend needs CUDA")
def test_gsplat_backend_matches_torch_backend_on_cuda():
    means, quats, scales, opac, sh, w2c, K = tiny_scene(n=200, dtype=torch.float32, seed=6, sh_bands=16)
    opac = opac.clamp_max(0.98)  # below both alpha clamps (0.99 here, 0.999 in gsplat)
    args = [t.cuda() for t in (means, quats, scales, opac, sh, w2c, K)]
    bg = torch.tensor([0.2, 0.3, 0.4], device="cuda")
    a = rasterize(*args, 32, 24, sh_degree=3, background=bg, backend="gsplat")
    b = rasterize(*args, 32, 24, sh_degree=3, background=bg, backend="torch")
    assert a.backend == "gsplat"  # (its radii use an opacity-aware box, so they are not compared)
    for x, y in ((a.rgb, b.rgb), (a.alpha, b.alpha), (a.depth, b.depth)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def test_gsplat_backend_call_and_channel_split(monkeypatch):
    """Without CUDA, check the plumbing of the gsplat backend against a stand-in for gsplat.rasterization."""
    gsplat = pytest.importorskip("gsplat")
    from recon.render.gsplat_backend import rasterize_gsplat

    seen = {}

    def fake_rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kw):
        seen.update(kw, width=width, height=height)
        C = viewmats.shape[0]
        renders = torch.arange(C * height * width * 4, dtype=torch.float32).reshape(C, height, width, 4)
        return renders, torch.full((C, height, width, 1), 0.5), {"means2d": "m2", "radii": "r"}

    monkeypatch.setattr(gsplat, "rasterization", fake_rasterization)
    means, quats, scales, opac, sh, w2c, K = tiny_scene(n=5, dtype=torch.float32)
    rgb, alpha, depth, means2d, radii = rasterize_gsplat(
        means, quats, scales, opac, sh, w2c, K, 12, 10,
        sh_degree=1, background=None, near_plane=0.2, far_plane=50.0, eps2d=0.3, tile_size=16,
    )  # fmt: skip
    assert seen["render_mode"] == "RGB+ED" and seen["packed"] is False
    assert seen["rasterize_mode"] == "classic" and seen["sh_degree"] == 1
    assert (seen["near_plane"], seen["far_plane"], seen["eps2d"], seen["tile_size"]) == (0.2, 50.0, 0.3, 16)
    assert rgb.shape == (2, 10, 12, 3) and depth.shape == (2, 10, 12, 1)
    assert float(depth[0, 0, 0, 0]) == 3.0 and float(rgb[0, 0, 0, 2]) == 2.0
    assert (means2d, radii) == ("m2", "r")
