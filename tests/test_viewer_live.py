"""Live training viewer (`recon run --viewer`): idle cost, controls, and a real run in headless Chromium."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("viser")

from proclines import ProcessLines  # noqa: E402

from recon.cameras import Cameras, intrinsics, look_at_w2c  # noqa: E402
from recon.gaussians.model import Gaussians  # noqa: E402
from recon.optim.trainer import TrainControl, TrainState  # noqa: E402
from viewer.browser import HeadlessBrowser, find_chromium, foreground_fraction  # noqa: E402
from viewer.server import CANVAS_RGB  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WINDOW = (1000, 700)
SCENE_COLS = 620


def _state(step: int, control: TrainControl, n: int = 200) -> TrainState:
    g = torch.Generator().manual_seed(step)
    gs = Gaussians(
        means=torch.randn(n, 3, generator=g), quats=torch.randn(n, 4, generator=g),
        log_scales=torch.full((n, 3), -3.0), opacity_logits=torch.zeros(n),
        sh0=torch.randn(n, 1, 3, generator=g), shN=torch.zeros(n, 0, 3),
    )
    eyes = torch.tensor([[0.0, 0.0, -4.0], [1.0, 0.0, -4.0]], dtype=torch.float64)
    w2c = torch.stack([look_at_w2c(e, torch.zeros(3, dtype=torch.float64)) for e in eyes]).float()
    cams = Cameras(intrinsics(40.0, 40.0, 32.0, 24.0)[None].expand(2, 3, 3).clone(), w2c,
                   torch.tensor([[64, 48]] * 2), ["a.png", "b.png"])
    return TrainState(step, 1000, 0.1 / step, 10.0 + step / 100, gs, cams, control)


def test_idle_live_viewer_does_no_work_and_controls_reach_the_trainer():
    from viewer.live import LiveViewer

    viewer = LiveViewer(port=0, log=None)
    try:
        # A pause asked for before training starts is applied once the trainer's control is known.
        viewer.toggle_pause()
        assert viewer.paused and viewer.control is None
        control = TrainControl()
        states = [_state(step, control) for step in range(10, 1010, 10)]
        t0 = time.perf_counter()
        for state in states:
            viewer.callback(state)
        per_call = (time.perf_counter() - t0) / len(states)
        assert viewer.control is control and control.pause.is_set()
        time.sleep(1.5)  # give the viewer thread time to (not) act
        # Nobody is connected: nothing was sent or rendered.
        assert viewer.pushes == 0 and viewer.pushed_step is None and viewer.scene.renders == 0
        assert viewer._steps[-1] == 1000.0 and len(viewer._steps) == 100
        assert per_call < 0.05, f"{per_call * 1e3:.1f} ms per callback"
        viewer.toggle_pause()
        assert not control.pause.is_set() and not viewer.paused
        viewer.toggle_pause()
        viewer.stop()  # stop also releases a pause, so the trainer can exit
        assert control.stop.is_set() and not control.pause.is_set()
        assert viewer._stop_btn.disabled and viewer._pause_btn.disabled
    finally:
        viewer.close()


def test_stop_from_the_viewer_ends_training_early():
    """The real trainer honours the viewer's stop button (pressed here from the callback thread)."""
    from recon.optim.trainer import TrainConfig, train
    from viewer.live import LiveViewer
    from viewer.sample import sample_scene

    scene = sample_scene(n_views=2, width=32, height=24)
    prior = scene.prior_result(stride=2)
    from recon.gaussians.init import init_from_prior

    gaussians, _ = init_from_prior(prior)
    viewer = LiveViewer(port=0, log=None)
    seen: list[int] = []

    def callback(state: TrainState) -> None:
        viewer.callback(state)
        seen.append(state.step)
        if state.step == 20:
            viewer.stop()

    try:
        cfg = TrainConfig(iters=500, callback_every=10, sh_degree=0)
        result = train(gaussians, scene.views.cameras, scene.views.images, cfg, callback=callback,
                       progress=False)
    finally:
        viewer.close()
    # The trainer checks the stop request before each step: it ends at step 20 and reports it once more.
    assert result.stopped and result.steps == 20
    assert seen == [10, 20, 20]


# --------------------------------------------------------------------------------------------------
# A real `recon run --viewer` in headless Chromium
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_recon_run_viewer_in_chromium(tmp_path):
    """During `recon run --viewer` the page connects, shows the scene rendered by recon's rasteriser,
    plots the loss and stops the run from its "Stop and save" button; the run then writes its outputs."""
    from viewer.sample import write_sample_dataset

    data = write_sample_dataset(tmp_path / "data")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recon.cli", "run", str(data), "--out", str(out), "--poses", "dataset",
         "--iters", "100000", "--viewer", "--port", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    log = ProcessLines(proc)
    lines = log.lines
    try:
        m = log.wait(r"recon: viewer at (http://127\.0\.0\.1:\d+)", timeout=120)
        assert m, f"no URL printed: {lines}"
        with HeadlessBrowser(*WINDOW) as browser:
            browser.navigate(m.group(1))
            assert log.wait(r"browser connected", timeout=60), f"server saw no client: {lines}"
            # Training has started once the status line shows a step (the prior runs first).
            assert browser.wait_for("document.body.innerText.includes('Step ')", timeout=240), lines

            def scene_drawn(p: np.ndarray) -> bool:
                # The recon render covers the canvas with the scene on black, within the tolerance of the
                # dark canvas colour: only scene pixels count.
                return foreground_fraction(p[:-80, :SCENE_COLS], CANVAS_RGB) > 0.10

            ok, px = browser.pixels_until(scene_drawn, timeout=120)
            from PIL import Image

            Image.fromarray(px).save(tmp_path / "live.png")
            assert ok, "the live view stayed blank"
            # The loss/PSNR plot (a uPlot chart) appears once two points are in.
            assert browser.wait_for("document.querySelector('.uplot canvas') !== null", timeout=60)
            assert browser.click_button("Stop and save")
            assert proc.wait(timeout=300) == 0, "\n".join(lines)
        log.thread.join(timeout=5)
        assert (out / "point_cloud.ply").is_file() and (out / "cameras.json").is_file()
        assert not any("Traceback" in line for line in lines), "\n".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
