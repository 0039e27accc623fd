"""What the results viewer and the live viewer share: conversions between recon's data and viser's, and
:class:`SceneViewer`, the scene (Gaussians, cameras, point cloud), its GUI toggles and the server-side
render of each browser's view.

Frames. recon cameras are OpenCV w2c (CONVENTIONS). viser uses OpenCV camera axes too (+z forward,
+x right, +y down) but poses scene nodes and browser cameras by their camera-to-world transform:
``wxyz`` is the rotation R_world_camera (a quaternion, w first) and ``position`` the camera centre; a
browser camera's ``fov`` is vertical, in radians, with square pixels and a centred principal point.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon.cameras import (
    Cameras,
    focal_to_fov,
    fov_to_focal,
    intrinsics,
    invert_rigid,
    make_rigid,
    quat_to_rotmat,
    rotmat_to_quat,
)
from recon.gaussians.model import Gaussians, sh0_to_rgb
from recon.priors.base import PriorResult

RENDER_BROWSER = "Browser splats"
RENDER_RECON = "recon rasteriser"
OPTIMISED_COLOR = (230, 80, 30)
INITIAL_COLOR = (60, 110, 230)
POINT_CLOUD_MAX = 100_000


# --------------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------------


def viser_pose(w2c: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """viser node poses of cameras: (wxyz (N, 4), position (N, 3)) float64 from w2c (N, 4, 4)."""
    c2w = invert_rigid(w2c.detach().double().cpu().reshape(-1, 4, 4))
    return rotmat_to_quat(c2w[:, :3, :3]).numpy(), c2w[:, :3, 3].numpy()


def cameras_from_viser(
    wxyz: np.ndarray, position: np.ndarray, fov_y: float, width: int, height: int, name: str = "view"
) -> Cameras:
    """One recon camera (w2c, K for ``width`` x ``height``) for a viser/browser camera pose and vertical
    field of view (square pixels, centred principal point)."""
    R = quat_to_rotmat(torch.as_tensor(np.asarray(wxyz, np.float64)).reshape(4))
    c2w = make_rigid(R, torch.as_tensor(np.asarray(position, np.float64)).reshape(3))
    f = fov_to_focal(float(fov_y), float(height))
    K = intrinsics(f, f, width / 2.0, height / 2.0, dtype=torch.float64)
    return Cameras(
        K[None].float(), invert_rigid(c2w)[None].float(), torch.tensor([[int(width), int(height)]]), [name]
    )


def vertical_fov(cameras: Cameras) -> np.ndarray:
    """(N,) vertical field of view in radians of each camera (from fy and the image height)."""
    fy, height = cameras.K[:, 1, 1].tolist(), cameras.sizes[:, 1].tolist()
    return np.array([focal_to_fov(f, h) for f, h in zip(fy, height, strict=True)])


def splat_arrays(g: Gaussians) -> dict[str, np.ndarray]:
    """viser's ``add_gaussian_splats`` arguments for Gaussians ``g``.

    Returns float32 ``centers`` (N, 3), ``covariances`` (N, 3, 3) = R diag(s^2) R^T, ``rgbs`` (N, 3) in
    [0, 1] and ``opacities`` (N, 1). Colours are the view-independent DC term (viser's splats have no
    SH); the recon rasteriser view shows the full SH colours.
    """
    with torch.no_grad():
        g = g.to("cpu")
        R = quat_to_rotmat(g.quats.float())
        s2 = torch.exp(2.0 * g.log_scales.float())
        cov = (R * s2[:, None, :]) @ R.transpose(1, 2)
        rgb = sh0_to_rgb(g.sh0[:, 0].float()).clamp(0.0, 1.0)
        return {
            "centers": g.means.float().contiguous().numpy(),
            "covariances": cov.contiguous().numpy(),
            "rgbs": rgb.numpy(),
            "opacities": torch.sigmoid(g.opacity_logits.float())[:, None].numpy(),
        }


@dataclass
class SceneFrame:
    """Where the content is, for placing the initial view and sizing cameras and points.

    Attributes:
        center: (3,) median of the Gaussian centres.
        radius: 80th percentile distance of the centres from ``center`` (robust to floaters).
        up: (3,) unit world up: opposite the mean camera y axis (OpenCV y points down in the image), or
            -y without cameras (the convention of COLMAP-posed 3DGS scenes).
        camera_distance: median distance of the cameras from ``center`` (0 without cameras).
        camera_spacing: median distance from each camera to its nearest other camera (0 with fewer than 2).
    """

    center: np.ndarray
    radius: float
    up: np.ndarray
    camera_distance: float
    camera_spacing: float = 0.0

    @property
    def frustum_scale(self) -> float:
        """Frustum depth in world units: a tenth of the viewing distance, and at most 40% of the typical
        spacing of neighbouring cameras so that frustums do not overlap."""
        scale = 0.1 * (self.camera_distance if self.camera_distance > 0 else 2.0 * self.radius)
        if self.camera_spacing > 0:
            scale = min(scale, 0.4 * self.camera_spacing)
        return scale

    def initial_view(self, cameras: Cameras | None) -> tuple[np.ndarray, np.ndarray]:
        """(position, look_at) of the first browser view: behind and above the cameras' mean centre,
        looking at the content, so both the scene and the camera frustums are in view."""
        if cameras is not None and len(cameras) and self.camera_distance > 0:
            mean_c = cameras.centers.double().mean(0).numpy()
            away = mean_c - self.center
            dist = float(np.linalg.norm(away))
            if dist < 1e-9:  # cameras around the content (an orbit): step back along the first camera
                dist = self.camera_distance
                away = -cameras.c2w[0, :3, 2].double().numpy() * dist
            position = self.center + away * 1.6 + self.up * 0.35 * dist
        else:
            back = np.cross(self.up, [1.0, 0.0, 0.0])
            back = back if np.linalg.norm(back) > 1e-6 else np.cross(self.up, [0.0, 1.0, 0.0])
            back = back / np.linalg.norm(back)
            position = self.center + 2.5 * self.radius * (back + 0.4 * self.up)
        return position, self.center.copy()


def scene_frame(means: torch.Tensor, cameras: Cameras | None = None) -> SceneFrame:
    """A :class:`SceneFrame` from Gaussian centres (N, 3) and, when known, the cameras."""
    pts = means.detach().double().cpu()
    pts = pts[torch.isfinite(pts).all(-1)]
    if len(pts) == 0:
        pts = cameras.centers.double() if cameras is not None and len(cameras) else torch.zeros(1, 3)
    center = pts.median(0).values
    radius = float(torch.quantile((pts - center).norm(dim=-1)[:100_000], 0.8)) if len(pts) > 1 else 1.0
    up = np.array([0.0, -1.0, 0.0])
    cam_dist = spacing = 0.0
    if cameras is not None and len(cameras):
        y_down = cameras.c2w[:, :3, 1].double().mean(0)
        if float(y_down.norm()) > 1e-3:
            up = (-y_down / y_down.norm()).numpy()
        c = cameras.centers.double()
        cam_dist = float((c - center).norm(dim=-1).median())
        if len(c) > 1:
            d = torch.cdist(c, c) + torch.diag(torch.full((len(c),), float("inf"), dtype=c.dtype))
            spacing = float(d.min(dim=1).values.median())
    return SceneFrame(center.numpy(), radius if radius > 0 else 1.0, up, cam_dist, spacing)


def prior_point_cloud(
    prior: PriorResult, max_points: int = POINT_CLOUD_MAX, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The prior's point maps as one coloured cloud: (points (P, 3) float32, colours (P, 3) uint8).

    Pixels with conf <= 0 or non-finite points are dropped; above ``max_points`` a seeded uniform subset
    is kept (the browser stays responsive).
    """
    pts = prior.pointmaps.detach().float().cpu().reshape(-1, 3)
    cols = prior.colors.detach().float().cpu().reshape(-1, 3)
    conf = prior.conf.detach().float().cpu().reshape(-1)
    keep = torch.isfinite(pts).all(-1) & (conf > 0)
    idx = torch.nonzero(keep).squeeze(1)
    if len(idx) > max_points:
        sel = torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:max_points]
        idx = idx[sel.sort().values]
    rgb8 = (cols[idx].clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return pts[idx].numpy(), rgb8.numpy()


def fit_thumbnail(image: np.ndarray, max_side: int = 160) -> np.ndarray:
    """(h, w, 3) uint8 copy of an image with its long side at most ``max_side`` (area resampling)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image))
    scale = max_side / max(img.size)
    if scale < 1.0:
        size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        img = img.resize(size, Image.Resampling.BOX)
    return np.asarray(img.convert("RGB"))


def render_thumbnails(out: Path, names: list[str], split: str = "train", max_side: int = 160) -> dict:
    """Input images of views ``names`` from ``OUT/renders/<split>/<stem>.png`` (render | ground truth side
    by side, so the right half), as thumbnails: {name: (h, w, 3) uint8}. Missing files are skipped."""
    from PIL import Image

    thumbs = {}
    for name in names:
        path = Path(out) / "renders" / split / (Path(name).stem + ".png")
        if not path.is_file():
            continue
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError:
            continue
        thumbs[name] = fit_thumbnail(arr[:, arr.shape[1] // 2 :], max_side)
    return thumbs


def _fmt(value, spec: str = ".2f", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:{spec}}{unit}"


def metrics_markdown(metrics: dict) -> str:
    """A short Markdown table of a run's ``metrics.json``: quality, size, poses, time."""
    rows: list[tuple[str, str]] = []
    for split, label in (("train", "Train"), ("test", "Held-out")):
        if split in metrics:
            m = metrics[split]
            rows.append((f"{label} PSNR / SSIM", f"{_fmt(m.get('psnr'), '.2f', ' dB')} / "
                                                 f"{_fmt(m.get('ssim'), '.3f')}"))
    if "num_gaussians" in metrics:
        rows.append(("Gaussians", f"{int(metrics['num_gaussians']):,}"))
    views = metrics.get("views")
    if isinstance(views, dict) and "total" in views:
        rows.append(("Views placed", f"{views.get('registered', '?')} of {views['total']}"))
    poses = metrics.get("poses")
    if isinstance(poses, dict):
        for key, label in (("prior", "prior"), ("optimised", "optimised")):
            p = poses.get(key)
            if isinstance(p, dict):
                rows.append((f"Poses ({label}) RRE / ATE",
                             f"{_fmt(p.get('rre_deg'), '.2f', '°')} / {_fmt(p.get('ate_frac'), '.3f')}"))
    if "seconds" in metrics:
        rows.append(("Time", _fmt(float(metrics["seconds"]), ".0f", " s")))
    if not rows:
        return "No metrics."
    return "\n".join(["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]])


# --------------------------------------------------------------------------------------------------
# The scene in the browser
# --------------------------------------------------------------------------------------------------


def render_view(
    gaussians: Gaussians,
    wxyz: np.ndarray,
    position: np.ndarray,
    fov_y: float,
    aspect: float,
    max_side: int,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Render ``gaussians`` with recon's rasteriser from a browser camera: (H, W, 3) uint8, long side
    ``max_side``, the browser canvas's aspect (width / height)."""
    from recon.render import render_gaussians

    aspect = aspect if math.isfinite(aspect) and aspect > 0 else 1.0
    W = max_side if aspect >= 1 else max(8, round(max_side * aspect))
    H = max(8, round(max_side / aspect)) if aspect >= 1 else max_side
    cam = cameras_from_viser(wxyz, position, fov_y, W, H)
    dev = gaussians.means.device
    bg = torch.tensor(background, dtype=torch.float32, device=dev)
    with torch.no_grad():
        rgb = render_gaussians(gaussians, cam.to(dev), background=bg).rgb[0, ..., :3]
    return (rgb.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


@dataclass
class _ClientRenderState:
    camera_stamp: float = -1.0
    generation: int = -1
    last_time: float = 0.0


class SceneViewer:
    """The 3D scene of a reconstruction in a viser server, with its GUI controls.

    Nodes: ``/gaussians`` (viser splats), ``/cameras/optimised/<i>`` and ``/cameras/initial/<i>``
    (frustums, clickable: a click moves that browser's view to the camera), ``/prior_points``, ``/mesh``
    (an exported mesh, off until asked for).
    The GUI ("View" folder) toggles each of them and picks how the Gaussians are drawn: by the browser
    (viser's splats, interactive, DC colour only) or by recon's own rasteriser on the server (what is
    optimised, full SH), rendered for each connected browser only when its camera moved (at most
    ``max_fps`` frames a second) or the Gaussians changed (at most every ``refresh_s`` seconds, so that a
    browser left open on a training run costs it little). Nothing is rendered while no browser is
    connected.
    """

    def __init__(
        self,
        vs,
        render_mode: str = RENDER_BROWSER,
        max_side: int = 384,
        max_fps: float = 4.0,
        refresh_s: float = 2.0,
        initial_hint: str = "The prior's poses",
    ):
        self.vs = vs
        self.server = vs.server
        self.max_fps = max_fps
        self.refresh_s = refresh_s
        self._gaussians: Gaussians | None = None
        self._generation = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._splats = None
        self._points = None
        self._mesh = None
        self._frustums: dict[str, list] = {"optimised": [], "initial": []}
        self._cameras: dict[str, Cameras | None] = {"optimised": None, "initial": None}
        self._clients: dict[int, _ClientRenderState] = {}
        self.frame: SceneFrame | None = None
        self.renders = 0
        """Server-side renders made so far (for tests and benchmarks)."""

        gui = self.server.gui
        with gui.add_folder("View"):
            self.render_mode = gui.add_dropdown("Render with", (RENDER_BROWSER, RENDER_RECON),
                                                initial_value=render_mode,
                                                hint="Browser: viser's splats (DC colour). recon: the "
                                                     "project's rasteriser on the server (full SH).")
            self.render_size = gui.add_slider("Render size (px)", 128, 1024, 32, max_side,
                                              hint="Long side of the server-side render")
            self.show_gaussians = gui.add_checkbox("Gaussians", True)
            self.show_optimised = gui.add_checkbox("Optimised cameras", True,
                                                   hint="Final poses (orange); click one to look through it")
            self.show_initial = gui.add_checkbox("Initial cameras", False, hint=f"{initial_hint} (blue)")
            self.show_points = gui.add_checkbox("Prior point cloud", False)
            self.show_mesh = gui.add_checkbox("Mesh", False, disabled=True,
                                              hint="The folder's mesh.ply (recon export --format mesh)")
        self.show_gaussians.on_update(lambda _: self._apply_visibility())
        self.show_mesh.on_update(lambda _: self._apply_visibility())
        self.show_optimised.on_update(lambda _: self._apply_visibility())
        self.show_initial.on_update(lambda _: self._apply_visibility())
        self.show_points.on_update(lambda _: self._apply_visibility())
        self.render_mode.on_update(lambda _: self._on_render_mode())
        self.render_size.on_update(lambda _: self._invalidate())

        @self.server.on_client_connect
        def _(client) -> None:
            client.camera.on_update(lambda _: self._wake.set())
            self._wake.set()

        @self.server.on_client_disconnect
        def _(client) -> None:
            with self._lock:
                self._clients.pop(client.client_id, None)

        # Build (or load) the native CPU kernels here, in the calling thread, not in the render thread: a
        # daemon thread killed at exit in the middle of a build would leave a stale lock in the kernel
        # cache that blocks every later build. Cheap once they are built.
        from recon.render import native_available

        native_available()
        self._thread = threading.Thread(target=self._render_loop, name="recon-viewer-render", daemon=True)
        self._thread.start()

    # -- content -------------------------------------------------------------------------------------

    def set_frame(self, frame: SceneFrame, cameras: Cameras | None = None) -> None:
        """Scene up direction and the first view of every new browser."""
        self.frame = frame
        self.server.scene.set_up_direction(tuple(float(v) for v in frame.up))
        position, look_at = frame.initial_view(cameras)
        cam = self.server.initial_camera
        cam.up = tuple(float(v) for v in frame.up)
        cam.position = tuple(float(v) for v in position)
        cam.look_at = tuple(float(v) for v in look_at)
        if cameras is not None and len(cameras):
            cam.fov = float(vertical_fov(cameras.subset([0]))[0])
        dist = float(np.linalg.norm(position - look_at))
        cam.near = max(1e-4, 1e-3 * dist)
        cam.far = max(1000.0, 100.0 * dist)

    def set_gaussians(self, g: Gaussians) -> None:
        """Show (or replace) the Gaussians. ``g`` is kept as given (any device) for the server render."""
        arrays = splat_arrays(g)
        self._splats = self.server.scene.add_gaussian_splats(
            "/gaussians", **arrays, visible=self._splats_visible()
        )
        self.set_render_gaussians(g)

    def set_render_gaussians(self, g: Gaussians) -> None:
        """Use ``g`` for the server-side render only (the browser's splats stay as they are)."""
        with self._lock:
            if g is self._gaussians:
                return
            self._gaussians = g
            self._generation += 1
        self._wake.set()

    def set_cameras(self, kind: str, cameras: Cameras, thumbnails: dict | None = None) -> None:
        """Show cameras as frustums: ``kind`` is "optimised" (orange) or "initial" (blue). Existing
        frustums of that kind are moved when the camera count is unchanged (cheap live updates)."""
        wxyz, pos = viser_pose(cameras.w2c)
        old = self._frustums[kind]
        self._cameras[kind] = cameras
        if len(old) == len(cameras) and not thumbnails:
            for h, q, p in zip(old, wxyz, pos, strict=True):
                h.wxyz, h.position = q, p
            return
        for h in old:
            h.remove()
        fov = vertical_fov(cameras)
        scale = self.frame.frustum_scale if self.frame is not None else 0.1
        color = OPTIMISED_COLOR if kind == "optimised" else INITIAL_COLOR
        visible = self.show_optimised.value if kind == "optimised" else self.show_initial.value
        handles = []
        for i, name in enumerate(cameras.names):
            W, H = (int(v) for v in cameras.sizes[i])
            h = self.server.scene.add_camera_frustum(
                f"/cameras/{kind}/{i:04d}", fov=float(fov[i]), aspect=W / H, scale=scale,
                thickness=0.02 * scale, color=color, image=(thumbnails or {}).get(name),
                wxyz=wxyz[i], position=pos[i], visible=visible,
            )
            h.on_click(self._click_handler(kind, i))
            handles.append(h)
        self._frustums[kind] = handles

    def set_point_cloud(self, points: np.ndarray, colors: np.ndarray) -> None:
        size = 0.004 * (self.frame.camera_distance or self.frame.radius) if self.frame is not None else 0.01
        self._points = self.server.scene.add_point_cloud(
            "/prior_points", points=points, colors=colors, point_size=size, point_shape="circle",
            precision="float32", visible=self.show_points.value,
        )

    def set_mesh(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> None:
        """Show (or replace) a triangle mesh: vertices (V, 3) world, faces (F, 3) int, colours (V, 3) uint8
        per vertex or None (grey). Hidden until the "Mesh" checkbox is ticked."""
        import trimesh  # a dependency of viser

        tm = trimesh.Trimesh(vertices=np.asarray(vertices, np.float32), faces=np.asarray(faces, np.int64),
                             vertex_colors=colors, process=False)
        if self._mesh is not None:
            self._mesh.remove()
        self._mesh = self.server.scene.add_mesh_trimesh("/mesh", tm, visible=bool(self.show_mesh.value))
        self.show_mesh.disabled = False

    def move_to_camera(self, client, kind: str, index: int) -> None:
        """Put browser ``client``'s view at camera ``index`` of ``kind`` (pose and vertical fov)."""
        cams = self._cameras[kind]
        if cams is None:
            return
        wxyz, pos = viser_pose(cams.w2c[index : index + 1])
        fov = float(vertical_fov(cams.subset([index]))[0])
        with client.atomic():
            client.camera.position = pos[0]
            client.camera.wxyz = wxyz[0]
            client.camera.fov = fov

    def _click_handler(self, kind: str, index: int) -> Callable:
        def on_click(event) -> None:
            self.move_to_camera(event.client, kind, index)

        return on_click

    # -- visibility ----------------------------------------------------------------------------------

    def _splats_visible(self) -> bool:
        return bool(self.show_gaussians.value) and self.render_mode.value == RENDER_BROWSER

    def _apply_visibility(self) -> None:
        if self._splats is not None:
            self._splats.visible = self._splats_visible()
        for h in self._frustums["optimised"]:
            h.visible = bool(self.show_optimised.value)
        for h in self._frustums["initial"]:
            h.visible = bool(self.show_initial.value)
        if self._points is not None:
            self._points.visible = bool(self.show_points.value)
        if self._mesh is not None:
            self._mesh.visible = bool(self.show_mesh.value)
        self._invalidate()

    def _on_render_mode(self) -> None:
        self._apply_visibility()
        if self.render_mode.value == RENDER_BROWSER:
            for client in self.server.get_clients().values():
                client.scene.set_background_image(None)

    def _invalidate(self) -> None:
        with self._lock:
            self._clients.clear()
        self._wake.set()

    # -- server-side rendering -----------------------------------------------------------------------

    def _render_loop(self) -> None:
        timeout = 1.0
        while not self._closed:
            self._wake.wait(timeout=timeout)
            self._wake.clear()
            if self._closed:
                return
            timeout = 1.0
            if self.render_mode.value != RENDER_RECON:
                continue
            try:
                timeout = min(timeout, self._render_clients())
            except Exception as e:  # noqa: BLE001 - a failed frame must not kill the viewer
                print(f"recon: viewer: render failed: {type(e).__name__}: {e}", flush=True)

    def _render_clients(self) -> float:
        """Render for every browser whose view is stale and whose throttle allows it; returns the seconds
        until a held-back frame is due (inf when none is)."""
        due = math.inf
        clients = self.server.get_clients()
        if not clients:
            return due
        with self._lock:
            g, generation = self._gaussians, self._generation
        if g is None:
            return due
        show = bool(self.show_gaussians.value)
        for cid, client in clients.items():
            cam = client.camera
            with self._lock:
                st = self._clients.setdefault(cid, _ClientRenderState())
            try:
                stamp = cam.update_timestamp
            except AssertionError:  # no camera message from this client yet
                continue
            moved = stamp != st.camera_stamp
            if not moved and generation == st.generation:
                continue
            wait = st.last_time + (1.0 / self.max_fps if moved else self.refresh_s) - time.monotonic()
            if wait > 0:
                due = min(due, wait)
                continue
            if show:
                img = render_view(g, cam.wxyz, cam.position, cam.fov, cam.aspect, int(self.render_size.value))
            else:
                img = np.zeros((8, 8, 3), np.uint8)
            client.scene.set_background_image(img, format="jpeg", jpeg_quality=90)
            self.renders += 1
            st.camera_stamp, st.generation, st.last_time = stamp, generation, time.monotonic()
        return due

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5.0)
