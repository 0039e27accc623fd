"""NeRF / Blender / Nerfstudio ``transforms.json`` scenes.

Files: ``transforms.json`` (Nerfstudio, Instant-NGP) or ``transforms_train.json`` with optional
``transforms_test.json`` / ``transforms_val.json`` (NeRF-synthetic). Each frame has ``file_path``
(relative to the json's folder, with or without extension) and ``transform_matrix``, a 4x4
camera-to-world in the OpenGL convention (x right, y up, camera looking along -z).

Intrinsics: ``fl_x``/``fl_y``/``cx``/``cy``/``w``/``h`` (pixels; per frame or file-wide, per frame wins),
or ``camera_angle_x`` (and optionally ``camera_angle_y``) horizontal field of view in radians, with the
principal point at the image centre and the size taken from the image when ``w``/``h`` are absent.

OpenGL -> OpenCV: flip the camera's y and z axes, ``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)``.
Lens distortion keys (k1, k2, k3, k4, p1, p2) are not applied to the images; non-zero ones are kept in
``meta["distortion"]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from recon.cameras import fov_to_focal, invert_rigid
from recon.errors import ReconError
from recon.io.common import views_with_cameras
from recon.io.images import IMAGE_EXTS, image_size
from recon.views import Views

SPLIT_FILES = (
    ("train", "transforms_train.json"),
    ("val", "transforms_val.json"),
    ("test", "transforms_test.json"),
)
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiplying a camera-to-world by this flips the camera's y and z axes (its own inverse)."""
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
DISTORTION_NOTE = (
    "images are not undistorted: K is the pinhole part of the camera and these coefficients describe the "
    "lens distortion that remains in the pixels"
)


def transforms_files(root: Path) -> list[tuple[str, Path]]:
    """(split, path) of the transforms files in ``root``: transforms.json alone, else the split files."""
    if (root / "transforms.json").is_file():
        return [("all", root / "transforms.json")]
    return [(split, root / name) for split, name in SPLIT_FILES if (root / name).is_file()]


def _resolve_image(root: Path, file_path: str) -> Path:
    """The image a frame's ``file_path`` names; the extension may be missing (NeRF-synthetic uses none)."""
    # normpath, not resolve: symlinked images keep their own names
    p = Path(os.path.normpath(root.absolute() / file_path))
    if p.is_file():
        return p
    for ext in sorted(IMAGE_EXTS):
        for cand in (p.with_name(p.name + ext), p.with_name(p.name + ext.upper())):
            if cand.is_file():
                return cand
    raise ReconError(f"frame file_path {file_path!r} matches no image under {root}")


def _frame_K(meta: dict, frame: dict, image: Path, where: str) -> tuple[np.ndarray, tuple[float, float]]:
    """K (3, 3) and the (W, H) it refers to, from frame keys overriding file-wide keys."""

    def get(key: str):
        return frame.get(key, meta.get(key))

    w, h = get("w"), get("h")
    if w is None or h is None:
        w, h = image_size(image)
    w, h = float(w), float(h)
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None:
        angle_x = get("camera_angle_x")
        if angle_x is None:
            raise ReconError(f"{where}: no intrinsics (need fl_x or camera_angle_x)")
        fx = fov_to_focal(float(angle_x), w)
        angle_y = get("camera_angle_y")
        if fy is None and angle_y is not None:
            fy = fov_to_focal(float(angle_y), h)
    fy = fx if fy is None else fy
    cx, cy = get("cx"), get("cy")
    cx = w / 2 if cx is None else cx
    cy = h / 2 if cy is None else cy
    K = np.array([[float(fx), 0.0, float(cx)], [0.0, float(fy), float(cy)], [0.0, 0.0, 1.0]])
    return K, (w, h)


def load_nerf(root: str | Path, max_side: int | None = None) -> Views:
    """A transforms.json scene (all splits) as Views with reference cameras.

    Views are in file order (train, val, test). Names are image file names, or paths relative to
    ``root`` when file names repeat across folders; ``meta["split"]`` maps each name to its split.

    Raises:
        ReconError: no transforms file, malformed JSON, missing images, or names that are not unique.
    """
    root = Path(root)
    files = transforms_files(root)
    if not files:
        raise ReconError(f"no transforms.json or transforms_train.json in {root}")
    paths: list[Path] = []
    splits: list[str] = []
    K, sizes, w2c = [], [], []
    distortion: dict[str, dict] = {}
    for split, path in files:
        try:
            meta = json.loads(path.read_text())
            frames = meta["frames"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ReconError(f"{path} is not a transforms file with a 'frames' list ({e})") from None
        for i, frame in enumerate(frames):
            where = f"{path.name} frame {i}"
            try:
                image = _resolve_image(path.parent, frame["file_path"])
                c2w_gl = np.asarray(frame["transform_matrix"], dtype=np.float64)
            except (KeyError, TypeError, ValueError) as e:
                raise ReconError(f"{where}: needs file_path and transform_matrix ({e})") from None
            if c2w_gl.shape == (3, 4):
                c2w_gl = np.vstack([c2w_gl, [0.0, 0.0, 0.0, 1.0]])
            if c2w_gl.shape != (4, 4):
                raise ReconError(f"{where}: transform_matrix must be 4x4, got {c2w_gl.shape}")
            k, size = _frame_K(meta, frame, image, where)
            c2w_cv = c2w_gl @ OPENGL_TO_OPENCV
            w2c.append(invert_rigid(torch.from_numpy(c2w_cv)).numpy())
            K.append(k)
            sizes.append(size)
            paths.append(image)
            splits.append(split)
            coeffs = {key: float(frame.get(key, meta.get(key, 0.0))) for key in DISTORTION_KEYS}
            if any(v != 0.0 for v in coeffs.values()):
                distortion[str(len(paths) - 1)] = coeffs
    if not paths:
        raise ReconError(f"{files[0][1]} has no frames")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        base = Path(os.path.normpath(root.absolute()))
        names = [p.relative_to(base).as_posix() if p.is_relative_to(base) else p.as_posix() for p in paths]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ReconError(f"image {dup} appears in more than one frame of {root}; names must be unique")
    out_meta: dict = {"split": dict(zip(names, splits, strict=True))}
    if distortion:
        out_meta["distortion"] = {names[int(i)]: c for i, c in distortion.items()}
        out_meta["distortion_note"] = DISTORTION_NOTE
    return views_with_cameras(
        paths, np.stack(K), np.stack(w2c), sizes, max_side=max_side, source="nerf", root=root, meta=out_meta,
        names=names,
    )

