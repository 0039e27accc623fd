"""One entry point for every input: detect what a path holds and load it as :class:`Views`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from recon.errors import ReconError
from recon.io.colmap import find_colmap_model_dir, load_colmap
from recon.io.dtu import load_dtu
from recon.io.images import list_images, load_image_folder
from recon.io.llff import load_llff
from recon.io.middlebury import find_par_file, load_middlebury
from recon.io.nerf import load_nerf, transforms_files
from recon.io.strecha import CAMERA_DIR, load_strecha
from recon.views import Views

LOADERS: dict[str, Callable[..., Views]] = {
    "nerf": load_nerf,
    "llff": load_llff,
    "colmap": load_colmap,
    "middlebury": load_middlebury,
    "dtu": load_dtu,
    "strecha": load_strecha,
    "folder": load_image_folder,
}
"""Format name -> ``loader(root, max_side)``, in detection order."""

SUPPORTED = (
    "an image folder (or a folder with images/), NeRF transforms.json, LLFF poses_bounds.npy, "
    "COLMAP sparse/0, Middlebury *_par.txt, DTU cameras.npz, Strecha gt_dense_cameras/*.camera"
)

# A dataset file passed instead of its folder: file name -> format (the folder is the file's parent).
_MARKER_FILES = {
    "transforms.json": "nerf",
    "transforms_train.json": "nerf",
    "poses_bounds.npy": "llff",
    "cameras.npz": "dtu",
}


def _resolve(path: Path) -> tuple[Path, str | None]:
    """(folder to load, format implied by a marker file or None)."""
    if not path.exists():
        raise ReconError(f"input {path} does not exist")
    if path.is_file():
        if path.name in _MARKER_FILES:
            return path.parent, _MARKER_FILES[path.name]
        if path.name.endswith("_par.txt"):
            return path.parent, "middlebury"
        raise ReconError(f"input {path} is a file; pass a folder holding {SUPPORTED}")
    return path, None


def detect_format(path: str | Path) -> str:
    """The format of a dataset folder: one of ``LOADERS``' keys.

    Checked in this order (first match wins): nerf (transforms*.json), llff (poses_bounds.npy), colmap
    (sparse/ or cameras.txt/.bin with an images file), middlebury (*_par.txt), dtu (cameras.npz),
    strecha (gt_dense_cameras/ or *.camera), folder (images in the folder or in its images/).

    Raises:
        ReconError: the path does not exist, or holds none of the supported formats.
    """
    root, fmt = _resolve(Path(path))
    if fmt is not None:
        return fmt
    if transforms_files(root):
        return "nerf"
    if (root / "poses_bounds.npy").is_file():
        return "llff"
    model_dir = find_colmap_model_dir(root)
    if model_dir is not None and any((model_dir / f"images.{ext}").is_file() for ext in ("bin", "txt")):
        return "colmap"
    if find_par_file(root) is not None:
        return "middlebury"
    if (root / "cameras.npz").is_file():
        return "dtu"
    if (root / CAMERA_DIR).is_dir() or any(root.glob("*.camera")):
        return "strecha"
    if list_images(root) or ((root / "images").is_dir() and list_images(root / "images")):
        return "folder"
    if model_dir is not None:
        raise ReconError(f"COLMAP model {model_dir} has no images.bin/images.txt and {root} has no images")
    raise ReconError(f"found nothing to load in {root}; supported inputs: {SUPPORTED}")


def load_views(path: str | Path, max_side: int | None = None) -> Views:
    """Detect the format of ``path`` (see :func:`detect_format`) and load it.

    Args:
        path: a dataset folder, an image folder, or a dataset's marker file (e.g. transforms.json).
        max_side: optional cap on the long side of the loaded images (never upscaled).

    Returns:
        Views; ``views.cameras`` holds the dataset's reference cameras (None for a plain image folder).
    """
    root, _ = _resolve(Path(path))
    fmt = detect_format(path)
    if fmt == "folder" and not list_images(root):
        root = root / "images"
    return LOADERS[fmt](root, max_side)
