"""3DGS PLY: exact round trip, the original 3DGS header layout, other tools' PLYs, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from recon.errors import ReconError
from recon.gaussians.model import Gaussians
from recon.gaussians.ply import load_ply, save_ply


def _random_gaussians(n: int, degree: int) -> Gaussians:
    g = torch.Generator().manual_seed(degree)
    k = (degree + 1) ** 2 - 1
    return Gaussians(
        means=torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g),  # deliberately unnormalised: stored raw
        log_scales=torch.randn(n, 3, generator=g) - 3,
        opacity_logits=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, k, 3, generator=g),
    )


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_is_exact(tmp_path, degree):
    g = _random_gaussians(257, degree)
    p = tmp_path / "point_cloud.ply"
    save_ply(p, g)
    back = load_ply(p)
    for name, t in g.tensors().items():
        b = getattr(back, name)
        assert b.dtype == torch.float32 and b.shape == t.shape, name
        assert torch.equal(b, t), name
    assert [x.name for x in tmp_path.iterdir()] == ["point_cloud.ply"]


def test_header_layout_matches_3dgs(tmp_path):
    g = _random_gaussians(5, 3)
    p = tmp_path / "g.ply"
    save_ply(p, g)
    header = p.read_bytes().split(b"end_header\n")[0].decode()
    assert "format binary_little_endian 1.0" in header and "element vertex 5" in header
    props = [ln.split() for ln in header.splitlines() if ln.startswith("property")]
    assert all(t == "float" for _, t, _ in props)
    expect = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(45)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    assert [name for *_, name in props] == expect
    # f_rest is channel-major: property c*K + k holds coefficient k of channel c
    v = PlyData.read(str(p))["vertex"].data
    K = 15
    for c, k in [(0, 0), (1, 0), (2, 14), (1, 7)]:
        assert v[f"f_rest_{c * K + k}"][3] == g.shN[3, k, c].item()
    assert v["rot_0"][2] == g.quats[2, 0].item() and v["opacity"][4] == g.opacity_logits[4].item()


def test_loads_foreign_ply_with_fewer_f_rest_and_extra_fields(tmp_path):
    n = 4
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3", "red"]
    arr = np.zeros(n, dtype=[(nm, "<f4") for nm in names])
    rng = np.random.default_rng(1)
    for nm in names:
        arr[nm] = rng.normal(size=n).astype(np.float32)
    p = tmp_path / "degree1.ply"
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(p))
    g = load_ply(p)
    assert g.sh_degree == 1 and g.shN.shape == (n, 3, 3)
    assert g.shN[2, 1, 2].item() == arr["f_rest_7"][2]  # channel 2, coefficient 1 -> 2 * 3 + 1
    assert torch.equal(g.opacity_logits, torch.from_numpy(arr["opacity"]))


def test_point_cloud_ply_is_rejected(tmp_path):
    arr = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                             ("blue", "u1")])
    p = tmp_path / "cloud.ply"
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(p))
    with pytest.raises(ReconError, match="not a 3D Gaussian PLY"):
        load_ply(p)
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"not a ply at all")
    with pytest.raises(ReconError, match="garbage.ply"):
        load_ply(garbage)
    with pytest.raises(ReconError, match="does not exist"):
        load_ply(tmp_path / "missing.ply")
