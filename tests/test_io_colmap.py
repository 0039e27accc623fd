"""COLMAP models: binary reading checked against LLFF's poses, text and binary round trips, load_colmap."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
import torch
from conftest import shared_scene

from recon.cameras import Cameras, intrinsics, look_at_w2c, project, rotmat_to_quat
from recon.errors import ReconError
from recon.io.colmap import load_colmap, read_colmap_model, write_colmap_text
from recon.io.llff import load_llff


def _ring_cameras(n: int = 4, size: tuple[int, int] = (32, 24)) -> Cameras:
    angles = torch.linspace(0, 1.5, n)
    eyes = torch.stack([3 * torch.cos(angles), 3 * torch.sin(angles), 0.5 + 0.1 * angles], -1)
    w2c = torch.stack([look_at_w2c(e, torch.zeros(3)) for e in eyes])
    K = torch.stack([intrinsics(40.0 + i, 41.5, size[0] / 2 + 0.25 * i, size[1] / 2 - 0.5) for i in range(n)])
    return Cameras(K, w2c, torch.tensor([size] * n), [f"view_{i:02d}.png" for i in range(n)])


def _write_images_bin(path, entries) -> None:
    """COLMAP images.bin, written here from the documented layout (independent of the reader)."""
    out = [struct.pack("<Q", len(entries))]
    for image_id, q, t, cam_id, name, xys, pids in entries:
        out.append(struct.pack("<i4d3di", image_id, *q, *t, cam_id) + name.encode() + b"\x00")
        out.append(struct.pack("<Q", len(pids)))
        for (x, y), pid in zip(xys, pids, strict=True):
            out.append(struct.pack("<ddq", x, y, pid))
    path.write_bytes(b"".join(out))


def test_llff_fern_binary_model_agrees_with_poses_bounds():
    root = shared_scene("llff_fern")
    model = read_colmap_model(root / "sparse" / "0")  # cameras.bin + points3D.bin, no images.bin
    assert len(model.cameras) == 1 and model.images == {}
    views = load_llff(root)
    cam = next(iter(model.cameras.values()))
    W, H = views.size
    assert (cam.width, cam.height) == (4032, 3024)
    # the COLMAP focal, scaled to images_8, is the focal LLFF's poses_bounds.npy carries
    assert cam.K()[0, 0] * W / cam.width == pytest.approx(float(views.cameras.K[0, 0, 0]), rel=1e-6)
    assert cam.K()[0, 2] * W / cam.width == pytest.approx(float(views.cameras.K[0, 0, 2]), abs=1e-4)

    pts = model.points3D
    assert len(pts) > 1000 and pts.xyz.shape == (len(pts), 3) and pts.rgb.dtype == np.uint8
    X = torch.from_numpy(pts.xyz).float()
    uv, z = project(X[None], views.cameras.K, views.cameras.w2c)  # (N, P, 2), (N, P)
    image_ids = [set(t[:, 0].tolist()) for t in pts.track]

    def colour_error(i: int, image: torch.Tensor) -> tuple[float, float]:
        # COLMAP image ids are 1..N in sorted file-name order (how LLFF's COLMAP run registered them)
        obs = torch.tensor([i + 1 in s for s in image_ids])
        u, d = uv[i][obs], z[i][obs]
        inside = (d > 0) & (u[:, 0] >= 0) & (u[:, 0] < W) & (u[:, 1] >= 0) & (u[:, 1] < H)
        px = u[inside].long()
        sampled = image[px[:, 1], px[:, 0]] * 255
        ref = torch.from_numpy(pts.rgb[obs.numpy()][inside.numpy()]).float()
        return inside.float().mean().item(), (sampled - ref).abs().median().item()

    for i in (0, 7, 19):
        frac_inside, err = colour_error(i, views.images[i])
        assert frac_inside > 0.99, f"view {i}: only {frac_inside:.3f} of observed points project inside"
        assert err < 25, f"view {i}: median colour difference {err}"
        _, wrong = colour_error(i, views.images[(i + 5) % len(views)])  # the test can tell images apart
        assert wrong > err + 15


def test_text_round_trip(tmp_path):
    cams = _ring_cameras()
    cams.names[0] = "my photo.png"  # a name with a space survives: it is the rest of the line
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3))
    rgb = rng.integers(0, 256, size=(50, 3), dtype=np.uint8)
    write_colmap_text(tmp_path / "sparse" / "0", cams, xyz, rgb)
    model = read_colmap_model(tmp_path / "sparse" / "0")
    assert sorted(p.name for p in (tmp_path / "sparse" / "0").iterdir()) == [
        "cameras.txt", "images.txt", "points3D.txt"
    ]
    assert [model.images[i + 1].name for i in range(len(cams))] == cams.names
    for i in range(len(cams)):
        im = model.images[i + 1]
        cam = model.cameras[im.camera_id]
        assert cam.model == "PINHOLE" and (cam.width, cam.height) == (32, 24)
        np.testing.assert_allclose(cam.K(), cams.K[i].double().numpy(), atol=1e-6)
        np.testing.assert_allclose(im.w2c(), cams.w2c[i].double().numpy(), atol=1e-6)
        assert im.xys.shape == (0, 2) and im.point3D_ids.shape == (0,)
    np.testing.assert_allclose(model.points3D.xyz, xyz, atol=1e-12)
    assert np.array_equal(model.points3D.rgb, rgb)


def test_text_reader_parses_observations_and_tracks(tmp_path):
    (tmp_path / "cameras.txt").write_text("# c\n7 OPENCV 64 48 50 51 32 24 0.1 -0.02 0.001 0.002\n")
    (tmp_path / "images.txt").write_text(
        "# header\n"
        "3 1 0 0 0 0.5 -1 2 7 a b.png\n"  # a name with a space
        "10.5 20.25 -1 11 12 42\n"
        "5 0.7071067811865476 0 0.7071067811865476 0 0 0 1 7 c.png\n"
        "\n"
    )
    (tmp_path / "points3D.txt").write_text("42 1 2 3 255 0 10 0.75 3 1 5 0\n")
    m = read_colmap_model(tmp_path)
    assert m.cameras[7].distortion() == {"k1": 0.1, "k2": -0.02, "p1": 0.001, "p2": 0.002}
    assert m.images[3].name == "a b.png" and m.images[5].xys.shape == (0, 2)
    np.testing.assert_allclose(m.images[3].xys, [[10.5, 20.25], [11, 12]])
    assert m.images[3].point3D_ids.tolist() == [-1, 42]
    R = m.images[5].w2c()[:3, :3]  # 90 degrees about y
    np.testing.assert_allclose(R, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], atol=1e-12)
    assert m.points3D.track[0].tolist() == [[3, 1], [5, 0]] and m.points3D.error[0] == 0.75


def test_images_bin_and_load_colmap_match_llff(tmp_path):
    """A COLMAP dataset assembled from fern: its cameras.bin + an images.bin written from LLFF poses."""
    src = shared_scene("llff_fern")
    llff = load_llff(src)
    root = tmp_path / "fern_colmap"
    (root / "sparse" / "0").mkdir(parents=True)
    shutil.copy(src / "sparse" / "0" / "cameras.bin", root / "sparse" / "0" / "cameras.bin")
    picks = [0, 5, 11]
    (root / "images").mkdir()
    entries = []
    for k, i in enumerate(picks):
        name = llff.names[i]
        shutil.copy(src / "images_8" / name, root / "images" / name)
        w2c = llff.cameras.w2c[i].double()
        q = rotmat_to_quat(w2c[:3, :3]).tolist()
        xys = [(1.5, 2.5), (100.25, 7.0)] if k == 1 else []
        pids = [-1, 12] if k == 1 else []
        entries.append((20 - k, q, w2c[:3, 3].tolist(), 1, name, xys, pids))  # ids not in name order
    _write_images_bin(root / "sparse" / "0" / "images.bin", entries)
    model = read_colmap_model(root / "sparse" / "0")
    assert sorted(model.images) == [18, 19, 20]
    np.testing.assert_allclose(model.images[19].xys, [[1.5, 2.5], [100.25, 7.0]])
    assert model.images[19].point3D_ids.tolist() == [-1, 12]

    views = load_colmap(root)
    assert views.source == "colmap" and views.names == [llff.names[i] for i in picks]
    ref = llff.cameras.subset(picks)
    torch.testing.assert_close(views.cameras.K, ref.K, atol=1e-4, rtol=0)
    torch.testing.assert_close(views.cameras.w2c, ref.w2c, atol=1e-5, rtol=0)
    assert torch.equal(views.images, llff.images[picks])
    dist = views.meta["distortion"][llff.names[0]]
    assert dist["model"] == "SIMPLE_RADIAL" and dist["k1"] == pytest.approx(0.0197504638, rel=1e-6)


def test_load_colmap_text_dataset_and_errors(tmp_path):
    from PIL import Image

    cams = _ring_cameras(3, size=(32, 24))
    root = tmp_path / "scene"
    (root / "images").mkdir(parents=True)
    for n in cams.names:
        Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(root / "images" / n)  # 2x the model size
    write_colmap_text(root / "sparse", cams, np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    views = load_colmap(root)
    assert views.size == (64, 48)
    torch.testing.assert_close(views.cameras.K, cams.scaled(2.0).K)
    torch.testing.assert_close(views.cameras.w2c, cams.w2c, atol=1e-6, rtol=0)
    assert "distortion" not in views.meta
    (root / "images" / cams.names[1]).unlink()
    with pytest.raises(ReconError, match=cams.names[1]):
        load_colmap(root)
    with pytest.raises(ReconError, match="no COLMAP model"):
        load_colmap(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cameras.bin").write_bytes(struct.pack("<Q", 5) + b"\x00" * 7)
    with pytest.raises(ReconError, match="truncated"):
        read_colmap_model(tmp_path / "broken")
