""".splat and nerfstudio exports read back: the same Gaussians to the format's quantisation, the same cameras
(to 1e-5) and images through recon's own NeRF reader, from a Reconstruction and from an output folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from plyfile import PlyData

from recon.cameras import quat_normalize
from recon.errors import ReconError
from recon.export import ExportConfig, export
from recon.gaussians.model import Gaussians, sh0_to_rgb
from recon.gaussians.splat import load_splat, save_splat, splat_bytes, splat_order
from recon.io.nerf import load_nerf
from recon.outputs import write_outputs
from recon.reconstruction import Reconstruction
from recon.synthetic import SceneConfig, make_scene


def _gaussians(n: int, degree: int = 1, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return Gaussians(
        means=torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g) * 3.0,  # unnormalised, as stored
        log_scales=torch.randn(n, 3, generator=g) - 3,
        opacity_logits=torch.randn(n, generator=g) * 2,
        sh0=torch.randn(n, 1, 3, generator=g),  # some colours outside [0, 1]: the format clamps them
        shN=torch.randn(n, k, 3, generator=g),
    )


def test_splat_round_trip_to_quantisation(tmp_path):
    g = _gaussians(500)
    path = tmp_path / "scene.splat"
    save_splat(path, g)
    assert path.stat().st_size == 32 * len(g)
    back = load_splat(path)
    order = splat_order(g)
    ref = Gaussians(**{k: v[order] for k, v in g.tensors().items()})
    # sorted by descending size x opacity, the order web viewers expect
    importance = torch.exp(ref.log_scales.sum(-1)) * ref.opacities
    assert bool((importance[:-1] >= importance[1:] * (1 - 1e-6)).all())
    assert torch.equal(back.means, ref.means)
    assert torch.allclose(back.scales, ref.scales, rtol=1e-6)
    rgb_ref = sh0_to_rgb(ref.sh0[:, 0]).clamp(0, 1)
    assert (sh0_to_rgb(back.sh0[:, 0]) - rgb_ref).abs().max() <= 0.5 / 255 + 1e-6
    assert (back.opacities - ref.opacities.clamp(0.5 / 255, 1 - 0.5 / 255)).abs().max() <= 0.5 / 255 + 1e-6
    q_ref = quat_normalize(ref.quats)
    q_back = quat_normalize(back.quats)
    # each stored component is within 0.5/128 of the normalised one; renormalising keeps it close
    assert (q_back - q_ref).abs().max() <= 1.5 / 128
    angle = torch.rad2deg(2 * torch.arccos((q_back * q_ref).sum(-1).abs().clamp(max=1.0)))
    assert float(angle.max()) < 2.0
    assert back.sh_degree == 0


def test_splat_layout_by_hand(tmp_path):
    g = Gaussians(
        means=torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]),
        quats=torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]),
        log_scales=torch.log(torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])),
        opacity_logits=torch.tensor([0.0, 0.0]),
        sh0=torch.zeros(2, 1, 3),  # grey 0.5
        shN=torch.zeros(2, 0, 3),
    )
    rec = np.frombuffer(splat_bytes(g), dtype=np.uint8).reshape(2, 32)
    # the second Gaussian is larger: it comes first
    assert np.frombuffer(rec[0, :12].tobytes(), "<f4").tolist() == [0.0, 0.0, 0.0]
    assert np.allclose(np.frombuffer(rec[1, 12:24].tobytes(), "<f4"), [0.1, 0.2, 0.3])
    assert rec[1, 24:28].tolist() == [128, 128, 128, 128]  # rgb 0.5, alpha sigmoid(0) = 0.5
    assert rec[1, 28:32].tolist() == [255, 128, 128, 128]  # w = 1 -> 256, clamped to 255
    assert rec[0, 28:32].tolist() == [128, 128, 128, 255]
    (tmp_path / "bad.splat").write_bytes(b"x" * 33)
    with pytest.raises(ReconError, match="multiple of 32"):
        load_splat(tmp_path / "bad.splat")


def _reconstruction() -> Reconstruction:
    scene = make_scene(SceneConfig(n_views=3, width=64, height=48, supersample=1))
    views = scene.views
    views.images = torch.round(views.images * 255) / 255  # 8-bit values: PNGs keep them exactly
    cams = views.cameras
    # cameras as a pose-free run leaves them: an arbitrary similarity of the reference frame, focal off
    world = torch.tensor([[0.0, -1, 0, 0.3], [1, 0, 0, -0.2], [0, 0, 1, 0.1], [0, 0, 0, 1]])
    cams = cams.with_w2c(cams.w2c @ world)
    cams.K[:, 0, 0] *= 1.01
    return Reconstruction(cameras=cams, initial_cameras=cams, gaussians=_gaussians(300, 0), views=views)


def _check_nerf(folder, recon: Reconstruction) -> None:
    views = load_nerf(folder)
    assert views.names == recon.cameras.names
    assert torch.allclose(views.cameras.K, recon.cameras.K, atol=1e-5)
    assert torch.allclose(views.cameras.w2c, recon.cameras.w2c, atol=1e-5)
    assert torch.equal(views.cameras.sizes, recon.cameras.sizes)
    assert torch.equal(views.images, recon.views.images)
    meta = json.loads((folder / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and meta["w"] == 64 and meta["h"] == 48
    ply = PlyData.read(str(folder / meta["ply_file_path"]))
    names = ply["vertex"].data.dtype.names
    assert names == ("x", "y", "z", "red", "green", "blue")
    assert 0 < len(ply["vertex"].data) <= 300


def test_nerfstudio_from_reconstruction_reads_back(tmp_path):
    recon = _reconstruction()
    res = export(recon, ExportConfig(format="nerfstudio"), to=tmp_path / "ns")
    assert res.paths[0] == tmp_path / "ns"
    _check_nerf(tmp_path / "ns", recon)
    with pytest.raises(ReconError, match="needs a destination"):
        export(recon, ExportConfig(format="nerfstudio"))


def test_nerfstudio_and_splat_from_output_folder(tmp_path):
    recon = _reconstruction()
    out = tmp_path / "out"
    write_outputs(recon, out)
    res = export(out, ExportConfig(format="nerfstudio"))
    assert res.paths[0] == out / "nerfstudio"
    _check_nerf(out / "nerfstudio", recon)
    res = export(out, ExportConfig(format="splat"))
    assert res.paths == [out / "point_cloud.splat"]
    back = load_splat(out / "point_cloud.splat")
    assert torch.equal(back.means, recon.gaussians.means[splat_order(recon.gaussians)])
    # without images/ and without a recorded input the nerfstudio export says what is missing
    for f in (out / "images").iterdir():
        f.unlink()
    with pytest.raises(ReconError, match="needs the training images"):
        export(out, ExportConfig(format="nerfstudio"), to=tmp_path / "ns2")
    with pytest.raises(ReconError, match="is not a folder"):
        export(tmp_path / "missing", ExportConfig(format="splat"))


def test_cli_export_writes_and_reports_user_errors(tmp_path, capsys):
    from recon.cli import main

    recon = _reconstruction()
    out = tmp_path / "out"
    write_outputs(recon, out)
    assert main(["export", str(out), "--format", "splat", "--to", str(tmp_path / "x.splat")]) == 0
    assert (tmp_path / "x.splat").stat().st_size == 32 * len(recon.gaussians)
    assert "splat export" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nothing"), "--format", "nerfstudio"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a folder" in err[0]
