"""Results viewer (`recon view`): conversions, server set-up, loading, and the page in headless Chromium."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("viser")

from proclines import ProcessLines  # noqa: E402

from recon.cameras import look_at_w2c  # noqa: E402
from recon.errors import ReconError  # noqa: E402
from recon.gaussians.model import SH_C0, Gaussians  # noqa: E402
from viewer.browser import HeadlessBrowser, find_chromium, foreground_fraction  # noqa: E402
from viewer.scene import (  # noqa: E402
    cameras_from_viser,
    metrics_markdown,
    render_view,
    splat_arrays,
    vertical_fov,
    viser_pose,
)
from viewer.server import CANVAS_RGB, resolve_port, start_server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WINDOW = (1000, 700)
SCENE_COLS = 620  # the GUI panel sits right of this column at this window size


def scene_region(px: np.ndarray) -> np.ndarray:
    """The canvas left of the GUI panel, without the axes gizmo in the bottom-left corner."""
    return px[:-80, :SCENE_COLS]


def image_correlation(a: np.ndarray, b: np.ndarray, block: int = 10) -> float:
    """Pearson correlation of the block-averaged grey levels of two screenshots' scene regions."""
    def grey_blocks(px: np.ndarray) -> np.ndarray:
        g = scene_region(px).astype(np.float64).mean(-1)
        h, w = (s // block * block for s in g.shape)
        return g[:h, :w].reshape(h // block, block, w // block, block).mean((1, 3)).ravel()

    x, y = grey_blocks(a), grey_blocks(b)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


@pytest.fixture(scope="module")
def sample_out(tmp_path_factory) -> Path:
    from viewer.sample import write_sample_reconstruction

    return write_sample_reconstruction(tmp_path_factory.mktemp("viewer") / "out")


def _cameras():
    from recon.cameras import Cameras, intrinsics

    eyes = torch.tensor([[3.0, 0.5, 1.0], [-2.0, 1.0, 0.5], [0.3, -2.5, 2.0]], dtype=torch.float64)
    w2c = torch.stack([look_at_w2c(e, torch.zeros(3, dtype=torch.float64)) for e in eyes]).float()
    K = intrinsics(50.0, 50.0, 32.0, 24.0)[None].expand(3, 3, 3).clone()
    return Cameras(K, w2c, torch.tensor([[64, 48]] * 3), ["a.png", "b.png", "c.png"])


# --------------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------------


def test_viser_pose_round_trip_gives_back_w2c_and_K():
    cams = _cameras()
    wxyz, pos = viser_pose(cams.w2c)
    fov = vertical_fov(cams)
    for i in range(len(cams)):
        back = cameras_from_viser(wxyz[i], pos[i], fov[i], 64, 48)
        assert torch.allclose(back.w2c[0], cams.w2c[i], atol=1e-5)
        assert torch.allclose(back.K[0], cams.K[i], atol=1e-4)


def test_viser_pose_follows_viser_convention():
    """viser's own SO3 of our wxyz maps the camera axes to the camera's world axes (OpenCV, c2w)."""
    import viser.transforms as vtf

    cams = _cameras()
    wxyz, pos = viser_pose(cams.w2c)
    c2w = cams.c2w.double().numpy()
    for i in range(len(cams)):
        R = vtf.SO3(wxyz[i]).as_matrix()
        np.testing.assert_allclose(R, c2w[i, :3, :3], atol=1e-6)
        np.testing.assert_allclose(pos[i], c2w[i, :3, 3], atol=1e-6)
        forward = R @ np.array([0.0, 0.0, 1.0])  # looks at the origin (look_at_w2c target)
        np.testing.assert_allclose(forward, -pos[i] / np.linalg.norm(pos[i]), atol=1e-6)


def test_splat_arrays_covariance_colour_opacity():
    # One Gaussian with scales (1, 2, 3) rotated 90 degrees about z: x and y variances swap.
    q = torch.tensor([[np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)]], dtype=torch.float32)
    g = Gaussians(
        means=torch.tensor([[1.0, 2.0, 3.0]]), quats=q * 2.0,  # unnormalised on purpose
        log_scales=torch.log(torch.tensor([[1.0, 2.0, 3.0]])), opacity_logits=torch.tensor([0.0]),
        sh0=torch.tensor([[[0.5, -0.5, 10.0]]]), shN=torch.zeros(1, 3, 3),
    )
    a = splat_arrays(g)
    np.testing.assert_allclose(a["covariances"][0], np.diag([4.0, 1.0, 9.0]), atol=1e-5)
    np.testing.assert_allclose(a["rgbs"][0], [0.5 * SH_C0 + 0.5, -0.5 * SH_C0 + 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(a["opacities"], [[0.5]])
    np.testing.assert_allclose(a["centers"], [[1.0, 2.0, 3.0]])


def test_render_view_from_a_training_camera_equals_the_training_render(sample_out):
    """The server-side view render (browser camera -> recon camera) reproduces recon's own render."""
    from recon.gaussians.ply import load_ply
    from recon.io import load_cameras_json
    from recon.render.gaussians import render_images

    g = load_ply(sample_out / "point_cloud.ply")
    cams, _ = load_cameras_json(sample_out / "cameras.json")
    wxyz, pos = viser_pose(cams.w2c)
    fov = vertical_fov(cams)
    W, H = (int(v) for v in cams.sizes[1])
    img = render_view(g, wxyz[1], pos[1], fov[1], W / H, max_side=W)
    with torch.no_grad():
        ref = render_images(g, cams.subset([1]), background=(0.0, 0.0, 0.0))[0]
    ref8 = (ref.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    assert img.shape == ref8.shape == (H, W, 3)
    assert np.abs(img.astype(int) - ref8.astype(int)).max() <= 1
    assert ref8.std() > 10  # the view is not empty


def test_metrics_markdown_lists_quality_and_poses():
    md = metrics_markdown({
        "train": {"psnr": 27.346, "ssim": 0.9123}, "test": {"psnr": 21.0, "ssim": None},
        "num_gaussians": 12345, "views": {"total": 5, "registered": 4},
        "poses": {"optimised": {"rre_deg": 1.5, "ate_frac": 0.0123}}, "seconds": 61.2,
    })
    assert "27.35 dB / 0.912" in md
    assert "21.00 dB / n/a" in md
    assert "12,345" in md and "4 of 5" in md and "1.50° / 0.012" in md and "61 s" in md


# --------------------------------------------------------------------------------------------------
# Server: host and port
# --------------------------------------------------------------------------------------------------


def test_taken_port_is_replaced_and_reported():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        free = resolve_port("127.0.0.1", taken)
        assert free != taken
        with socket.socket() as s:  # really free
            s.bind(("127.0.0.1", free))
        lines: list[str] = []
        vs = start_server("127.0.0.1", taken, log=lines.append)
        try:
            assert vs.port != taken and vs.host == "127.0.0.1"
            assert vs.url == f"http://127.0.0.1:{vs.port}"
            assert any(f"port {taken} is taken" in line and str(vs.port) in line for line in lines)
            assert any(vs.url in line for line in lines)
        finally:
            vs.stop()


def test_bad_host_and_port_are_user_errors():
    with pytest.raises(ReconError, match="host"):
        resolve_port("203.0.113.7", 8080)  # TEST-NET-3: not an address of this machine
    with pytest.raises(ReconError, match="port"):
        resolve_port("127.0.0.1", 70000)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def test_load_results_of_an_output_folder(sample_out):
    from PIL import Image

    from viewer.app import load_results

    r = load_results(sample_out)
    assert len(r.gaussians) > 100 and r.cameras is not None and r.initial_cameras is not None
    assert r.cameras.names == r.initial_cameras.names
    assert not torch.allclose(r.cameras.w2c, r.initial_cameras.w2c)  # two different pose sets
    assert set(r.thumbnails) == set(r.cameras.names)
    # A thumbnail is the right (input image) half of the side-by-side render PNG.
    name = r.cameras.names[0]
    png = sample_out / "renders" / "train" / (Path(name).stem + ".png")
    full = np.asarray(Image.open(png).convert("RGB"))
    gt = full[:, full.shape[1] // 2 :]
    assert r.thumbnails[name].shape == gt.shape
    assert np.array_equal(r.thumbnails[name], gt)  # 64 px wide: below the thumbnail size, kept as is
    pts, cols = r.prior_points
    assert pts.shape[1] == 3 and cols.dtype == np.uint8 and 1000 < len(pts) <= 100_000
    assert r.metrics["num_gaussians"] == len(r.gaussians)
    vertices, faces, colors = r.mesh
    assert len(faces) > 1000 and colors.shape == vertices.shape and colors.dtype == np.uint8


def test_load_results_of_a_foreign_3dgs_ply(tmp_path):
    """A PLY as the original 3DGS code writes it (SH degree 1 here), with no cameras around it."""
    from plyfile import PlyData, PlyElement

    from viewer.app import load_results

    n = 50
    rng = np.random.default_rng(0)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2",
             *[f"f_rest_{i}" for i in range(9)],
             "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    v = np.empty(n, dtype=[(k, "<f4") for k in names])
    for k in names:
        v[k] = rng.normal(size=n)
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "scene.ply"))
    r = load_results(tmp_path / "scene.ply")
    assert len(r.gaussians) == n and r.gaussians.sh_degree == 1
    assert r.cameras is None and r.prior_points is None
    np.testing.assert_allclose(r.gaussians.means[:, 0].numpy(), v["x"])


def test_invalid_targets_are_one_line_user_errors(tmp_path):
    from recon.cli import main
    from viewer.app import load_results

    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.ply").write_text("not a ply at all")
    cases = {
        tmp_path / "missing": "does not exist",
        tmp_path / "empty": "no point_cloud.ply",
        tmp_path / "notes.txt": "not a .ply file",
        tmp_path / "fake.ply": "PLY",
    }
    for path, message in cases.items():
        with pytest.raises(ReconError, match=re.escape(message)):
            load_results(path)
    assert main(["view", str(tmp_path / "empty"), "--port", "0"]) == 2


# --------------------------------------------------------------------------------------------------
# In a real browser
# --------------------------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="chromium is not installed (apt-get install chromium)"
)


@needs_chromium
def test_recon_view_shows_the_scene_in_chromium(sample_out, tmp_path):
    """`recon view OUT` serves a page that connects and draws the scene; Ctrl-C stops it cleanly."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recon.cli", "view", str(sample_out), "--port", "0"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    log = ProcessLines(proc)
    lines = log.lines
    try:
        m = log.wait(r"recon: viewer at (http://127\.0\.0\.1:\d+)", timeout=120)
        assert m, f"no URL printed: {lines}"
        url = m.group(1)
        with HeadlessBrowser(*WINDOW) as browser:
            browser.navigate(url)
            assert log.wait(r"browser connected", timeout=60), f"server saw no client: {lines}"
            ok, px = browser.pixels_until(
                lambda p: foreground_fraction(scene_region(p), CANVAS_RGB) > 0.10, timeout=60
            )
            frac = foreground_fraction(scene_region(px), CANVAS_RGB)
            from PIL import Image

            Image.fromarray(px).save(tmp_path / "view.png")
            assert ok, f"the 3D canvas stayed blank: {frac:.3f} of the scene area is not background"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        log.thread.join(timeout=5)
        assert any("viewer stopped" in line for line in lines)
        assert not any("Traceback" in line for line in lines), "\n".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _rot(wxyz: np.ndarray) -> np.ndarray:
    import viser.transforms as vtf

    return vtf.SO3(np.asarray(wxyz, np.float64)).as_matrix()


def _screen_point(camera, X: np.ndarray) -> tuple[float, float]:
    """Page coordinates (CSS pixels) of world point X in a browser camera (viser: OpenCV axes, vertical fov,
    centred principal point; the canvas fills the page)."""
    x = _rot(camera.wxyz).T @ (X - camera.position)
    f = 0.5 * camera.image_height / np.tan(0.5 * camera.fov)
    u, v = f * x[0] / x[2] + 0.5 * camera.image_width, f * x[1] / x[2] + 0.5 * camera.image_height
    return float(u), float(v)


@needs_chromium
def test_viewer_controls_in_chromium(sample_out):
    """In a browser: Gaussians alone fill the view and hiding them empties it (the blank check can fail);
    the mesh toggle shows and hides the folder's mesh; clicking a camera's frustum puts the browser's
    camera at that camera's pose; from there recon's own render (server side) and the browser's splats
    show the same image, so the browser-camera -> recon camera conversion (pose, field of view, aspect)
    is right."""
    from viewer.app import open_results
    from viewer.scene import RENDER_BROWSER, RENDER_RECON

    app = open_results(sample_out, port=0, log=None)
    scene = app.scene
    try:
        with HeadlessBrowser(*WINDOW) as browser:
            browser.navigate(app.vs.url)
            deadline = time.monotonic() + 60
            while app.vs.num_clients() == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            clients = list(app.vs.server.get_clients().values())
            assert clients, "the page did not connect"
            scene.show_optimised.value = False

            def frac(p):
                return foreground_fraction(scene_region(p), CANVAS_RGB)

            ok, px = browser.pixels_until(lambda p: frac(p) > 0.10, timeout=60)
            assert ok, f"Gaussians alone cover only {frac(px):.3f} of the view"
            scene.show_gaussians.value = False
            ok, px = browser.pixels_until(lambda p: frac(p) < 0.01, timeout=30)
            assert ok, f"with everything hidden {frac(px):.3f} of the view is still drawn"
            # The mesh toggle beside the Gaussians: the folder's mesh.ply alone draws, and hides again.
            assert not scene.show_mesh.disabled and not scene.show_mesh.value
            scene.show_mesh.value = True
            ok, px = browser.pixels_until(lambda p: frac(p) > 0.05, timeout=60)
            assert ok, f"the mesh alone covers only {frac(px):.3f} of the view"
            scene.show_mesh.value = False
            ok, px = browser.pixels_until(lambda p: frac(p) < 0.01, timeout=30)
            assert ok, f"with the mesh hidden again {frac(px):.3f} of the view is still drawn"
            scene.show_gaussians.value = True

            # Click camera 2's frustum (its image plane): the browser's view moves to that camera, and
            # the browser reports its new camera back.
            client = clients[0]
            scene.show_optimised.value = True
            time.sleep(1.0)
            wxyz, pos = viser_pose(app.results.cameras.w2c[2:3])
            image_plane = pos[0] + _rot(wxyz[0])[:, 2] * 0.9 * scene.frame.frustum_scale
            u, v = _screen_point(client.camera, image_plane)
            for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
                browser.call("Input.dispatchMouseEvent", type=kind, x=u, y=v, button="left", clickCount=1)
                time.sleep(0.05)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if np.allclose(client.camera.position, pos[0], atol=1e-3):
                    break
                time.sleep(0.2)
            np.testing.assert_allclose(client.camera.position, pos[0], atol=1e-3)
            R_browser = client.camera.wxyz
            assert abs(abs(float(np.dot(R_browser, wxyz[0]))) - 1.0) < 1e-4  # same rotation (q ~ -q)
            fov = vertical_fov(app.results.cameras.subset([2]))[0]
            assert client.camera.fov == pytest.approx(fov, abs=1e-4)
            scene.show_optimised.value = False  # the comparison below is about the Gaussians

            # Through camera 2 the splats fill the view; recon's render must show the same picture.
            ok, splats = browser.pixels_until(lambda p: frac(p) > 0.5, timeout=30)
            assert ok, f"through camera 2 the splats cover only {frac(splats):.3f} of the view"
            time.sleep(1.0)
            splats = browser.pixels()
            scene.render_mode.value = RENDER_RECON
            deadline = time.monotonic() + 180  # the first render may build the native kernels
            while scene.renders == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert scene.renders >= 1
            ok, recon = browser.pixels_until(lambda p: image_correlation(p, splats) > 0.95, timeout=30)
            corr = image_correlation(recon, splats)
            assert ok, f"recon's render and the browser's splats disagree (correlation {corr:.3f})"
            # The same check fails for a view off by a few pixels: it does detect a misaligned camera.
            shifted = np.roll(recon, 30, axis=1)
            assert image_correlation(shifted, splats) < corr - 0.05
            scene.render_mode.value = RENDER_BROWSER
    finally:
        app.close()
