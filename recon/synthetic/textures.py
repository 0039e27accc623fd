"""Procedural textures of the synthetic scene: multi-scale value noise, stripes, checkers, colour
gradients, text-like marks and small shapes baked into tiles, and the atlas that samples them."""

from __future__ import annotations

import cv2
import numpy as np


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


def texture_tile(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
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


class Atlas:
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
