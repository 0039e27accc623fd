"""Synthetic scenes with exact geometry: the embedded demo and the test bed of the whole project.

A scene is a closed, textured "room" (floor, walls, ceiling: every ray hits something, so depth is
defined everywhere) holding a few rotated boxes and optionally a sphere. Surfaces carry procedural
textures (multi-scale value noise, stripes, checkers, colour gradients, text-like marks and small
shapes) baked into texture tiles, and a fixed Lambertian shading, so colours are view-independent and
feature matchers and photometric losses both have plenty of signal.

Images are made by an exact ray caster (analytic ray/box/sphere intersections in float64, not
Gaussians), anti-aliased by averaging ``supersample x supersample`` rays per pixel. Depth and point
maps are those of the ray through each pixel centre, so they are exact for any camera: training
cameras, novel views between them, or perturbed poses.

Conventions are the project's (``shared/CONVENTIONS.md``, :mod:`recon.cameras`): world z is up, cameras
are OpenCV (x right, y down, z forward), extrinsics are ``w2c``, pixel (i, j) has its centre at
(j + 0.5, i + 0.5). Depth is z-depth in the camera frame.

Typical use::

    scene = make_scene(SceneConfig(n_views=8))
    views = scene.views                          # Views(source="synthetic") with reference cameras
    images, depth = scene.render(novel_cameras(scene, 4))
    prior = scene.prior_result(stride=2)         # an exact "oracle" PriorResult
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
    interpolate_cameras,
    look_at_w2c,
    make_rigid,
    so3_exp,
)
from recon.errors import ReconError
from recon.priors.base import PriorResult
from recon.views import Views

__all__ = [
    "SceneConfig",
    "SyntheticScene",
    "make_scene",
    "novel_cameras",
    "interpolate_cameras",
    "perturb_cameras",
    "save_views",
]

# A fixed directional light (world, z up) for view-independent Lambertian shading.
_LIGHT_DIR = np.array([0.35, -0.55, 0.76]) / np.linalg.norm([0.35, -0.55, 0.76])
_AMBIENT = 0.55


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


# --------------------------------------------------------------------------------------------------
# Primitives: analytic intersection and surface parameterisation
# --------------------------------------------------------------------------------------------------
#
# Each primitive has faces; each face owns one texture tile of a given physical size (u, v in world
# units). ``intersect`` returns the ray parameter t of the first hit in front of the origin (inf on a
# miss) for rays o + t d with unnormalised d (we use d with camera-frame z = 1, so t is z-depth).


class _Cuboid:
    """An oriented box (yaw about world z); seen from outside, or from inside when ``inside``."""

    def __init__(self, center, half, yaw_deg: float = 0.0, inside: bool = False) -> None:
        self.center = np.asarray(center, dtype=np.float64)
        self.half = np.asarray(half, dtype=np.float64)
        a = np.deg2rad(yaw_deg)
        # columns are the box axes in world coordinates
        self.R = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
        self.inside = inside

    # face f = 2 * axis + (0 for the -axis side, 1 for the +axis side); (u, v) = the two other axes
    def face_sizes(self) -> list[tuple[float, float]]:
        out = []
        for axis in range(3):
            b, c = [k for k in range(3) if k != axis]
            out += [(2 * self.half[b], 2 * self.half[c])] * 2
        return out

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        ol = (o - self.center) @ self.R  # (3,) local origin
        if not self.inside:
            # cheap rejection with the bounding sphere before the slab test (objects cover few pixels)
            oc = -ol @ self.R.T
            dd = np.einsum("ij,ij->i", d, d)
            b = d @ oc
            cand = (oc @ oc) * dd - b * b <= (self.half @ self.half) * dd
            t = np.full(len(d), np.inf)
            if cand.any():
                t[cand] = self._slab(ol, d[cand])
            return t
        return self._slab(ol, d)

    def _slab(self, ol: np.ndarray, d: np.ndarray) -> np.ndarray:
        dl = d @ self.R  # (M, 3) local directions
        # a zero direction component becomes a huge finite inverse: the slab test stays NaN-free
        dl = np.where(np.abs(dl) < 1e-300, 1e-300, dl)
        inv = 1.0 / dl
        t1 = (-self.half - ol) * inv
        t2 = (self.half - ol) * inv
        t_near = np.minimum(t1, t2).max(axis=1)
        t_far = np.maximum(t1, t2).min(axis=1)
        if self.inside:
            return np.where((t_far > 1e-9) & (t_near <= t_far), t_far, np.inf)
        return np.where((t_near > 1e-9) & (t_near <= t_far), t_near, np.inf)

    def sample_surface(self, rng: np.random.Generator, density: float) -> np.ndarray:
        """Points (M, 3) uniformly distributed over the six faces, ``density`` per unit area on average."""
        out = []
        for axis in range(3):
            b, c = [k for k in range(3) if k != axis]
            area = 4 * self.half[b] * self.half[c]
            for sign in (-1.0, 1.0):
                n = rng.poisson(area * density)
                local = (rng.random((n, 3)) * 2 - 1) * self.half
                local[:, axis] = sign * self.half[axis]
                out.append(self.center + local @ self.R.T)
        return np.concatenate(out)

    def surface(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Face index (M,), tile coordinates (M, 2) in world units and outward normal (M, 3)."""
        pl = (P - self.center) @ self.R
        axis = (np.abs(pl) / self.half).argmax(axis=1)  # the face a surface point lies on
        uv = np.empty((len(P), 2))
        normal = np.zeros((len(P), 3))
        face = np.empty(len(P), dtype=np.int64)
        for a, (b, c) in enumerate(((1, 2), (0, 2), (0, 1))):
            m = axis == a
            pa = pl[m]
            pos = pa[:, a] > 0
            face[m] = 2 * a + pos
            uv[m] = pa[:, (b, c)] + self.half[[b, c]]
            sign = np.where(pos, 1.0, -1.0) * (-1.0 if self.inside else 1.0)
            normal[m] = sign[:, None] * self.R[:, a]
        return face, uv, normal


class _Sphere:
    def __init__(self, center, radius: float) -> None:
        self.center = np.asarray(center, dtype=np.float64)
        self.radius = float(radius)

    def face_sizes(self) -> list[tuple[float, float]]:
        return [(2 * np.pi * self.radius, np.pi * self.radius)]

    def sample_surface(self, rng: np.random.Generator, density: float) -> np.ndarray:
        """Points (M, 3) uniformly distributed over the sphere, ``density`` per unit area on average."""
        n = rng.poisson(4 * np.pi * self.radius**2 * density)
        d = rng.standard_normal((n, 3))
        return self.center + self.radius * d / np.linalg.norm(d, axis=1, keepdims=True)

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        oc = o - self.center
        a = (d * d).sum(1)
        b = 2.0 * (d @ oc)
        c = oc @ oc - self.radius**2
        disc = b * b - 4 * a * c
        sq = np.sqrt(np.maximum(disc, 0.0))
        t = (-b - sq) / (2 * a)
        return np.where((disc >= 0) & (t > 1e-9), t, np.inf)

    def surface(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = (P - self.center) / self.radius
        # longitude measured from -y so the texture seam faces +y (away from the forward cameras)
        lon = np.arctan2(n[:, 0], -n[:, 1])
        lat = np.arcsin(np.clip(n[:, 2], -1.0, 1.0))
        uv = np.stack([(lon + np.pi) * self.radius, (np.pi / 2 - lat) * self.radius], axis=1)
        return np.zeros(len(P), dtype=np.int64), uv, n


def _layout(cfg: SceneConfig) -> tuple[_Cuboid, list]:
    """The room and the objects. The floor is z = -1; objects sit on it near the origin."""
    if cfg.trajectory == "forward":
        room = _Cuboid(center=(0.0, -1.25, 1.0), half=(3.0, 4.25, 2.0), inside=True)  # y in [-5.5, 3]
    else:
        room = _Cuboid(center=(0.0, 0.0, 1.25), half=(6.0, 6.0, 2.25), inside=True)
    objects: list = [
        _Cuboid(center=(-0.75, 0.35, -0.45), half=(0.45, 0.45, 0.55), yaw_deg=25.0),
        _Cuboid(center=(0.8, -0.35, -0.7), half=(0.35, 0.3, 0.3), yaw_deg=-15.0),
        _Cuboid(center=(0.3, 1.45, -0.15), half=(0.55, 0.3, 0.85), yaw_deg=5.0),
    ]
    if cfg.with_sphere:
        objects.append(_Sphere(center=(-0.3, -1.05, -0.62), radius=0.38))
    return room, objects


# --------------------------------------------------------------------------------------------------
# Procedural textures
# --------------------------------------------------------------------------------------------------


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1] (h, w): random values on a lattice of ``cell`` texels, bicubic upsampled."""
    gh, gw = max(2, int(np.ceil(h / cell)) + 2), max(2, int(np.ceil(w / cell)) + 2)
    grid = rng.random((gh, gw)).astype(np.float32)
    big = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    return np.clip(big[:h, :w], 0.0, 1.0)


def _fbm(rng: np.random.Generator, h: int, w: int, cells=(48, 24, 12, 6, 3)) -> np.ndarray:
    """Multi-scale (fractal) value noise normalised to [0, 1]."""
    acc = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for cell in cells:
        acc += amp * _value_noise(rng, h, w, cell)
        total += amp
        amp *= 0.6
    acc /= total
    lo, hi = np.percentile(acc, [1, 99])
    return np.clip((acc - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _palette(rng: np.random.Generator, k: int) -> np.ndarray:
    """k colours (k, 3) in RGB [0, 1] with spread-out hues and varied saturation/value."""
    hues = (rng.random() + np.arange(k) / k + rng.uniform(-0.08, 0.08, k)) % 1.0
    hsv = np.stack([hues * 180, rng.uniform(70, 230, k), rng.uniform(70, 245, k)], 1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0].astype(np.float32) / 255.0


_GLYPHS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789#&@%"
_FONTS = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_PLAIN]


MARK_AREA = 220


def _texture_tile(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One texture tile (h, w, 3) float32 RGB in [0, 1]."""
    pal = _palette(rng, 4)
    n1 = _fbm(rng, h, w)
    n2 = _fbm(rng, h, w, cells=(32, 8, 4))
    # colour from two noise fields: n1 blends palette 0 -> 1, n2 blends toward palette 2
    img = (1 - n1)[..., None] * pal[0] + n1[..., None] * pal[1]
    img = (1 - 0.6 * n2[..., None]) * img + 0.6 * n2[..., None] * pal[2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(0, 3)
    if kind == 0:  # stripes in a random direction
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(8, 22)
        s = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(ang) + yy * np.sin(ang)) / period)
        img = (1 - 0.35 * s[..., None]) * img + 0.35 * s[..., None] * pal[3]
    elif kind == 1:  # checkers
        cell = int(rng.integers(10, 26))
        chk = ((xx // cell + yy // cell) % 2).astype(np.float32)
        img = (1 - 0.3 * chk[..., None]) * img + 0.3 * chk[..., None] * pal[3]
    else:  # a linear colour gradient
        g = (xx / max(w - 1, 1) * rng.uniform(-1, 1) + yy / max(h - 1, 1) * rng.uniform(-1, 1)) % 1.0
        img = (1 - 0.4 * g[..., None]) * img + 0.4 * g[..., None] * pal[3]
    # fine-scale luminance noise: the photometric "grain" that gives every small patch a gradient
    fine = _value_noise(rng, h, w, rng.uniform(2.5, 4.0))
    img = img * (0.7 + 0.6 * fine)[..., None]
    img = np.ascontiguousarray(np.clip(img, 0, 1) * 255).astype(np.uint8)
    # text-like marks and small shapes: corners and blobs for feature detectors
    n_marks = max(3, int(h * w / MARK_AREA))
    for _ in range(n_marks):
        dark = rng.random() < 0.5
        col = tuple(int(c) for c in (rng.integers(0, 60, 3) if dark else rng.integers(190, 256, 3)))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = rng.random()
        if r < 0.45:
            txt = "".join(rng.choice(list(_GLYPHS), int(rng.integers(1, 5))))
            font = _FONTS[int(rng.integers(0, len(_FONTS)))]
            cv2.putText(img, txt, (x, y), font, float(rng.uniform(0.3, 0.9)), col, int(rng.integers(1, 3)),
                        cv2.LINE_AA)
        elif r < 0.65:
            cv2.circle(img, (x, y), int(rng.integers(2, 9)), col, -1, cv2.LINE_AA)
        elif r < 0.85:
            dx, dy = int(rng.integers(3, 16)), int(rng.integers(3, 16))
            cv2.rectangle(img, (x, y), (x + dx, y + dy), col, -1)
        else:
            ang = rng.uniform(0, np.pi)
            ln = rng.uniform(6, 24)
            p2 = (int(x + ln * np.cos(ang)), int(y + ln * np.sin(ang)))
            cv2.line(img, (x, y), p2, col, int(rng.integers(1, 3)), cv2.LINE_AA)
    # a touch of blur: no texel-sharp edges, so the supersampled images do not alias
    return cv2.GaussianBlur(img.astype(np.float32) / 255.0, (0, 0), 0.6)


class _Atlas:
    """All texture tiles stacked vertically in one image, sampled with one ``cv2.remap`` per render."""

    def __init__(self, tiles: list[np.ndarray], density: float) -> None:
        self.density = density
        width = max(t.shape[1] for t in tiles)
        self.row0 = np.cumsum([0] + [t.shape[0] for t in tiles[:-1]]).astype(np.float64)
        self.tile_hw = np.array([t.shape[:2] for t in tiles], dtype=np.float64)
        image = np.zeros((int(sum(t.shape[0] for t in tiles)), width, 3), np.float32)
        for r0, t in zip(self.row0.astype(int), tiles, strict=True):
            image[r0 : r0 + t.shape[0], : t.shape[1]] = t
        self.image = image

    def sample(self, tile: np.ndarray, uv: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Bilinear colours (*shape, 3) at tile coordinates ``uv`` (world units) of tiles ``tile``."""
        h, w = self.tile_hw[tile, 0], self.tile_hw[tile, 1]
        # texel k covers [k, k + 1) / density, its centre is texel coordinate k in remap's convention
        x = np.clip(uv[:, 0] * self.density - 0.5, 0.0, w - 1.0)
        y = np.clip(uv[:, 1] * self.density - 0.5, 0.0, h - 1.0) + self.row0[tile]
        mx = x.astype(np.float32).reshape(shape)
        my = y.astype(np.float32).reshape(shape)
        return cv2.remap(self.image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


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


class _RayCaster:
    """The exact renderer: first hits of rays against the room and the objects, textured and shaded."""

    def __init__(
        self, room: _Cuboid, objects: list, atlas: _Atlas, tile0: list[int], supersample: int
    ) -> None:
        self.prims = [room, *objects]  # index 0 is the room
        self.atlas = atlas
        self.tile0 = tile0  # first atlas tile of each primitive
        self.supersample = supersample

    def cast(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First hits of rays o + t d (d (M, 3)): t (M,) and primitive index (M,) (0 = room)."""
        t = self.prims[0].intersect(o, d)
        if not np.isfinite(t).all():
            raise ReconError("a synthetic camera is outside the room: keep cameras in SyntheticScene.bounds")
        prim = np.zeros(len(d), dtype=np.int64)
        for k, p in enumerate(self.prims[1:], start=1):
            tk = p.intersect(o, d)
            closer = tk < t
            t = np.where(closer, tk, t)
            prim[closer] = k
        return t, prim

    def shade(self, P: np.ndarray, prim: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Shaded surface colours (*shape, 3) of hit points P (M, 3) on primitives ``prim``."""
        tile = np.zeros(len(P), dtype=np.int64)
        uv = np.zeros((len(P), 2))
        normal = np.zeros((len(P), 3))
        for k, p in enumerate(self.prims):
            m = prim == k
            if m.any():
                face, uv[m], normal[m] = p.surface(P[m])
                tile[m] = self.tile0[k] + face
        albedo = self.atlas.sample(tile, uv, shape)
        shade = _AMBIENT + (1 - _AMBIENT) * np.clip(normal @ _LIGHT_DIR, 0.0, None)
        return albedo * shade.reshape(*shape, 1).astype(np.float32)

    def rays(self, K: np.ndarray, w2c: np.ndarray, W: int, H: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Camera centre (3,) and world ray directions (H*s, W*s, 3) with camera-frame z = 1."""
        xs = (np.arange(W * s) + 0.5) / s
        ys = (np.arange(H * s) + 0.5) / s
        xx, yy = np.meshgrid(xs, ys)
        pix = np.stack([xx, yy, np.ones_like(xx)], axis=-1)
        d_cam = pix @ np.linalg.inv(K).T
        d_cam = d_cam / d_cam[..., 2:3]  # exactly z = 1 even for a K with skew / odd last row
        R, t = w2c[:3, :3], w2c[:3, 3]
        return -R.T @ t, d_cam @ R  # (R^T d) for row vectors

    def render_one(self, K: np.ndarray, w2c: np.ndarray, W: int, H: int, colors: bool = True):
        """Image (H, W, 3) (None unless ``colors``), pixel-centre z-depth (H, W) and points (H, W, 3)."""
        s = self.supersample if colors else 1
        o, d = self.rays(K, w2c, W, H, s)
        t, prim = self.cast(o, d.reshape(-1, 3))
        if s % 2 == 1:  # the centre sample of each pixel is the pixel-centre ray
            c = s // 2
            t_c = t.reshape(H, s, W, s)[:, c, :, c]
            d_c = d.reshape(H, s, W, s, 3)[:, c, :, c]
        else:
            o, d_c = self.rays(K, w2c, W, H, 1)
            t_c, _ = self.cast(o, d_c.reshape(-1, 3))
            t_c = t_c.reshape(H, W)
        points = o + t_c[..., None] * d_c
        image = None
        if colors:
            P = o + t[:, None] * d.reshape(-1, 3)
            sub = self.shade(P, prim, (H * s, W * s))
            image = sub.reshape(H, s, W, s, 3).mean(axis=(1, 3))
        return image, t_c, points


def _image_size(cameras: Cameras) -> tuple[int, int]:
    """The (W, H) shared by all ``cameras``."""
    if len(cameras) == 0:
        raise ReconError("no cameras given to render the synthetic scene")
    sizes = cameras.sizes
    if not bool((sizes == sizes[0]).all()):
        raise ReconError("cameras of different image sizes: render them in separate calls")
    return int(sizes[0, 0]), int(sizes[0, 1])


def _render(caster: _RayCaster, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    W, H = _image_size(cameras)
    images, depths = [], []
    for K, w2c in zip(cameras.K.double().numpy(), cameras.w2c.double().numpy(), strict=True):
        img, t_c, _ = caster.render_one(K, w2c, W, H)
        images.append(np.clip(img, 0.0, 1.0))
        depths.append(t_c)
    return torch.from_numpy(np.stack(images)).float(), torch.from_numpy(np.stack(depths)).float()


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
    _caster: _RayCaster = field(repr=False)

    def render(self, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, H, W, 3) float32 in [0, 1] and z-depth (N, H, W) float32 for any cameras.

        Colours average ``cfg.supersample``^2 rays per pixel; depth is that of the pixel-centre ray.
        All cameras must share one image size (``cameras.sizes``).
        """
        return _render(self._caster, cameras)

    def pointmaps(self, cameras: Cameras) -> torch.Tensor:
        """World points (N, H, W, 3) float32 seen through each pixel centre of ``cameras``."""
        W, H = _image_size(cameras)
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
        W, H = _image_size(cameras)
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
        W, H = _image_size(small)
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
            tiles.append(_texture_tile(rng, h, w))
    atlas = _Atlas(tiles, cfg.texels_per_unit)

    lo = room.center - room.half
    hi = room.center + room.half
    bounds = torch.tensor(np.stack([lo, hi]), dtype=torch.float32)
    corners = []
    for o in objects:
        if isinstance(o, _Sphere):
            corners += [o.center - o.radius, o.center + o.radius]
        else:
            signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T
            corners += list(o.center + (signs * o.half) @ o.R.T)
    corners = np.stack(corners)
    object_bounds = torch.tensor(np.stack([corners.min(0), corners.max(0)]), dtype=torch.float32)

    names = [f"view_{i:03d}.png" for i in range(cfg.n_views)]
    cameras = _trajectory_cameras(cfg, _training_params(cfg), names)
    caster = _RayCaster(room, objects, atlas, tile0, cfg.supersample)
    images, depth = _render(caster, cameras)
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
