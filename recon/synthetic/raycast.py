"""The exact renderer of the synthetic scene: first hits of rays against the room and the objects,
textured (:mod:`.textures`) and shaded with a fixed Lambertian light; supersampled images, pixel-centre
depth and point maps."""

from __future__ import annotations

import numpy as np
import torch

from recon.cameras import Cameras
from recon.errors import ReconError
from recon.synthetic.geometry import Cuboid
from recon.synthetic.textures import Atlas

# A fixed directional light (world, z up) for view-independent Lambertian shading.
_LIGHT_DIR = np.array([0.35, -0.55, 0.76]) / np.linalg.norm([0.35, -0.55, 0.76])
_AMBIENT = 0.55


class RayCaster:
    """The exact renderer: first hits of rays against the room and the objects, textured and shaded."""

    def __init__(
        self, room: Cuboid, objects: list, atlas: Atlas, tile0: list[int], supersample: int
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


def image_size(cameras: Cameras) -> tuple[int, int]:
    """The (W, H) shared by all ``cameras``."""
    if len(cameras) == 0:
        raise ReconError("no cameras given to render the synthetic scene")
    sizes = cameras.sizes
    if not bool((sizes == sizes[0]).all()):
        raise ReconError("cameras of different image sizes: render them in separate calls")
    return int(sizes[0, 0]), int(sizes[0, 1])


def render_images(caster: RayCaster, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, H, W, 3) clipped to [0, 1] and pixel-centre z-depth (N, H, W), float32."""
    W, H = image_size(cameras)
    images, depths = [], []
    for K, w2c in zip(cameras.K.double().numpy(), cameras.w2c.double().numpy(), strict=True):
        img, t_c, _ = caster.render_one(K, w2c, W, H)
        images.append(np.clip(img, 0.0, 1.0))
        depths.append(t_c)
    return torch.from_numpy(np.stack(images)).float(), torch.from_numpy(np.stack(depths)).float()
