"""Primitives of the synthetic scene: analytic ray intersection and surface parameterisation.

Each primitive has faces; each face owns one texture tile of a given physical size (u, v in world
units). ``intersect`` returns the ray parameter t of the first hit in front of the origin (inf on a
miss) for rays o + t d with unnormalised d (we use d with camera-frame z = 1, so t is z-depth).
"""

from __future__ import annotations

import numpy as np


class Cuboid:
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


class Sphere:
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
