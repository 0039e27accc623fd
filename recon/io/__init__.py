"""Input and output: images and dataset readers (-> Views), cameras.json, COLMAP, PNGs, atomic writes.

Readers return :class:`recon.views.Views` whose reference cameras follow CONVENTIONS (OpenCV w2c, K in
pixels of the loaded images). Every writer is atomic (temporary file in the same folder, then rename).
io holds file formats of leaf types only: the Gaussian codecs (3DGS PLY, .splat) live beside their type in
:mod:`recon.gaussians`, the prior cache in :mod:`recon.priors.cache`, and the run's output folder in
:mod:`recon.outputs` and :mod:`recon.run_folder`.
"""

from recon.io.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from recon.io.cameras_json import load_cameras_json, save_cameras_json
from recon.io.colmap import ColmapModel, load_colmap, read_colmap_model, write_colmap_text
from recon.io.datasets import detect_format, load_views
from recon.io.dtu import load_dtu
from recon.io.images import IMAGE_EXTS, image_size, list_images, load_image, load_image_folder, load_images
from recon.io.llff import load_llff
from recon.io.middlebury import load_middlebury
from recon.io.nerf import load_nerf
from recon.io.strecha import load_strecha

__all__ = [
    "IMAGE_EXTS",
    "ColmapModel",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "detect_format",
    "image_size",
    "list_images",
    "load_cameras_json",
    "load_colmap",
    "load_dtu",
    "load_image",
    "load_image_folder",
    "load_images",
    "load_llff",
    "load_middlebury",
    "load_nerf",
    "load_strecha",
    "load_views",
    "read_colmap_model",
    "save_cameras_json",
    "write_colmap_text",
]
