"""NeRF transforms.json reader: OpenGL -> OpenCV, intrinsics variants, splits, names, errors."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import shared_scene
from PIL import Image

from recon.cameras import project
from recon.errors import ReconError
from recon.io.datasets import detect_format, load_views
from recon.io.llff import load_llff
from recon.io.middlebury import load_middlebury
from recon.io.nerf import load_nerf


def _gl_c2w(cv_c2w: torch.Tensor) -> list:
    """OpenGL camera-to-world of an OpenCV one: same centre, camera y (down -> up) and z (forward -> back)
    axes negated."""
    m = cv_c2w.double().clone()
    m[:3, 1] *= -1
    m[:3, 2] *= -1
    return m.tolist()


def test_opengl_camera_geometry(tmp_path):
    """An OpenGL camera built from its definition (looks along -z, y up), independent of our helpers."""
    eye = np.array([0.0, -4.0, 1.0])
    target = np.zeros(3)
    back = (eye - target) / np.linalg.norm(eye - target)  # OpenGL +z points away from the scene
    right = np.cross(np.array([0.0, 0.0, 1.0]), back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, eye
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "r_0.png")
    fov = 0.9
    frame = {"file_path": "./r_0", "transform_matrix": c2w.tolist()}
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": fov, "frames": [frame]}))
    views = load_nerf(tmp_path)
    assert views.names == ["r_0.png"] and views.source == "nerf"
    K = views.cameras.K[0]
    assert K[0, 0].item() == pytest.approx(20 / math.tan(fov / 2), rel=1e-6)
    assert K[1, 1].item() == pytest.approx(K[0, 0].item()) and K[:2, 2].tolist() == [20.0, 15.0]
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.5, 0.0, 0.0]])  # target, above, to the right
    uv, z = project(pts, K, views.cameras.w2c[0])
    assert torch.allclose(uv[0], torch.tensor([20.0, 15.0]), atol=1e-4) and z[0] > 0
    assert uv[1, 1] < 15 - 1  # world up is image up (smaller y)
    assert uv[2, 0] > 20 + 1  # world +x is on the right for a camera at -y looking at +y


def test_fern_cameras_through_transforms_json(tmp_path):
    """LLFF fern cameras written as a Blender-style file (camera_angle_x, paths without extension)."""
    src = shared_scene("llff_fern")
    ref = load_llff(src)
    W, H = ref.size
    (tmp_path / "train").mkdir()
    frames = []
    for i in range(0, len(ref), 4):
        stem = ref.names[i].rsplit(".", 1)[0]
        shutil.copy(src / "images_8" / ref.names[i], tmp_path / "train" / ref.names[i])
        frames.append({"file_path": f"./train/{stem}", "transform_matrix": _gl_c2w(ref.cameras.c2w[i])})
    fov_x = 2 * math.atan(W / 2 / float(ref.cameras.K[0, 0, 0]))
    (tmp_path / "transforms_train.json").write_text(json.dumps({"camera_angle_x": fov_x, "frames": frames}))
    assert detect_format(tmp_path) == "nerf"
    views = load_views(tmp_path / "transforms_train.json")  # the file itself is accepted too
    picks = list(range(0, len(ref), 4))
    assert views.names == [ref.names[i] for i in picks]
    torch.testing.assert_close(views.cameras.K, ref.cameras.K[picks], atol=1e-3, rtol=0)
    torch.testing.assert_close(views.cameras.w2c, ref.cameras.w2c[picks], atol=1e-5, rtol=0)
    assert torch.equal(views.images, ref.images[picks])


def test_middlebury_cameras_with_splits_and_pixel_intrinsics(tmp_path):
    """Middlebury cameras (non-centred principal point, fx != fy) as train/test files with fl_x..h."""
    src = shared_scene("middlebury_templeSparseRing")
    ref = load_middlebury(src, max_side=320)
    K = ref.cameras.K.double()
    W, H = ref.size
    splits = {"train": [0, 1, 2, 4], "test": [3, 5]}
    for split, ids in splits.items():
        (tmp_path / split).mkdir()
        frames = []
        for i in ids:
            Image.fromarray((ref.images[i].numpy() * 255).round().astype(np.uint8)).save(
                tmp_path / split / ref.names[i]
            )
            frame = {"file_path": f"{split}/{ref.names[i]}", "transform_matrix": _gl_c2w(ref.cameras.c2w[i])}
            # per-frame intrinsics (Nerfstudio style) override the file-wide ones below
            fx, fy, cx, cy = K[i, 0, 0].item(), K[i, 1, 1].item(), K[i, 0, 2].item(), K[i, 1, 2].item()
            frame.update(fl_x=fx, fl_y=fy, cx=cx, cy=cy)
            frames.append(frame)
        meta = {"fl_x": 1.0, "cx": 0.0, "w": W, "h": H, "k1": 0.01, "frames": frames}
        (tmp_path / f"transforms_{split}.json").write_text(json.dumps(meta))
    views = load_nerf(tmp_path, max_side=160)  # images are halved: K must follow
    order = splits["train"] + splits["test"]
    assert views.names == [ref.names[i] for i in order] and views.size == (160, 120)
    assert views.meta["split"][ref.names[3]] == "test" and views.meta["split"][ref.names[0]] == "train"
    assert views.meta["distortion"][ref.names[0]]["k1"] == 0.01
    torch.testing.assert_close(views.cameras.K, ref.cameras.scaled(0.5).K[order], atol=1e-4, rtol=0)
    torch.testing.assert_close(views.cameras.w2c, ref.cameras.w2c[order], atol=1e-5, rtol=0)


def test_duplicate_file_names_across_folders_and_errors(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / sub / "0.png")
    eye = np.eye(4).tolist()
    frames = [{"file_path": "a/0.png", "transform_matrix": eye}]
    frames.append({"file_path": "b/0", "transform_matrix": eye})
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 10, "frames": frames}))
    views = load_nerf(tmp_path)
    assert views.names == ["a/0.png", "b/0.png"]  # unique names when file names repeat
    frames.append({"file_path": "a/0.png", "transform_matrix": eye})
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 10, "frames": frames}))
    with pytest.raises(ReconError, match="more than one frame"):
        load_nerf(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 10, "frames": [{"file_path": "c/9"}]}))
    with pytest.raises(ReconError, match="c/9"):
        load_nerf(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": [frames[0]]}))
    with pytest.raises(ReconError, match="camera_angle_x"):
        load_nerf(tmp_path)
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(ReconError, match="transforms.json"):
        load_nerf(tmp_path)
