"""The native CPU rasteriser equals the pure-PyTorch reference (recon.render.torch_ref).

Forward outputs to 1e-5 and gradients (means, quats, scales, opacities, colours, w2c, and the stage-2
inputs) to 1e-4, relative to each tensor's magnitude, on random scenes built to hit the edge cases:
overlapping splats, splats clipped by the image border or entirely off it, Gaussians behind the camera
or inside the near plane, tiny sub-pixel Gaussians and large ones, several cameras.  The extension is
compiled once into the shared cache (``$RECON_CACHE_DIR`` or ``~/.cache/recon``) and reused.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest
import torch

from recon.cameras import intrinsics, look_at_w2c
from recon.render import native, torch_ref

pytestmark = pytest.mark.skipif(not native.available(), reason="no C++ compiler: native kernels unavailable")

W, H = 72, 56  # not multiples of the tile size: border tiles are partial


def make_scene(n: int = 400, cams: int = 2, seed: int = 0, dtype=torch.float32):
    """Random Gaussians in front of (and some behind / beside) `cams` cameras looking at the origin."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    # A cluster around the origin (heavy overlap), a sprinkle over a wide area (clipped / off-image), and
    # a few placed behind the first camera and inside its near plane.
    n_cluster, n_wide = n // 2, n - n // 2
    means = torch.cat([(rnd(n_cluster, 3) - 0.5) * 1.0, (rnd(n_wide, 3) - 0.5) * 6.0])
    log_s = math.log(0.02) + rnd(n, 3) * math.log(0.4 / 0.02)  # 0.02 .. 0.4
    tiny = rnd(n) < 0.15
    log_s[tiny] = math.log(2e-4)  # sub-pixel: only the eps2d blur remains
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64) * (0.5 + rnd(n, 1))  # unnormalised
    opac = 0.05 + 0.95 * rnd(n)
    opac[: n // 10] = 1.0  # hits the 0.99 alpha clamp
    colors = rnd(cams, n, 3)

    eyes = [torch.tensor([0.3, -4.0, 0.5]), torch.tensor([3.0, -2.5, 1.0]), torch.tensor([-2.0, -3.0, -1.0])]
    w2c = torch.stack(
        [look_at_w2c(eyes[i % 3].double(), torch.zeros(3, dtype=torch.float64)) for i in range(cams)]
    )
    # Gaussians right in front of, at, and behind camera 0's centre (near-plane and behind-camera culling).
    c2w0 = torch.linalg.inv(w2c[0])
    local = torch.tensor([[0.1, 0.0, 0.005], [0.0, 0.1, -0.5], [-0.2, 0.1, -2.0], [0.05, 0.02, 0.3]])
    means[:4] = (c2w0[:3, :3] @ local.double().T).T + c2w0[:3, 3]
    f = 60.0
    K = torch.stack([intrinsics(f, f * 1.1, W / 2 + 1.5, H / 2 - 2.0, dtype=torch.float64)] * cams)
    out = dict(means=means, quats=quats, scales=log_s.exp(), opacities=opac, colors=colors, w2c=w2c, K=K)
    return {k: v.to(dtype) for k, v in out.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the reference's largest magnitude (0 when both vanish)."""
    scale = b.abs().max().item()
    return 0.0 if scale == 0 else (a - b).abs().max().item() / scale


def render(backend, scene, requires_grad=True):
    """Both stages with one backend; returns (outputs, leaf inputs)."""
    leaves = {k: v.clone().requires_grad_(requires_grad and k != "K") for k, v in scene.items()}
    m2d, conics, depths, radii = backend.project_gaussians(
        leaves["means"], leaves["quats"], leaves["scales"], leaves["w2c"], leaves["K"], W, H
    )
    raster = backend.rasterize_to_pixels
    img, alpha, acc_depth = raster(m2d, conics, leaves["opacities"], leaves["colors"], depths, radii, W, H)
    return (img, alpha, acc_depth, m2d, conics, depths, radii), leaves


def test_projection_forward_matches_reference():
    scene = make_scene(seed=1, cams=3)
    ref = torch_ref.project_gaussians(
        scene["means"], scene["quats"], scene["scales"], scene["w2c"], scene["K"], W, H
    )
    nat = native.project_gaussians(
        scene["means"], scene["quats"], scene["scales"], scene["w2c"], scene["K"], W, H
    )
    radii_ref, radii_nat = ref[3], nat[3]
    assert radii_nat.dtype == torch.int32 and radii_nat.shape == radii_ref.shape
    assert torch.equal(radii_nat, radii_ref)
    keep = (radii_ref > 0).all(-1)
    assert keep.sum() > 100 and (~keep).sum() > 10  # the scene really has culled Gaussians
    in_depth = (ref[2] > 0.01) & (ref[2] < 1e10)
    assert rel_err(nat[2], ref[2]) < 1e-5  # depths, all Gaussians
    for a, b in zip(nat[:2], ref[:2], strict=True):  # means2d, conics where the reference is specified
        assert rel_err(a[in_depth], b[in_depth]) < 1e-5


@pytest.mark.parametrize("seed", [0, 3])
def test_rasterize_forward_matches_reference_and_dense(seed):
    scene = make_scene(seed=seed)
    m2d, conics, depths, radii = torch_ref.project_gaussians(
        scene["means"], scene["quats"], scene["scales"], scene["w2c"], scene["K"], W, H
    )
    args = (m2d, conics, scene["opacities"], scene["colors"], depths, radii, W, H)
    nat = native.rasterize_to_pixels(*args)
    ref = torch_ref.rasterize_to_pixels(*args)
    dense = torch_ref.rasterize_dense(*args)
    assert ref[1].max() > 0.9 and (ref[1] < 0.5).float().mean() > 0.05  # opaque and empty regions exist
    for a, b, d in zip(nat, ref, dense, strict=True):
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-5
        assert rel_err(a, d) < 1e-5


@pytest.mark.parametrize("channels", [1, 5])
def test_shared_opacity_and_colour_layouts(channels):
    """(N,) opacities and (N, D) colours broadcast over cameras, with any number of channels."""
    scene = make_scene(n=200, cams=2, seed=5)
    m2d, conics, depths, radii = torch_ref.project_gaussians(
        scene["means"], scene["quats"], scene["scales"], scene["w2c"], scene["K"], W, H
    )
    feats = torch.rand(200, channels, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    opac = scene["opacities"].clone().requires_grad_(True)
    outs = []
    for backend in (native, torch_ref):
        img, alpha, d = backend.rasterize_to_pixels(m2d, conics, opac, feats, depths, radii, W, H)
        loss = (img * torch.linspace(-1, 1, channels)).sum() + alpha.sum()
        outs.append((img, *torch.autograd.grad(loss, (feats, opac))))
    for a, b in zip(*outs, strict=True):
        assert rel_err(a, b) < 1e-4


@pytest.mark.parametrize("tile_size", [8, 12, 16, 32])
def test_tile_size_changes_nothing(tile_size):
    """Images and gradients do not depend on the tile size (12: rows not a multiple of the SIMD width)."""
    scene = make_scene(n=200, cams=1, seed=9)
    m2d, conics, depths, radii = torch_ref.project_gaussians(
        scene["means"], scene["quats"], scene["scales"], scene["w2c"], scene["K"], W, H
    )
    args = (m2d, conics, scene["opacities"], scene["colors"], depths, radii, W, H)
    ref = torch_ref.rasterize_to_pixels(*args)
    colors = scene["colors"].clone().requires_grad_(True)
    nat = native.rasterize_to_pixels(m2d, conics, scene["opacities"], colors, depths, radii, W, H, tile_size)
    for a, b in zip(nat, ref, strict=True):
        assert rel_err(a, b) < 1e-5
    (g_nat,) = torch.autograd.grad(nat[0].sum(), colors)
    colors_ref = scene["colors"].clone().requires_grad_(True)
    out = torch_ref.rasterize_to_pixels(m2d, conics, scene["opacities"], colors_ref, depths, radii, W, H)
    (g_ref,) = torch.autograd.grad(out[0].sum(), colors_ref)
    assert rel_err(g_nat, g_ref) < 1e-4


def _loss(outputs, weights):
    img, alpha, acc_depth = outputs[:3]
    return (img * weights[0]).sum() + (alpha * weights[1]).sum() + (acc_depth * weights[2]).sum()


@pytest.mark.parametrize("seed", [0, 7])
def test_gradients_match_reference(seed):
    """End-to-end gradients (both stages) for every input, including the camera's w2c."""
    scene = make_scene(seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    C = scene["w2c"].shape[0]
    weights = (torch.randn(C, H, W, 3, generator=g), torch.randn(C, H, W, 1, generator=g),
               0.1 * torch.randn(C, H, W, 1, generator=g))  # fmt: skip
    grads = {}
    for name, backend in (("native", native), ("ref", torch_ref)):
        outputs, leaves = render(backend, scene)
        _loss(outputs, weights).backward()
        grads[name] = {k: v.grad for k, v in leaves.items() if k != "K"}
    for k, ref in grads["ref"].items():
        nat = grads["native"][k]
        assert ref.abs().max() > 0, k
        assert rel_err(nat, ref) < 1e-4, (k, rel_err(nat, ref))


def test_gradients_match_dense_oracle_in_float64():
    """Stage-2 gradients against plain autograd through the all-pairs oracle, which is computed in float64
    (so the comparison measures the kernels' own float32 error, not the reference's)."""
    scene = make_scene(n=250, cams=1, seed=11)
    m2d, conics, depths, radii = torch_ref.project_gaussians(
        scene["means"], scene["quats"], scene["scales"], scene["w2c"], scene["K"], W, H
    )
    inputs = {"means2d": m2d, "conics": conics, "opacities": scene["opacities"], "colors": scene["colors"],
              "depths": depths}  # fmt: skip
    g = torch.Generator().manual_seed(3)
    weights = (torch.randn(1, H, W, 3, generator=g), torch.randn(1, H, W, 1, generator=g),
               0.1 * torch.randn(1, H, W, 1, generator=g))  # fmt: skip
    grads = []
    for backend, dtype in (
        (native.rasterize_to_pixels, torch.float32),
        (torch_ref.rasterize_dense, torch.float64),
    ):
        leaves = {k: v.detach().to(dtype).requires_grad_(True) for k, v in inputs.items()}
        out = backend(*leaves.values(), radii, W, H)
        loss = _loss(out, [w.to(dtype) for w in weights])
        grads.append(torch.autograd.grad(loss, list(leaves.values())))
    for name, a, b in zip(inputs, *grads, strict=True):
        assert rel_err(a.double(), b) < 1e-4, (name, rel_err(a.double(), b))


def test_gradients_match_float64_autograd():
    """Both stages against plain autograd through the float64 reference (projection + all-pairs oracle):
    measures the kernels' own float32 error on every input, w2c included."""
    scene = make_scene(n=200, cams=2, seed=2)
    g = torch.Generator().manual_seed(5)
    weights = (torch.randn(2, H, W, 3, generator=g), torch.randn(2, H, W, 1, generator=g),
               0.1 * torch.randn(2, H, W, 1, generator=g))  # fmt: skip
    outputs, leaves = render(native, scene)
    _loss(outputs, weights).backward()

    ref = {k: v.double().requires_grad_(k != "K") for k, v in scene.items()}
    m2d, con, dep, rad = torch_ref.project_gaussians(ref["means"], ref["quats"], ref["scales"], ref["w2c"],
                                                     ref["K"], W, H)  # fmt: skip
    out = torch_ref.rasterize_dense(m2d, con, ref["opacities"], ref["colors"], dep, rad, W, H)
    _loss(out, [w.double() for w in weights]).backward()
    for k, v in ref.items():
        if k != "K":
            assert rel_err(leaves[k].grad.double(), v.grad) < 1e-4, (
                k,
                rel_err(leaves[k].grad.double(), v.grad),
            )


def test_empty_and_fully_culled_scenes():
    scene = make_scene(n=50, cams=1, seed=4)
    scene["means"] = scene["means"] + torch.tensor([0.0, -100.0, 0.0])  # all behind the camera
    (img, alpha, acc_depth, *_), leaves = render(native, scene)
    assert img.abs().max() == 0 and alpha.abs().max() == 0 and acc_depth.abs().max() == 0
    img.sum().backward()
    assert leaves["means"].grad.abs().max() == 0


def test_build_is_cached_across_processes():
    """A second process loads the compiled kernels from the cache: no compile message, no compiler needed."""
    code = "from recon.render import native; assert native.available(); print(native._module.__name__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "compiling" not in res.stderr
    assert res.stdout.strip() == native._module.__name__


def test_missing_sources_fall_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setattr(native, "KERNEL_DIR", tmp_path / "nowhere")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.available() is False
        assert native.available() is False
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert "pure-PyTorch" in str(caught[0].message)
