"""The synthetic scene's API: :class:`SceneConfig`, :func:`make_scene` and :class:`SyntheticScene`, the
cameras along its trajectories (training, held-out, perturbed) and :func:`save_views`.

The primitives are in :mod:`recon.synthetic.geometry`, the textures in :mod:`recon.synthetic.textures` and
the ray caster in :mod:`recon.synthetic.raycast`; :mod:`recon.synthetic` describes the scene.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from recon.cameras import (
    Cameras,
    fov_to_focal,
    look_at_w2c,
    make_rigid,
    so3_exp,
)
from recon.errors import ReconError
from recon.priors.base import PriorResult
from recon.synthetic.geometry import Cuboid, Sphere
from recon.synthetic.raycast import RayCaster, image_size, render_images
from recon.synthetic.textures import Atlas, texture_tile
from recon.views import Views


@dataclass
class SceneConfig:
    """What :func:`make_scene` builds.

    Attributes:
        n_views: number of training views.
        width, height: image size in pixels.
        fov_deg: horizontal field of view; fx = fy, principal point at the image centre.
        seed: drives the textures (and the depth noise of :meth:`SyntheticScene.prior_result`).
        trajectory: ``"forward"``: an LLFF-like arc of ``arc_deg`` in front of the scene, all cameras
            looking at ``target``; ``"orbit"``: a circle of ``orbit_deg`` around the objects.
        radius: distance of the cameras from ``target`` in the horizontal plane (None: 4.0 forward,
            3.5 orbit).
        cam_height: camera height (world z; the floor is at z = -1) at the middle of the trajectory
            (None: 0.6 forward, 1.3 orbit, looking down at the objects).
        height_wobble: amplitude of a vertical sine along the trajectory, so that the camera centres
            are not coplanar with the target (as in hand-held captures).
        arc_deg: angular width of the forward arc.
        orbit_deg: angular span of the orbit (360: a full circle, no duplicated end view).
        target: the point every camera looks at.
        supersample: rays per pixel along each axis (anti-aliasing); odd keeps the pixel centre ray
            among the samples.
        with_sphere: add a sphere to the boxes.
        texels_per_unit: texture resolution on the surfaces, in world units, so that one seed gives the
            same scene at every image size (raise it for crisp renders much larger than 128 x 96).
    """

    n_views: int = 8
    width: int = 128
    height: int = 96
    fov_deg: float = 60.0
    seed: int = 0
    trajectory: Literal["forward", "orbit"] = "forward"
    radius: float | None = None
    cam_height: float | None = None
    height_wobble: float = 0.15
    arc_deg: float = 30.0
    orbit_deg: float = 360.0
    target: tuple[float, float, float] = (0.0, 0.0, -0.35)
    supersample: int = 3
    with_sphere: bool = True
    texels_per_unit: float = 40.0

    def resolved_radius(self) -> float:
        if self.radius is not None:
            return float(self.radius)
        return 4.0 if self.trajectory == "forward" else 3.5

    def resolved_height(self) -> float:
        if self.cam_height is not None:
            return float(self.cam_height)
        return 0.6 if self.trajectory == "forward" else 1.3


def _layout(cfg: SceneConfig) -> tuple[Cuboid, list]:
    """The room and the objects. The floor is z = -1; objects sit on it near the origin."""
    if cfg.trajectory == "forward":
        room = Cuboid(center=(0.0, -1.25, 1.0), half=(3.0, 4.25, 2.0), inside=True)  # y in [-5.5, 3]
    else:
        room = Cuboid(center=(0.0, 0.0, 1.25), half=(6.0, 6.0, 2.25), inside=True)
    objects: list = [
        Cuboid(center=(-0.75, 0.35, -0.45), half=(0.45, 0.45, 0.55), yaw_deg=25.0),
        Cuboid(center=(0.8, -0.35, -0.7), half=(0.35, 0.3, 0.3), yaw_deg=-15.0),
        Cuboid(center=(0.3, 1.45, -0.15), half=(0.55, 0.3, 0.85), yaw_deg=5.0),
    ]
    if cfg.with_sphere:
        objects.append(Sphere(center=(-0.3, -1.05, -0.62), radius=0.38))
    return room, objects


# --------------------------------------------------------------------------------------------------
# Cameras along the trajectories
# --------------------------------------------------------------------------------------------------


def _trajectory_cameras(cfg: SceneConfig, s: np.ndarray, names: list[str]) -> Cameras:
    """Cameras at trajectory parameters ``s`` in [0, 1] (forward: end to end; orbit: fraction of the span)."""
    target = torch.tensor(cfg.target, dtype=torch.float64)
    r, h0 = cfg.resolved_radius(), cfg.resolved_height()
    if cfg.trajectory == "forward":
        ang = np.deg2rad(-0.5 * cfg.arc_deg + s * cfg.arc_deg) - np.pi / 2  # around -y, facing +y
    elif cfg.trajectory == "orbit":
        ang = np.deg2rad(s * cfg.orbit_deg) - np.pi / 2
    else:
        raise ReconError(f"unknown synthetic trajectory {cfg.trajectory!r}; use 'forward' or 'orbit'")
    w2cs = []
    for a, si in zip(ang, s, strict=True):
        z = h0 + cfg.height_wobble * np.sin(2 * np.pi * si)
        eye = torch.tensor([target[0] + r * np.cos(a), target[1] + r * np.sin(a), z], dtype=torch.float64)
        w2cs.append(look_at_w2c(eye, target))
    n = len(s)
    f = fov_to_focal(np.deg2rad(cfg.fov_deg), cfg.width)
    K = torch.tensor([[f, 0.0, cfg.width / 2], [0.0, f, cfg.height / 2], [0.0, 0.0, 1.0]]).expand(n, 3, 3)
    sizes = torch.tensor([[cfg.width, cfg.height]], dtype=torch.int64).expand(n, 2)
    return Cameras(K.clone().float(), torch.stack(w2cs).float(), sizes.clone(), list(names))


def _training_params(cfg: SceneConfig) -> np.ndarray:
    n = cfg.n_views
    if cfg.trajectory == "orbit" and abs(cfg.orbit_deg - 360.0) < 1e-9:
        return np.arange(n) / n  # a full circle: the last view must not repeat the first
    return np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5])


# --------------------------------------------------------------------------------------------------
# The scene
# --------------------------------------------------------------------------------------------------


@dataclass
class SyntheticScene:
    """A textured scene with exact geometry and its training views. Build it with :func:`make_scene`.

    Attributes:
        cfg: the configuration it was made from.
        views: the training views (``source="synthetic"``, names ``view_000.png`` ...) with reference
            cameras; ``exif_focal_px`` is None, as for photos without EXIF.
        depth: (N, H, W) float32 z-depth of the training views.
        bounds: (2, 3) float32 axis-aligned box of all geometry (the room), rows min and max.
        object_bounds: (2, 3) float32 axis-aligned box of the objects inside the room.
        extent: radius of the sphere around ``bounds`` (half its diagonal), the scene's length scale.
    """

    cfg: SceneConfig
    views: Views
    depth: torch.Tensor
    bounds: torch.Tensor
    object_bounds: torch.Tensor
    extent: float
    _caster: RayCaster = field(repr=False)

    def render(self, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, H, W, 3) float32 in [0, 1] and z-depth (N, H, W) float32 for any cameras.

        Colours average ``cfg.supersample``^2 rays per pixel; depth is that of the pixel-centre ray.
        All cameras must share one image size (``cameras.sizes``).
        """
        return render_images(self._caster, cameras)

    def pointmaps(self, cameras: Cameras) -> torch.Tensor:
        """World points (N, H, W, 3) float32 seen through each pixel centre of ``cameras``."""
        W, H = image_size(cameras)
        out = [
            self._caster.render_one(K, w2c, W, H, colors=False)[2]
            for K, w2c in zip(cameras.K.double().numpy(), cameras.w2c.double().numpy(), strict=True)
        ]
        return torch.from_numpy(np.stack(out)).float()

    def visible(self, points: torch.Tensor, cameras: Cameras, rel_tol: float = 1e-4) -> torch.Tensor:
        """Exact visibility (N, M) bool of world points (M, 3) from each camera centre.

        A point is visible when it projects inside the image, lies in front of the camera and the first
        surface along the ray to it is the point itself (within ``rel_tol`` of its depth). Meant for
        points on the scene's surfaces (point maps), e.g. as ground truth for co-visibility tests.
        """
        W, H = image_size(cameras)
        X = points.double().numpy()
        out = []
        for K, w2c in zip(cameras.K.double().numpy(), cameras.w2c.double().numpy(), strict=True):
            R, t = w2c[:3, :3], w2c[:3, 3]
            Xc = X @ R.T + t
            z = Xc[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                uv = (Xc @ K.T)[:, :2] / (Xc @ K.T)[:, 2:3]
            inside = (z > 1e-9) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
            vis = np.zeros(len(X), dtype=bool)
            if inside.any():
                d = Xc[inside] / z[inside, None]  # camera-frame directions with z = 1
                t_hit, _ = self._caster.cast(-R.T @ t, d @ R)
                vis[inside] = np.abs(t_hit - z[inside]) <= rel_tol * z[inside]
            out.append(vis)
        return torch.from_numpy(np.stack(out))

    def surface_samples(self, cameras: Cameras, spacing: float = 0.02, seed: int = 0) -> torch.Tensor:
        """Points (M, 3) float64 sampled uniformly by area on the true surfaces that ``cameras`` see.

        Every surface of the scene (room and objects) is sampled with on average one point per
        ``spacing`` x ``spacing`` area (deterministic given ``seed``); the points that no camera sees
        (:meth:`visible`: outside every image, or occluded) are dropped. Unlike point maps, whose density
        falls with distance and obliquity, these sample every seen surface evenly: the reference of a
        Chamfer distance.
        """
        rng = np.random.default_rng(seed)
        density = 1.0 / spacing**2
        pts = torch.from_numpy(np.concatenate([p.sample_surface(rng, density) for p in self._caster.prims]))
        return pts[self.visible(pts, cameras).any(0)]

    def prior_result(
        self, cameras: Cameras | None = None, stride: int = 1, noise: float = 0.0
    ) -> PriorResult:
        """An exact "oracle" prior for testing later stages without a real one.

        Args:
            cameras: the poses (and intrinsics) the prior reports, one per training view, for the full
                image size; default: the reference cameras. Depth and colours stay those of the
                training images and the point maps are unprojected with these cameras: e.g. with
                :func:`perturb_cameras` this is a prior whose per-view geometry is right but whose
                poses are off, as feed-forward priors are.
            stride: point-map pixel (i, j) covers image pixels [stride*i, stride*(i+1)) x
                [stride*j, stride*(j+1)); its depth is that of the ray through the block's centre and its
                colour the block's average (rendered at the reduced size, which integrates that area).
            noise: relative z-depth noise (std of a multiplicative N(1, noise) factor per pixel),
                deterministic given ``cfg.seed``.

        Returns:
            PriorResult with conf = 1 everywhere, ``depth`` set and ``info={"prior": "oracle", ...}``.
        """
        ref = self.views.cameras
        cams = ref if cameras is None else cameras.clone()
        if len(cams) != len(ref) or not torch.equal(cams.sizes, ref.sizes):
            raise ReconError(f"oracle prior needs {len(ref)} cameras of the training views' size")
        if stride < 1:
            raise ReconError(f"prior stride must be >= 1, got {stride}")
        cams.names = list(ref.names)
        small_ref = ref if stride == 1 else ref.scaled(1.0 / stride)
        small = cams if stride == 1 else cams.scaled(1.0 / stride)
        W, H = image_size(small)
        colors, depth = self.render(small_ref)
        if noise > 0:
            rng = np.random.default_rng(self.cfg.seed + 7919)
            depth = depth * torch.from_numpy(1.0 + noise * rng.standard_normal(tuple(depth.shape))).float()
        # point maps by unprojecting the (possibly noisy) depth through the pixel-centre rays
        pts = []
        for i, (K, w2c) in enumerate(zip(small.K.double().numpy(), small.w2c.double().numpy(), strict=True)):
            o, d = self._caster.rays(K, w2c, W, H, 1)
            pts.append(o + depth[i].double().numpy()[..., None] * d)
        pointmaps = torch.from_numpy(np.stack(pts)).float()
        return PriorResult(
            cameras=cams.clone(),
            pointmaps=pointmaps,
            conf=torch.ones(pointmaps.shape[:-1]),
            colors=colors,
            depth=depth,
            info={"prior": "oracle", "stride": stride, "noise": noise},
        )


def make_scene(cfg: SceneConfig | None = None) -> SyntheticScene:
    """Build the scene of ``cfg`` and render its training views (deterministic given ``cfg.seed``)."""
    cfg = SceneConfig() if cfg is None else cfg
    if cfg.n_views < 1 or cfg.width < 8 or cfg.height < 8 or cfg.supersample < 1:
        raise ReconError("synthetic scene needs n_views >= 1, width/height >= 8 and supersample >= 1")
    if not 1.0 < cfg.fov_deg < 170.0:
        raise ReconError(f"synthetic fov_deg must be in (1, 170), got {cfg.fov_deg}")
    room, objects = _layout(cfg)
    rng = np.random.default_rng(cfg.seed)
    tiles, tile0 = [], []
    for prim in [room, *objects]:
        tile0.append(len(tiles))
        for su, sv in prim.face_sizes():
            w = int(np.ceil(su * cfg.texels_per_unit))
            h = int(np.ceil(sv * cfg.texels_per_unit))
            tiles.append(texture_tile(rng, h, w))
    atlas = Atlas(tiles, cfg.texels_per_unit)

    lo = room.center - room.half
    hi = room.center + room.half
    bounds = torch.tensor(np.stack([lo, hi]), dtype=torch.float32)
    corners = []
    for o in objects:
        if isinstance(o, Sphere):
            corners += [o.center - o.radius, o.center + o.radius]
        else:
            signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T
            corners += list(o.center + (signs * o.half) @ o.R.T)
    corners = np.stack(corners)
    object_bounds = torch.tensor(np.stack([corners.min(0), corners.max(0)]), dtype=torch.float32)

    names = [f"view_{i:03d}.png" for i in range(cfg.n_views)]
    cameras = _trajectory_cameras(cfg, _training_params(cfg), names)
    caster = RayCaster(room, objects, atlas, tile0, cfg.supersample)
    images, depth = render_images(caster, cameras)
    views = Views(
        images=images,
        names=names,
        cameras=cameras,
        exif_focal_px=None,
        source="synthetic",
        root="",
        meta={"seed": cfg.seed, "trajectory": cfg.trajectory},
    )
    return SyntheticScene(
        cfg=cfg,
        views=views,
        depth=depth,
        bounds=bounds,
        object_bounds=object_bounds,
        extent=float(0.5 * np.linalg.norm(hi - lo)),
        _caster=caster,
    )


# --------------------------------------------------------------------------------------------------
# Held-out and perturbed cameras
# --------------------------------------------------------------------------------------------------


def novel_cameras(scene: SyntheticScene, n: int) -> Cameras:
    """``n`` held-out cameras on the training trajectory, at parameters (k + 0.5) / n.

    For a forward arc with ``n = n_views - 1`` they sit exactly half way between consecutive training
    cameras; for a full orbit with ``n = n_views`` likewise. Names are ``novel_000.png`` ...
    """
    if n < 1:
        raise ReconError(f"novel_cameras needs n >= 1, got {n}")
    s = (np.arange(n) + 0.5) / n
    return _trajectory_cameras(scene.cfg, s, [f"novel_{k:03d}.png" for k in range(n)])


def perturb_cameras(cameras: Cameras, rot_deg: float, trans: float, seed: int = 0) -> Cameras:
    """Cameras with w2c left-multiplied by random se(3) deltas (CONVENTIONS' pose update).

    Each delta has a rotation of exactly ``rot_deg`` degrees about a random axis and a translation of
    length ``trans`` in a random direction (camera frame), so pose-refinement tests control the error.
    """
    g = torch.Generator().manual_seed(seed)
    n = len(cameras)
    axes = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    R = so3_exp(axes * np.deg2rad(rot_deg))
    delta = make_rigid(R, dirs * trans)
    return cameras.with_w2c(delta @ cameras.w2c.double())


# --------------------------------------------------------------------------------------------------
# Writing views to disk
# --------------------------------------------------------------------------------------------------


def save_views(views: Views, folder: str | os.PathLike) -> list[Path]:
    """Write ``views.images`` as 8-bit PNGs named ``views.names`` into ``folder`` (created if needed).

    Every file is written atomically (temporary file in the same folder, then ``os.replace``). Returns
    the written paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    imgs = (views.images.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
    for name, img in zip(views.names, imgs, strict=True):
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ReconError(f"could not encode {name} as PNG")
        path = folder / name
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.tobytes())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        paths.append(path)
    return paths
