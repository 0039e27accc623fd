"""``recon view OUT``: the results viewer of a finished reconstruction (or of any 3DGS PLY).

Shows the Gaussians, the optimised and the prior's initial cameras as frustums with their input images,
the prior's point cloud, the exported mesh (``mesh.ply``, when there is one) and the run's metrics;
see :class:`viewer.scene.SceneViewer` for the controls.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recon.cameras import Cameras
from recon.errors import ReconError
from recon.gaussians.model import Gaussians
from viewer.scene import (
    RENDER_BROWSER,
    SceneViewer,
    metrics_markdown,
    prior_point_cloud,
    render_thumbnails,
    scene_frame,
)
from viewer.server import ViewerServer, say, start_server


@dataclass
class Results:
    """What the results viewer shows; everything but the Gaussians is optional.

    Attributes:
        source: the output folder or PLY file.
        gaussians: the Gaussians (CPU).
        cameras: the optimised cameras (``cameras.json``).
        initial_cameras: the prior's cameras, same names and order.
        metrics: ``metrics.json``.
        thumbnails: {image name: (h, w, 3) uint8} input images of the cameras.
        prior_points: the prior's point cloud ((P, 3) float32 points, (P, 3) uint8 colours).
        mesh: ``mesh.ply`` of the folder (``recon export --format mesh``): vertices (V, 3) float32, faces
            (F, 3) int64, vertex colours (V, 3) uint8 or None.
    """

    source: Path
    gaussians: Gaussians
    cameras: Cameras | None = None
    initial_cameras: Cameras | None = None
    metrics: dict = field(default_factory=dict)
    thumbnails: dict = field(default_factory=dict)
    prior_points: tuple[np.ndarray, np.ndarray] | None = None
    mesh: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None


def load_mesh_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Vertices, faces and vertex colours (or None) of a triangle mesh file (read with trimesh)."""
    import trimesh  # a dependency of viser

    mesh = trimesh.load(str(path), process=False, force="mesh")
    if len(mesh.faces) == 0:
        raise ValueError("no triangles")
    colors = None
    if mesh.visual.kind == "vertex":
        colors = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(np.uint8)
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64), colors


def load_results(target: str | Path) -> Results:
    """Read an output folder of ``recon run`` (or a 3DGS ``.ply`` made by any tool).

    Raises:
        ReconError: the path does not exist, is a folder without ``point_cloud.ply``, is a file that is not
            a 3D Gaussian PLY, or holds a malformed ``cameras.json`` / ``metrics.json``.
    """
    from recon.gaussians.ply import load_ply
    from recon.io import load_cameras_json

    target = Path(target)
    if not target.exists():
        raise ReconError(f"{target} does not exist; pass a recon output folder or a 3DGS .ply file")
    if target.is_file():
        if target.suffix.lower() != ".ply":
            raise ReconError(f"{target} is not a .ply file; pass a recon output folder or a 3DGS .ply file")
        return Results(source=target, gaussians=load_ply(target))
    ply = target / "point_cloud.ply"
    if not ply.is_file():
        raise ReconError(f"{target} has no point_cloud.ply; pass an OUT folder of `recon run` or a .ply file")
    res = Results(source=target, gaussians=load_ply(ply))
    if (target / "cameras.json").is_file():
        res.cameras, res.initial_cameras = load_cameras_json(target / "cameras.json")
        res.thumbnails = render_thumbnails(target, res.cameras.names)
    if (target / "metrics.json").is_file():
        try:
            res.metrics = json.loads((target / "metrics.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ReconError(f"{target / 'metrics.json'} is not valid JSON ({e}); fix or delete it") from None
    cache = target / "cache" / "prior.safetensors"
    if cache.is_file():
        from recon.priors.cache import load_prior

        try:
            res.prior_points = prior_point_cloud(load_prior(cache))
        except Exception as e:  # noqa: BLE001 - a broken cache only costs the point cloud
            print(f"recon: viewer: skipping the prior's point cloud ({cache}: {type(e).__name__}: {e})")
    if (target / "mesh.ply").is_file():
        try:
            res.mesh = load_mesh_arrays(target / "mesh.ply")
        except Exception as e:  # noqa: BLE001 - a broken mesh only costs the mesh
            print(f"recon: viewer: skipping {target / 'mesh.ply'} ({type(e).__name__}: {e})")
    return res


class ResultsViewer:
    """A finished reconstruction in the browser (see :func:`open_results`)."""

    def __init__(self, vs: ViewerServer, results: Results, render_mode: str = RENDER_BROWSER):
        self.vs = vs
        self.results = results
        self.scene = SceneViewer(vs, render_mode=render_mode)
        r = results
        self.scene.set_frame(scene_frame(r.gaussians.means, r.cameras), r.cameras)
        self.scene.set_gaussians(r.gaussians)
        if r.cameras is not None:
            self.scene.set_cameras("optimised", r.cameras, r.thumbnails)
        if r.initial_cameras is not None:
            self.scene.set_cameras("initial", r.initial_cameras, r.thumbnails)
        if r.prior_points is not None:
            self.scene.set_point_cloud(*r.prior_points)
        if r.mesh is not None:
            self.scene.set_mesh(*r.mesh)
        self.scene.show_optimised.disabled = r.cameras is None
        self.scene.show_initial.disabled = r.initial_cameras is None
        self.scene.show_points.disabled = r.prior_points is None

        gui = vs.server.gui
        with gui.add_folder("Run"):
            kind = "PLY file" if r.source.is_file() else "output folder"
            gui.add_markdown(f"**{r.source.name}** ({kind})  \n{len(r.gaussians):,} Gaussians, "
                             f"SH degree {r.gaussians.sh_degree}"
                             + (f", {len(r.cameras)} cameras" if r.cameras is not None else ""))
            if r.metrics:
                gui.add_markdown(metrics_markdown(r.metrics))
            if r.cameras is not None:
                names = list(r.cameras.names)
                goto = gui.add_dropdown("Look through", ["(free view)", *names], initial_value="(free view)")

                @goto.on_update
                def _(event) -> None:
                    if event.client is not None and goto.value in names:
                        self.scene.move_to_camera(event.client, "optimised", names.index(goto.value))

    def close(self) -> None:
        self.scene.close()
        self.vs.stop()


def open_results(target: str | Path, host: str = "127.0.0.1", port: int = 8080, log=say) -> ResultsViewer:
    """Load ``target`` and serve it; returns at once with the server running (``close()`` stops it)."""
    results = load_results(target)
    vs = start_server(host, port, label=f"recon: {results.source.name}", log=log)
    try:
        return ResultsViewer(vs, results)
    except BaseException:
        vs.stop()
        raise


def view(target: str | Path, host: str = "127.0.0.1", port: int = 8080) -> int:
    """``recon view``: serve ``target`` until Ctrl-C (or SIGTERM), then stop cleanly. Returns 0."""
    import signal

    stop = threading.Event()
    app = open_results(target, host, port, log=say)
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        app.close()
        say("recon: viewer stopped")
    return 0
