"""The pure-PyTorch rasteriser (recon.render.torch_ref) vs gsplat's reference code and hand-made scenes."""

from __future__ import annotations

import math

import pytest
import torch

from recon.cameras import intrinsics, make_rigid, so3_exp
from recon.render import torch_ref
from recon.render.torch_ref import (
    ALPHA_MAX,
    ALPHA_MIN,
    T_MIN,
    project_gaussians,
    rasterize_dense,
    rasterize_to_pixels,
)

gsplat_ref = pytest.importorskip("gsplat.cuda._torch_impl")


def random_scene(n: int, dtype=torch.float64, seed: int = 0, width: int = 48, height: int = 36):
    """N Gaussians in front of two cameras, with the corner cases of stage 1 planted at fixed indices.

    0: behind camera 0; 1: between camera 0 and its near plane; 2: far off-image; 3: straddling the left
    image edge; 4: tiny (blur-dominated); 5: a long needle; 6: nearly on camera 0's image plane (z ~ 0.02).
    """
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([1.0, 0.8, 0.6], dtype=dtype)
    means[:, 2] += 3.0
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.exp(torch.randn(n, 3, generator=g, dtype=dtype) * 0.4 - 2.5)
    means[0] = torch.tensor([0.1, 0.0, -2.0])
    means[1] = torch.tensor([0.0, 0.0, 0.005])
    means[2] = torch.tensor([40.0, 0.0, 3.0])
    means[3] = torch.tensor([-1.75, 0.2, 3.0])
    scales[4] = 1e-4
    scales[5] = torch.tensor([1.5, 0.01, 0.01])
    means[6] = torch.tensor([0.05, 0.02, 0.02])
    w2c = torch.stack(
        [
            torch.eye(4, dtype=dtype),
            make_rigid(
                so3_exp(torch.tensor([0.1, -0.2, 0.05], dtype=dtype)), torch.tensor([0.3, -0.1, 0.4])
            ).to(dtype),
        ]
    )
    K = torch.stack(
        [
            intrinsics(40.0, 40.0, width / 2, height / 2, dtype=dtype),
            intrinsics(35.0, 38.0, width / 2 + 3.3, height / 2 - 2.1, dtype=dtype),
        ]
    )
    return means, quats, scales, w2c, K


def gsplat_projection(means, quats, scales, w2c, K, width, height, **kw):
    covars, _ = gsplat_ref._quat_scale_to_covar_preci(quats, scales, True, False, triu=False)
    radii, means2d, depths, conics, _ = gsplat_ref._fully_fused_projection(
        means, covars, w2c, K, width, height, **kw
    )
    return means2d, conics, depths, radii


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_projection_matches_gsplat_reference(dtype):
    W, H = 48, 36
    scene = random_scene(400, dtype)
    ours = project_gaussians(*scene, W, H)
    ref = gsplat_projection(*scene, W, H)
    m2, co, de, ra = ours
    rm2, rco, rde, rra = ref
    assert ra.dtype == torch.int32 and ra.shape == (2, 400, 2)
    # The planted corner cases: culled by depth (behind, inside near plane) and off-image; kept otherwise.
    assert (ra[0, :3] == 0).all() and (ra[0, 3:7] > 0).all()
    assert ra[0, 4].tolist() == [2, 2]  # tiny: the eps2d blur alone gives ceil(3.33 sqrt(0.3)) = 2
    # Camera 0 culls some and keeps most; both cameras see a mix.
    assert 0 < int((ra == 0).all(-1).sum()) < 200
    if dtype == torch.float64:
        assert torch.equal(ra, rra)
    else:  # float32 rounding may move a ceil() across an integer in rare cases
        assert int((ra != rra).sum()) <= 2
    valid = (ra > 0).all(-1) & (rra > 0).all(-1)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(de, rde, **tol)
    torch.testing.assert_close(m2[valid], rm2[valid], **tol)
    if dtype == torch.float32:  # the inverse of a thin 2D covariance loses a few more bits to cancellation
        tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(co[valid], rco[valid], **tol)


def test_projection_respects_eps2d_near_far():
    W, H = 48, 36
    scene = random_scene(200, torch.float64, seed=3)
    for kw in (
        dict(eps2d=0.1, near_plane=2.5, far_plane=3.5),
        dict(eps2d=1.0, near_plane=0.2, far_plane=100.0),
    ):
        m2, co, de, ra = project_gaussians(*scene, W, H, **kw)
        rm2, rco, rde, rra = gsplat_projection(*scene, W, H, **kw)
        assert torch.equal(ra, rra)
        valid = (ra > 0).all(-1)
        assert ((de[valid] > kw["near_plane"]) & (de[valid] < kw["far_plane"])).all()
        torch.testing.assert_close(co[valid], rco[valid], rtol=1e-10, atol=1e-10)


def stage2_scene(dtype, n=160, C=2, width=37, height=29, per_camera_opacity=False, seed=1):
    """Projected Gaussians for stage-2 tests: many overlaps, some fully opaque (alpha clamp), and a stack
    of opaque Gaussians over the image centre so that pixels there stop early."""
    g = torch.Generator().manual_seed(seed)
    means, quats, scales, w2c, K = random_scene(n, dtype, seed=seed, width=width, height=height)
    means[-6:] = torch.tensor([0.0, 0.0, 2.0], dtype=dtype) + torch.arange(6, dtype=dtype)[
        :, None
    ] * torch.tensor([0.0, 0.0, 0.3], dtype=dtype)
    scales[-6:] = 0.3
    with torch.no_grad():
        means2d, conics, depths, radii = project_gaussians(means, quats, scales, w2c, K, width, height)
    opac = torch.rand((C, n) if per_camera_opacity else (n,), generator=g, dtype=dtype) * 0.95 + 0.05
    opac[..., :20] = 1.0  # clamped at ALPHA_MAX near their centres
    opac[..., -6:] = 0.95
    colors = torch.rand(C, n, 4, generator=g, dtype=dtype)
    return means2d, conics, opac, colors, depths, radii


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tile_size", [4, 8, 16])
def test_tiled_matches_dense_outputs_and_gradients(dtype, tile_size):
    W, H = 37, 29  # not multiples of the tile size: partial border tiles
    m2, co, op, col, de, ra = stage2_scene(dtype, per_camera_opacity=tile_size == 8, width=W, height=H)
    inputs = [t.clone().requires_grad_() for t in (m2, co, op, col, de)]
    tiled = rasterize_to_pixels(*inputs, ra, W, H, tile_size=tile_size)
    dense = rasterize_dense(*inputs, ra, W, H)
    assert [tuple(t.shape) for t in tiled] == [(2, H, W, 4), (2, H, W, 1), (2, H, W, 1)]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(tiled, dense, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)
    # The scene exercises the stop rule: the centre pixel of camera 0 saturates.
    assert tiled[1][0, H // 2, W // 2, 0] > 1 - 2 * T_MIN

    g = torch.Generator().manual_seed(7)
    probes = [torch.randn(t.shape, generator=g, dtype=dtype) for t in tiled]

    def grads(outs):
        loss = sum((o * p).sum() for o, p in zip(outs, probes, strict=True))
        return torch.autograd.grad(loss, inputs)

    for name, a, b in zip(
        ["means2d", "conics", "opacities", "colors", "depths"], grads(tiled), grads(dense), strict=True
    ):
        scale = max(1.0, float(b.abs().max()))
        assert float(b.abs().max()) > 0, name
        gtol = 1e-4 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(a, b, rtol=0, atol=gtol * scale, msg=f"gradient of {name}")


def test_tiled_chunking_and_recomputation_do_not_change_results(monkeypatch):
    W, H = 37, 29
    m2, co, op, col, de, ra = stage2_scene(torch.float64)
    inputs = [t.clone().requires_grad_() for t in (m2, co, op, col, de)]
    big = rasterize_to_pixels(*inputs, ra, W, H, tile_size=8)
    g_big = torch.autograd.grad(sum(o.sum() for o in big), inputs)
    monkeypatch.setattr(torch_ref, "CHUNK_ELEMENTS", 1)  # one tile per chunk
    monkeypatch.setattr(torch_ref, "SAVE_TERMS_BYTES", 0)  # the backward recomputes the forward terms
    small = rasterize_to_pixels(*inputs, ra, W, H, tile_size=8)
    g_small = torch.autograd.grad(sum(o.sum() for o in small), inputs)
    for a, b in zip(big + g_big, small + g_small, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _gsplat_kernel_loop(means2d, conics, opac, colors, depths, radii, W, H, tile_size):
    """Scalar transcription of gsplat's per-pixel forward loop over its own tile lists (its Python
    ``_isect_tiles`` / ``_isect_offset_encode``), with the project's alpha clamp."""
    C, N = depths.shape
    tw, th = math.ceil(W / tile_size), math.ceil(H / tile_size)
    _, isect_ids, flat = gsplat_ref._isect_tiles(means2d, radii, depths, tile_size, tw, th)
    offsets = gsplat_ref._isect_offset_encode(isect_ids, C, tw, th).flatten().tolist() + [len(flat)]
    flat = flat.tolist()
    m, q, o, f, z = (t.reshape(C * N, -1).tolist() for t in (means2d, conics, opac, colors, depths))
    out = torch.zeros(C, H, W, colors.shape[-1] + 2, dtype=torch.float64)
    for c in range(C):
        for i in range(H):
            for j in range(W):
                tile = c * tw * th + (i // tile_size) * tw + j // tile_size
                px, py = j + 0.5, i + 0.5
                T, acc = 1.0, [0.0] * (colors.shape[-1] + 1)
                for gid in flat[offsets[tile] : offsets[tile + 1]]:
                    dx, dy = m[gid][0] - px, m[gid][1] - py
                    a, b, cc = q[gid]
                    sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
                    alpha = min(ALPHA_MAX, o[gid][0] * math.exp(-sigma))
                    if sigma < 0 or alpha < ALPHA_MIN:
                        continue
                    next_t = T * (1 - alpha)
                    if next_t <= T_MIN:
                        break
                    for k, v in enumerate(f[gid] + z[gid]):
                        acc[k] += v * alpha * T
                    T = next_t
                out[c, i, j, :-1] = torch.tensor(acc, dtype=torch.float64)
                out[c, i, j, -1] = 1 - T
    return out[..., :-2], out[..., -1:], out[..., -2:-1]


def test_compositing_matches_gsplat_tile_lists_and_kernel_loop():
    W, H, ts = 26, 20, 8
    m2, co, op, col, de, ra = stage2_scene(torch.float64, n=60, width=W, height=H, seed=4)
    ref = _gsplat_kernel_loop(m2, co, op.expand(2, -1), col, de, ra, W, H, ts)
    ours = rasterize_to_pixels(m2, co, op, col, de, ra, W, H, tile_size=ts)
    assert float(ref[1].max()) > 0.99  # opaque regions exist
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _camera_point_to_pixel_centre(u, v, z, K):
    return torch.tensor([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], dtype=torch.float64)


def test_single_gaussian_by_hand():
    W, H = 40, 24
    K = intrinsics(50.0, 50.0, 20.0, 12.0, dtype=torch.float64)
    t = torch.tensor([0.2, -0.1, 0.5], dtype=torch.float64)
    w2c = make_rigid(torch.eye(3, dtype=torch.float64), t)
    row, col, z, s, opacity = 7, 25, 2.0, 0.02, 0.8
    X_cam = _camera_point_to_pixel_centre(col + 0.5, row + 0.5, z, K)
    mean = (X_cam - t)[None]
    color = torch.tensor([[0.2, 0.5, 0.9]], dtype=torch.float64)
    m2, co, de, ra = project_gaussians(
        mean, torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64), torch.full((1, 3), s, dtype=torch.float64),
        w2c[None], K[None], W, H,
    )  # fmt: skip
    rgb, alpha, acc = rasterize_to_pixels(
        m2, co, torch.tensor([opacity], dtype=torch.float64), color[None], de, ra, W, H
    )

    # By hand: isotropic sigma^2 I through J = [[f/z, 0, -f x/z^2], [0, f/z, -f y/z^2]], plus the blur.
    f, x, y = 50.0, float(X_cam[0]), float(X_cam[1])
    cxx = s * s * (f * f / z**2) * (1 + x * x / z**2) + 0.3
    cyy = s * s * (f * f / z**2) * (1 + y * y / z**2) + 0.3
    cxy = s * s * f * f * x * y / z**4
    det = cxx * cyy - cxy * cxy
    assert float(de[0, 0]) == pytest.approx(z)
    assert m2[0, 0].tolist() == pytest.approx([col + 0.5, row + 0.5])
    assert co[0, 0].tolist() == pytest.approx([cyy / det, -cxy / det, cxx / det])
    assert ra[0, 0].tolist() == [math.ceil(3.33 * math.sqrt(cxx)), math.ceil(3.33 * math.sqrt(cyy))]

    a = alpha[0, ..., 0]
    peak = divmod(int(a.argmax()), W)
    assert peak == (row, col)
    assert float(a[row, col]) == pytest.approx(opacity)  # sigma = 0 at the centre
    assert float(a[row, col + 1]) == pytest.approx(opacity * math.exp(-0.5 * (cyy / det)))
    assert float(a[row + 1, col + 1]) == pytest.approx(opacity * math.exp(-0.5 * (cyy + cxx - 2 * cxy) / det))
    torch.testing.assert_close(rgb[0], a[..., None] * color[0], rtol=0, atol=1e-12)
    hit = a > 0
    torch.testing.assert_close(acc[0, ..., 0][hit] / a[hit], torch.full_like(a[hit], z))
    # 1/255 cut-off: the footprint is exactly the pixels where opacity * exp(-sigma) >= 1/255.
    assert 0 < int(hit.sum()) < W * H
    assert float(a[hit].min()) >= ALPHA_MIN


def test_stop_rule_and_alpha_clamp_by_hand():
    W, H = 16, 16
    K = intrinsics(30.0, 30.0, 8.0, 8.0, dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64)[None]
    # Five opaque Gaussians on the ray through the centre of pixel (row 8, col 8), front to back.
    zs = [1.0, 1.5, 2.0, 2.5, 3.0]
    means = torch.stack([_camera_point_to_pixel_centre(8.5, 8.5, z, K) for z in zs])
    quats = torch.tensor([[1.0, 0, 0, 0]] * 5, dtype=torch.float64)
    scales = torch.full((5, 3), 0.05, dtype=torch.float64)
    colors = torch.eye(5, dtype=torch.float64)[None]  # one channel per Gaussian: its weight
    m2, co, de, ra = project_gaussians(means, quats, scales, w2c, K[None], W, H)
    rgb, alpha, acc = rasterize_to_pixels(
        m2, co, torch.full((5,), 0.95, dtype=torch.float64), colors, de, ra, W, H
    )
    # T: 1 -> 0.05 -> 0.0025 -> 1.25e-4; the 4th would bring it to 6.25e-6 <= 1e-4: it and all behind it
    # are not added (gsplat's exclusive stop).
    w = [0.95, 0.95 * 0.05, 0.95 * 0.0025, 0.0, 0.0]
    assert rgb[0, 8, 8].tolist() == pytest.approx(w, abs=1e-12)
    assert float(alpha[0, 8, 8]) == pytest.approx(1 - 1.25e-4, abs=1e-12)
    assert float(acc[0, 8, 8]) == pytest.approx(sum(wi * zi for wi, zi in zip(w, zs, strict=True)), abs=1e-12)

    # One fully opaque Gaussian: alpha is clamped at ALPHA_MAX (0.99; gsplat 1.5.3 uses 0.999).
    one = torch.ones(1, dtype=torch.float64)
    _, alpha1, _ = rasterize_to_pixels(
        m2[:, :1], co[:, :1], one, colors[:, :1, :1], de[:, :1], ra[:, :1], W, H
    )
    assert float(alpha1[0, 8, 8]) == pytest.approx(0.99, abs=1e-12)


def test_near_plane_culls_and_empty_scene_is_black():
    W, H = 16, 12
    K = intrinsics(20.0, 20.0, 8.0, 6.0, dtype=torch.float64)[None]
    w2c = torch.eye(4, dtype=torch.float64)[None]
    means = torch.tensor([[0.0, 0.0, 0.005], [0.0, 0.0, -1.0]], dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64)
    scales = torch.full((2, 3), 0.5, dtype=torch.float64)
    m2, co, de, ra = project_gaussians(means, quats, scales, w2c, K, W, H)
    assert (ra == 0).all()
    op = torch.ones(2, dtype=torch.float64, requires_grad=True)
    rgb, alpha, acc = rasterize_to_pixels(m2, co, op, torch.ones(1, 2, 3, dtype=torch.float64), de, ra, W, H)
    assert rgb.abs().sum() == 0 and alpha.abs().sum() == 0 and acc.abs().sum() == 0
    (g,) = torch.autograd.grad(rgb.sum() + alpha.sum(), op, allow_unused=True)
    assert g is None or g.abs().sum() == 0
