"""The `recon` CLI: bad input gives one line and exit 2; a small known-pose run writes every output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.cli import main
from recon.gaussians.ply import load_ply
from recon.io.colmap import write_colmap_text
from recon.synthetic import SceneConfig, make_scene, save_views


def _error_lines(err: str) -> list[str]:
    """stderr without the progress lines (a plain "recon: <stage> done in X s" per finished stage), which
    must all come before the error: the error is the one and last line."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    progress = [ln for ln in lines if " done in " in ln and ln.endswith(" s")]
    assert lines[: len(progress)] == progress, err
    return lines[len(progress):]


def _run_cli(args: list[str], capsys) -> tuple[int, str]:
    rc = main(args)
    err = capsys.readouterr().err
    return rc, err


@pytest.fixture
def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.jpg").write_bytes(b"definitely not a jpeg")
    (corrupt / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "notes.txt").write_text("hello")
    one = tmp_path / "one"
    save_views(make_scene(SceneConfig(n_views=1, width=32, height=24)).views, one)
    (tmp_path / "file.xyz").write_text("x")
    return {
        "missing": tmp_path / "missing",
        "empty": tmp_path / "empty",
        "corrupt": corrupt,
        "unknown": unknown,
        "one": one,
        "file": tmp_path / "file.xyz",
    }


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "does not exist"),
        ("empty", "nothing to load"),
        ("corrupt", "a.jpg"),
        ("unknown", "supported inputs"),
        ("one", "2"),
        ("file", "folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(bad_inputs, case, needle, tmp_path, capsys):
    rc, err = _run_cli(["run", str(bad_inputs[case]), "--out", str(tmp_path / "out"), "--iters", "1"], capsys)
    assert rc == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("recon: error:"), err
    assert needle in lines[0]
    assert "Traceback" not in err


def test_poses_dataset_on_plain_folder_is_a_user_error(tmp_path, capsys):
    folder = tmp_path / "imgs"
    save_views(make_scene(SceneConfig(n_views=3, width=32, height=24)).views, folder)
    rc, err = _run_cli(["run", str(folder), "--out", str(tmp_path / "o"), "--poses", "dataset"], capsys)
    assert rc == 2 and "--poses prior" in err


def write_colmap_dataset(root: Path, n_views: int = 6, width: int = 64, height: int = 48) -> None:
    """A synthetic scene as a COLMAP dataset (images/ + sparse/0 text model)."""
    scene = make_scene(SceneConfig(n_views=n_views, width=width, height=height))
    save_views(scene.views, root / "images")
    pts = scene.pointmaps(scene.views.cameras)[:, ::8, ::8].reshape(-1, 3).numpy()
    rgb = (scene.views.images[:, ::8, ::8].reshape(-1, 3).numpy() * 255).astype(np.uint8)
    write_colmap_text(root / "sparse" / "0", scene.views.cameras, pts, rgb)


def test_run_with_dataset_poses_writes_every_output(tmp_path, capsys):
    data = tmp_path / "scene"
    write_colmap_dataset(data)
    out = tmp_path / "out"
    args = ["--poses", "dataset", "--test-every", "3", "--iters", "150"]
    rc = main(["run", str(data), "--out", str(out), *args])
    assert rc == 0, capsys.readouterr().err
    for f in ["point_cloud.ply", "cameras.json", "metrics.json", "config.json",
              "sparse/0/cameras.txt", "sparse/0/images.txt", "sparse/0/points3D.txt"]:
        assert (out / f).is_file(), f
    assert len(list((out / "renders" / "train").glob("*.png"))) == 4
    assert len(list((out / "renders" / "test").glob("*.png"))) == 2
    m = json.loads((out / "metrics.json").read_text())
    assert {"psnr", "ssim"} <= set(m["train"]) and {"psnr", "ssim"} <= set(m["test"]) and m["seconds"] > 0
    assert m["train"]["psnr"] > 20.0  # measured ~24-26 dB after 150 steps at 64x48
    assert m["test"]["psnr"] > 15.0
    cams = json.loads((out / "cameras.json").read_text())["cameras"]
    assert [c["name"] for c in cams] == ["view_001.png", "view_002.png", "view_004.png", "view_005.png"]
    # with dataset poses, the cameras are not optimised away from the reference
    assert np.allclose(np.array(cams[0]["w2c"]), np.array(cams[0]["initial_w2c"]), atol=1e-3)
    g = load_ply(out / "point_cloud.ply")
    assert len(g) > 100 and torch.isfinite(g.means).all()


def test_photos_that_share_nothing_are_named_and_exit_2(tmp_path, capsys):
    """Two unrelated photos (independent textures): a one-line error that names them, exit code 2."""
    import cv2

    folder = tmp_path / "unrelated"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("wall.png", "sky.png"):
        texture = cv2.GaussianBlur(rng.uniform(0, 255, (96, 128, 3)).astype(np.uint8), (3, 3), 0)
        cv2.imwrite(str(folder / name), texture)
    rc, err = _run_cli(["run", str(folder), "--out", str(tmp_path / "o"), "--iters", "1"], capsys)
    assert rc == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "wall.png" in lines[0] and "sky.png" in lines[0] and "share no" in lines[0]
