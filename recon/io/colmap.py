"""COLMAP sparse models: read text and binary (cameras, images, points3D), write text.

COLMAP's conventions are the project's: images store world-to-camera ``R = quat(QW, QX, QY, QZ)``, ``t``
(x_cam = R X + t, OpenCV axes), and pixel (0, 0) is the top-left corner of the top-left pixel, so K is
used as stored. File layouts follow COLMAP's documentation ("Output format"); binary files are little
endian.

Distortion is not removed from the images: the pinhole part of the camera goes into K and the
distortion coefficients are kept in ``views.meta["distortion"]`` (per view name) for callers that care.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recon.cameras import Cameras, make_rigid, quat_to_rotmat, rotmat_to_quat
from recon.errors import ReconError
from recon.io.atomic import atomic_write_text
from recon.io.common import views_with_cameras
from recon.views import Views

# model id -> (name, number of parameters), from COLMAP's src/colmap/sensor/models.h
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
MODEL_IDS: dict[str, int] = {name: i for i, (name, _) in CAMERA_MODELS.items()}

# Perspective models we turn into K (+ distortion coefficients): name -> (fx, fy, cx, cy, distortion names)
_PINHOLE_PARTS: dict[str, tuple[int, int, int, int, tuple[str, ...]]] = {
    "SIMPLE_PINHOLE": (0, 0, 1, 2, ()),
    "PINHOLE": (0, 1, 2, 3, ()),
    "SIMPLE_RADIAL": (0, 0, 1, 2, ("k1",)),
    "RADIAL": (0, 0, 1, 2, ("k1", "k2")),
    "OPENCV": (0, 1, 2, 3, ("k1", "k2", "p1", "p2")),
}

DISTORTION_NOTE = (
    "images are not undistorted: K is the pinhole part of the camera and these coefficients (OpenCV model "
    "names) describe the lens distortion that remains in the pixels"
)


@dataclass
class ColmapCamera:
    """One COLMAP camera: ``model`` name, image ``width`` x ``height`` and its ``params`` (float64)."""

    id: int
    model: str
    width: int
    height: int
    params: np.ndarray

    def K(self) -> np.ndarray:
        """(3, 3) pinhole intrinsics in pixels of a ``width`` x ``height`` image."""
        fx, fy, cx, cy, _ = self._parts()
        p = self.params
        return np.array([[p[fx], 0.0, p[cx]], [0.0, p[fy], p[cy]], [0.0, 0.0, 1.0]])

    def distortion(self) -> dict[str, float]:
        """Distortion coefficients by OpenCV name (k1, k2, p1, p2); empty for pinhole models."""
        *_, names = self._parts()
        return {n: float(v) for n, v in zip(names, self.params[-len(names) :] if names else [], strict=True)}

    def _parts(self) -> tuple[int, int, int, int, tuple[str, ...]]:
        if self.model not in _PINHOLE_PARTS:
            supported = ", ".join(_PINHOLE_PARTS)
            raise ReconError(f"COLMAP camera {self.id} uses the {self.model} model; supported: {supported}")
        return _PINHOLE_PARTS[self.model]


@dataclass
class ColmapImage:
    """One registered image: world-to-camera quaternion ``qvec`` (w, x, y, z) and ``tvec``, its camera,
    file ``name`` and 2D observations ``xys`` (M, 2) with ``point3D_ids`` (M,) (-1 where unmatched)."""

    id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))

    def w2c(self) -> np.ndarray:
        """(4, 4) world-to-camera transform (float64)."""
        R = quat_to_rotmat(torch.as_tensor(self.qvec, dtype=torch.float64))
        return make_rigid(R, torch.as_tensor(self.tvec, dtype=torch.float64)).numpy()


@dataclass
class ColmapPoints:
    """P triangulated points: ``ids`` (P,) int64, ``xyz`` (P, 3) float64, ``rgb`` (P, 3) uint8,
    reprojection ``error`` (P,) float64 and per point a ``track`` (L, 2) int64 of (image_id, point2D_idx)."""

    ids: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray
    track: list[np.ndarray]

    @staticmethod
    def empty() -> ColmapPoints:
        return ColmapPoints(
            np.zeros((0,), np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros((0,)), []
        )

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class ColmapModel:
    """A COLMAP sparse model. Any of the three parts may be empty when its file is absent."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points3D: ColmapPoints


# --------------------------------------------------------------------------------------------------
# Binary reading
# --------------------------------------------------------------------------------------------------


class _Reader:
    """Sequential little-endian reads from a bytes buffer."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ReconError(f"COLMAP file {self.path} is truncated (corrupt or not a COLMAP binary file)")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.pos + size > len(self.data):
            raise ReconError(f"COLMAP file {self.path} is truncated (corrupt or not a COLMAP binary file)")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return out

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ReconError(f"COLMAP file {self.path} is truncated (unterminated image name)")
        s = self.data[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return s


def _read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    r = _Reader(path.read_bytes(), path)
    cameras = {}
    for _ in range(r.read("<Q")[0]):
        cam_id, model_id, width, height = r.read("<iiQQ")
        if model_id not in CAMERA_MODELS:
            raise ReconError(f"COLMAP file {path}: unknown camera model id {model_id}")
        name, n_params = CAMERA_MODELS[model_id]
        params = np.array(r.read(f"<{n_params}d"))
        cameras[cam_id] = ColmapCamera(cam_id, name, int(width), int(height), params)
    return cameras


def _read_images_bin(path: Path) -> dict[int, ColmapImage]:
    r = _Reader(path.read_bytes(), path)
    images = {}
    obs = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
    for _ in range(r.read("<Q")[0]):
        image_id, qw, qx, qy, qz, tx, ty, tz, cam_id = r.read("<i7di")
        name = r.cstring()
        n_points = r.read("<Q")[0]
        pts = r.array(obs, n_points)
        images[image_id] = ColmapImage(
            image_id,
            np.array([qw, qx, qy, qz]),
            np.array([tx, ty, tz]),
            cam_id,
            name,
            np.stack([pts["x"], pts["y"]], -1).astype(np.float64),
            pts["id"].astype(np.int64),
        )
    return images


def _read_points3D_bin(path: Path) -> ColmapPoints:
    r = _Reader(path.read_bytes(), path)
    n = r.read("<Q")[0]
    ids = np.empty(n, np.int64)
    xyz = np.empty((n, 3))
    rgb = np.empty((n, 3), np.uint8)
    err = np.empty(n)
    tracks = []
    for i in range(n):
        pid, x, y, z, cr, cg, cb, e, length = r.read("<Q3d3BdQ")
        ids[i], xyz[i], rgb[i], err[i] = pid, (x, y, z), (cr, cg, cb), e
        tracks.append(r.array(np.dtype("<i4"), 2 * length).reshape(length, 2).astype(np.int64))
    return ColmapPoints(ids, xyz, rgb, err, tracks)


# --------------------------------------------------------------------------------------------------
# Text reading
# --------------------------------------------------------------------------------------------------


def _data_lines(path: Path) -> list[str]:
    """Lines without comments, stripped; blank lines kept (images.txt uses them for empty point lists)."""
    return [ln.strip() for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]


def _bad_line(path: Path, line: str) -> ReconError:
    return ReconError(f"COLMAP file {path}: cannot parse line {line[:60]!r}")


def _read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    for line in _data_lines(path):
        if not line:
            continue
        tok = line.split()
        try:
            cam_id, model, width, height = int(tok[0]), tok[1], int(tok[2]), int(tok[3])
            params = np.array([float(v) for v in tok[4:]])
        except (IndexError, ValueError):
            raise _bad_line(path, line) from None
        if model not in MODEL_IDS or CAMERA_MODELS[MODEL_IDS[model]][1] != len(params):
            raise ReconError(f"COLMAP file {path}: camera {cam_id} has an unknown model or wrong parameters")
        cameras[cam_id] = ColmapCamera(cam_id, model, width, height, params)
    return cameras


def _read_images_txt(path: Path) -> dict[int, ColmapImage]:
    lines = _data_lines(path)
    images = {}
    i = 0
    while i < len(lines):
        if not lines[i]:  # stray blank line between entries
            i += 1
            continue
        head = lines[i]
        points = lines[i + 1] if i + 1 < len(lines) else ""  # always the line after the header, maybe empty
        i += 2
        tok = head.split(maxsplit=9)
        try:
            image_id = int(tok[0])
            q = np.array([float(v) for v in tok[1:5]])
            t = np.array([float(v) for v in tok[5:8]])
            cam_id, name = int(tok[8]), tok[9]
            vals = points.split()
            if len(vals) % 3:
                raise ValueError("POINTS2D must be (X, Y, POINT3D_ID) triples")
            xys = np.array([float(v) for v in vals[0::3]] + [float(v) for v in vals[1::3]]).reshape(2, -1).T
            pids = np.array([int(v) for v in vals[2::3]], dtype=np.int64)
        except (IndexError, ValueError):
            raise _bad_line(path, head) from None
        images[image_id] = ColmapImage(image_id, q, t, cam_id, name, xys.reshape(-1, 2), pids)
    return images


def _read_points3D_txt(path: Path) -> ColmapPoints:
    ids, xyz, rgb, err, tracks = [], [], [], [], []
    for line in _data_lines(path):
        if not line:
            continue
        tok = line.split()
        try:
            ids.append(int(tok[0]))
            xyz.append([float(v) for v in tok[1:4]])
            rgb.append([int(v) for v in tok[4:7]])
            err.append(float(tok[7]))
            tracks.append(np.array([int(v) for v in tok[8:]], dtype=np.int64).reshape(-1, 2))
        except (IndexError, ValueError):
            raise _bad_line(path, line) from None
    if not ids:
        return ColmapPoints.empty()
    return ColmapPoints(
        np.array(ids, np.int64), np.array(xyz, np.float64), np.array(rgb, np.uint8), np.array(err), tracks
    )


def read_colmap_model(model_dir: str | Path) -> ColmapModel:
    """Read a COLMAP model folder, preferring ``.bin`` files over ``.txt`` for each part.

    ``cameras`` is required; ``images`` and ``points3D`` come back empty when their files are absent (some
    datasets ship only cameras and points, e.g. LLFF's sparse/0).

    Raises:
        ReconError: no cameras file, or a file that cannot be parsed.
    """
    model_dir = Path(model_dir)

    def pick(stem: str) -> Path | None:
        for ext in (".bin", ".txt"):
            if (model_dir / f"{stem}{ext}").is_file():
                return model_dir / f"{stem}{ext}"
        return None

    cam_path = pick("cameras")
    if cam_path is None:
        raise ReconError(f"no COLMAP model in {model_dir} (expected cameras.bin or cameras.txt)")
    img_path, pts_path = pick("images"), pick("points3D")
    try:
        cameras = _read_cameras_bin(cam_path) if cam_path.suffix == ".bin" else _read_cameras_txt(cam_path)
        images = {}
        if img_path is not None:
            images = _read_images_bin(img_path) if img_path.suffix == ".bin" else _read_images_txt(img_path)
        points = ColmapPoints.empty()
        if pts_path is not None:
            binary = pts_path.suffix == ".bin"
            points = _read_points3D_bin(pts_path) if binary else _read_points3D_txt(pts_path)
    except UnicodeDecodeError as e:
        raise ReconError(f"COLMAP model in {model_dir} has a text file that is not text: {e}") from None
    return ColmapModel(cameras, images, points)


def find_colmap_model_dir(root: Path) -> Path | None:
    """The model folder of a dataset: root/sparse/0, root/sparse, or root itself (first with cameras.*)."""
    for d in (root / "sparse" / "0", root / "sparse", root):
        if (d / "cameras.bin").is_file() or (d / "cameras.txt").is_file():
            return d
    return None


def load_colmap(root: str | Path, max_side: int | None = None) -> Views:
    """A COLMAP dataset laid out as ``root/images`` + ``root/sparse/0`` (or ``root/sparse``) as Views.

    Views are the model's registered images sorted by name; their reference cameras come from the model
    (K scaled to the loaded images). Non-zero distortion coefficients go into ``meta["distortion"]``
    ({name: {"model": ..., "k1": ...}}) with ``meta["distortion_note"]``.

    Raises:
        ReconError: no model, a model without images, unsupported camera models or missing image files.
    """
    root = Path(root)
    model_dir = find_colmap_model_dir(root)
    if model_dir is None:
        raise ReconError(f"no COLMAP model under {root} (expected sparse/0/cameras.bin or cameras.txt)")
    model = read_colmap_model(model_dir)
    if not model.images:
        raise ReconError(f"COLMAP model {model_dir} has no images.bin/images.txt, so no camera poses")
    image_dir = root / "images" if (root / "images").is_dir() else root
    entries = sorted(model.images.values(), key=lambda im: im.name)
    paths = [image_dir / im.name for im in entries]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ReconError(f"COLMAP image {missing[0].name} is not in {image_dir} ({len(missing)} missing)")
    K, w2c, sizes, distortion = [], [], [], {}
    for im in entries:
        if im.camera_id not in model.cameras:
            raise ReconError(f"COLMAP image {im.name} uses camera {im.camera_id}, absent from {model_dir}")
        cam = model.cameras[im.camera_id]
        K.append(cam.K())
        w2c.append(im.w2c())
        sizes.append((cam.width, cam.height))
        coeffs = cam.distortion()
        if any(abs(v) > 0 for v in coeffs.values()):
            distortion[im.name] = {"model": cam.model, **coeffs}
    meta: dict = {"model_dir": str(model_dir)}
    if distortion:
        meta["distortion"] = distortion
        meta["distortion_note"] = DISTORTION_NOTE
    return views_with_cameras(
        paths, np.stack(K), np.stack(w2c), sizes, max_side=max_side, source="colmap", root=root, meta=meta,
        names=[im.name for im in entries],
    )


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def write_colmap_text(
    model_dir: str | Path, cameras: Cameras, points_xyz: np.ndarray, points_rgb: np.ndarray
) -> None:
    """Write ``cameras.txt``, ``images.txt`` and ``points3D.txt`` into ``model_dir`` (created), atomically.

    One PINHOLE camera per image (COLMAP ids i + 1 for camera and image i); images get an empty 2D point
    line; points get error 0 and empty tracks (they come from our reconstruction, not from matching).
    Names are written verbatim as the last field of their line (COLMAP's format; a name with spaces
    stays readable by :func:`read_colmap_model`, though readers that split lines on spaces will cut it).

    Args:
        model_dir: output folder, e.g. ``OUT/sparse/0``.
        cameras: N cameras (K in pixels of their ``sizes``, w2c OpenCV).
        points_xyz: (P, 3) world points.
        points_rgb: (P, 3) uint8 colours.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    K = cameras.K.detach().double().cpu()
    w2c = cameras.w2c.detach().double().cpu()
    q = rotmat_to_quat(w2c[:, :3, :3]).numpy()
    t = w2c[:, :3, 3].numpy()
    sizes = cameras.sizes.cpu().numpy()
    n = len(cameras)

    cam_lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {n}",
    ]
    for i in range(n):
        fx, fy, cx, cy = (float(K[i, 0, 0]), float(K[i, 1, 1]), float(K[i, 0, 2]), float(K[i, 1, 2]))
        cam_lines.append(f"{i + 1} PINHOLE {int(sizes[i, 0])} {int(sizes[i, 1])} {fx!r} {fy!r} {cx!r} {cy!r}")

    img_lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {n}, mean observations per image: 0",
    ]
    for i, name in enumerate(cameras.names):
        if not name.strip() or "\n" in name or "\r" in name:
            raise ReconError(f"image name {name!r} cannot go into a COLMAP text model (empty or multi-line)")
        vals = " ".join(repr(float(v)) for v in (*q[i], *t[i]))
        img_lines += [f"{i + 1} {vals} {i + 1} {name}", ""]

    xyz = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
    rgb = np.asarray(points_rgb).reshape(-1, 3)
    if xyz.shape[0] != rgb.shape[0]:
        raise ValueError(f"{xyz.shape[0]} points but {rgb.shape[0]} colours")
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    pt_lines = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        f"# Number of points: {xyz.shape[0]}, mean track length: 0",
    ]
    pt_lines += [
        f"{j + 1} {p[0]!r} {p[1]!r} {p[2]!r} {c[0]} {c[1]} {c[2]} 0"
        for j, (p, c) in enumerate(zip(xyz.tolist(), rgb.tolist(), strict=True))
    ]

    atomic_write_text(model_dir / "cameras.txt", "\n".join(cam_lines) + "\n")
    atomic_write_text(model_dir / "images.txt", "\n".join(img_lines) + "\n")
    atomic_write_text(model_dir / "points3D.txt", "\n".join(pt_lines) + "\n")
