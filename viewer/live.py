"""``recon run ... --viewer``: the scene in the browser while it trains.

The trainer calls :meth:`LiveViewer.callback` every ``callback_every`` steps with a detached snapshot
(:class:`recon.optim.trainer.TrainState`). The callback only keeps a reference to the newest snapshot and
appends three numbers to the loss/PSNR history, so training is not slowed; everything else happens in the
viewer's own threads, and only while a browser is connected:

- every ``update_every`` steps the Gaussians (viser splats) and the camera frustums are sent to the
  browsers (and at the first snapshot, and when training ends);
- at most once a second the loss/PSNR plot and the status line are refreshed;
- with "Render with: recon rasteriser" (the default here) each browser's view is rendered by recon's own
  rasteriser from the newest snapshot, so what is shown is exactly what is being optimised
  (:class:`viewer.scene.SceneViewer`, at most ``max_fps`` frames a second per browser).

Pause/Resume and "Stop and save" set the trainer's :class:`~recon.optim.trainer.TrainControl` events; a
stopped run returns what it has, and the pipeline writes its outputs as usual.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from recon.optim.trainer import TrainControl, TrainState
from viewer.scene import RENDER_RECON, SceneViewer, scene_frame
from viewer.server import say, start_server

PLOT_PERIOD_S = 1.0


class LiveViewer:
    """A browser view of a running optimisation (see the module docstring).

    Args:
        port: port to serve on (a free one is picked when it is taken).
        host: address to listen on (127.0.0.1: this machine only).
        update_every: send the Gaussians and cameras to the browser every this many steps.
        render_mode: initial "Render with" choice (recon's rasteriser, or the browser's splats).
        max_fps: server-side renders a second per browser at most.
        log: where status lines go (None: silent).
    """

    def __init__(
        self,
        port: int = 8080,
        host: str = "127.0.0.1",
        update_every: int = 200,
        render_mode: str = RENDER_RECON,
        max_fps: float = 2.0,
        log=say,
    ):
        self.update_every = max(1, int(update_every))
        self.vs = start_server(host, port, label="recon: training", log=log)
        self.url, self.port = self.vs.url, self.vs.port
        self.scene = SceneViewer(self.vs, render_mode=render_mode, max_fps=max_fps,
                                 initial_hint="Poses at the first update")
        self._lock = threading.Lock()
        self._latest: TrainState | None = None
        self._control: TrainControl | None = None
        self._want_pause = False
        self._want_stop = False
        self._steps: list[float] = []
        self._loss: list[float] = []
        self._psnr: list[float] = []
        self._new = threading.Event()
        self._closed = False
        self.pushed_step: int | None = None
        """Step of the Gaussians last sent to the browsers (None: nothing sent yet)."""
        self.pushes = 0
        """How many times Gaussians were sent (for tests and benchmarks: stays 0 without a browser)."""

        gui = self.vs.server.gui
        with gui.add_folder("Training", order=-1) as self._folder:
            self._status = gui.add_markdown("Waiting for the first training step...", order=0)
            self._pause_btn = gui.add_button("Pause", icon="player-pause", order=2,
                                             hint="Pause/resume the optimisation")
            self._stop_btn = gui.add_button("Stop and save", icon="player-stop", color="red", order=3,
                                            hint="End training now; the run writes its outputs as usual")
        self._plot = None  # made once there are two points (viser's uPlot does not recover from no data)
        self._pause_btn.on_click(lambda _: self.toggle_pause())
        self._stop_btn.on_click(lambda _: self.stop())

        self._thread = threading.Thread(target=self._loop, name="recon-live-viewer", daemon=True)
        self._thread.start()

    # -- the trainer's side: cheap -------------------------------------------------------------------

    def callback(self, state: TrainState) -> None:
        """Called by the trainer in its own thread: keep the snapshot, record loss/PSNR, nothing else."""
        with self._lock:
            self._latest = state
            self._steps.append(float(state.step))
            self._loss.append(float(state.loss))
            self._psnr.append(float(state.psnr))
            if self._control is None:
                self._control = state.control
                if self._want_pause:
                    state.control.pause.set()
                if self._want_stop:
                    state.control.stop.set()
        self._new.set()

    # -- controls ------------------------------------------------------------------------------------

    @property
    def control(self) -> TrainControl | None:
        """The trainer's control (None until the first snapshot arrives)."""
        return self._control

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._control.pause.is_set() if self._control is not None else self._want_pause

    def toggle_pause(self) -> None:
        """Pause a running optimisation, or resume a paused one (applied at the next step)."""
        with self._lock:
            self._want_pause = not (self._control.pause.is_set() if self._control else self._want_pause)
            if self._control is not None:
                (self._control.pause.set if self._want_pause else self._control.pause.clear)()
        self._pause_btn.label = "Resume" if self._want_pause else "Pause"
        self._pause_btn.icon = "player-play" if self._want_pause else "player-pause"
        self._new.set()

    def stop(self) -> None:
        """Ask the trainer to end after its current step; the run then saves its outputs."""
        with self._lock:
            self._want_stop = True
            if self._control is not None:
                self._control.stop.set()
                self._control.pause.clear()
        self._pause_btn.disabled = True
        self._stop_btn.disabled = True
        self._new.set()

    # -- the viewer's side ---------------------------------------------------------------------------

    def _loop(self) -> None:
        last_plot = 0.0
        plotted = -1
        while not self._closed:
            self._new.wait(timeout=0.5)
            self._new.clear()
            if self._closed:
                return
            if not self.vs.server.get_clients():
                continue  # nobody is watching: do nothing at all
            with self._lock:
                state = self._latest
            if state is None:
                continue
            try:
                done = state.step >= state.iters or self._want_stop
                if self.pushed_step is None or state.step - self.pushed_step >= self.update_every or (
                    done and state.step != self.pushed_step
                ):
                    self._push(state)
                self.scene.set_render_gaussians(state.gaussians)
                now = time.monotonic()
                if now - last_plot >= PLOT_PERIOD_S or done:
                    if len(self._steps) != plotted:
                        plotted = self._update_plot()
                    self._update_status(state)
                    last_plot = now
            except Exception as e:  # noqa: BLE001 - the viewer must never take training down
                say(f"recon: viewer: update failed: {type(e).__name__}: {e}")
                time.sleep(1.0)

    def _push(self, state: TrainState) -> None:
        first = self.pushed_step is None
        if first:
            self.scene.set_frame(scene_frame(state.gaussians.means, state.cameras), state.cameras)
        self.scene.set_gaussians(state.gaussians)
        if first:
            self.scene.set_cameras("initial", state.cameras)
        self.scene.set_cameras("optimised", state.cameras)
        self.pushed_step = state.step
        self.pushes += 1

    def _update_plot(self) -> int:
        with self._lock:
            data = (np.array(self._steps), np.array(self._loss), np.array(self._psnr))
        if len(data[0]) < 2:
            return 0
        if self._plot is not None:
            self._plot.data = data
            return len(data[0])
        with self._folder:
            self._plot = self.vs.server.gui.add_uplot(
                data=data,
                series=(
                    {"label": "step"},
                    {"label": "loss", "stroke": "#e6501e", "width": 2, "scale": "loss"},
                    {"label": "PSNR (dB)", "stroke": "#3c6ee6", "width": 2, "scale": "psnr"},
                ),
                scales={"x": {"time": False, "auto": True}, "loss": {"auto": True}, "psnr": {"auto": True}},
                # Each y axis in its series' colour (loss left, PSNR right); light strokes for the dark theme.
                axes=(
                    {"scale": "x", "stroke": "#aaa", "grid": {"stroke": "#333"}},
                    {"scale": "loss", "stroke": "#e6501e", "grid": {"stroke": "#333"}},
                    {"scale": "psnr", "side": 1, "stroke": "#3c6ee6", "grid": {"show": False}},
                ),
                aspect=1.6,
                order=1,
            )
        return len(data[0])

    def _update_status(self, state: TrainState) -> None:
        if self._want_stop:
            what = "stopping: the run writes its outputs"
        elif state.step >= state.iters:
            what = "finished: the run writes its outputs"
        elif self.paused:
            what = "paused"
        else:
            what = "training"
        self._status.content = (
            f"**Step {state.step} / {state.iters}** ({what})  \n"
            f"loss {state.loss:.4f}, PSNR {state.psnr:.2f} dB, {len(state.gaussians):,} Gaussians  \n"
            f"Gaussians and cameras as of step {self.pushed_step}"
        )

    def close(self) -> None:
        """Stop the viewer threads and the server (the CLI calls it when the run ends)."""
        self._closed = True
        self._new.set()
        self._thread.join(timeout=5.0)
        self.scene.close()
        self.vs.stop()
