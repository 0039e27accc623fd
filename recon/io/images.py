"""Image loading: one photo -> (H, W, 3) float32 RGB in [0, 1], and folders of photos -> :class:`Views`.

What :func:`load_image` normalises away, so that every later stage sees plain RGB:

- EXIF orientation (phones store portrait photos as rotated landscape pixels plus a tag): applied, so the
  returned pixels are upright as a viewer shows them.
- Alpha (RGBA, LA, palette with transparency): composited on white, the usual choice for object
  captures with masked-out backgrounds (NeRF-synthetic style).
- Grayscale: replicated to three channels.
- 16-bit PNG/TIFF: read at full depth with OpenCV (PIL would truncate 16-bit RGB) and divided by 65535.
- Size: downscaled with ``cv2.INTER_AREA`` (the anti-aliased choice for shrinking) so the long side is
  at most ``max_side``; images are never upscaled.
- Large photos: any size up to :data:`MAX_PIXELS` (400 megapixels; a 200-megapixel phone photo is
  16320 x 12240) is read without PIL's decompression-bomb warning; larger files are refused with a
  :class:`ReconError` before their pixels are decoded. JPEGs are decoded at 1/2, 1/4 or 1/8 scale when
  that is still at least the final size (libjpeg's DCT scaling), and other 8-bit images above
  :data:`REDUCE_ABOVE_PIXELS` are box-reduced by an exact integer factor before the float conversion,
  so a huge photo never exists as a full-size float array.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from recon.errors import ReconError
from recon.views import Views

IMAGE_EXTS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
"""Lower-case file extensions treated as images."""

MAX_PIXELS = 400_000_000
"""The largest image recon reads, in pixels (width x height): 400 megapixels."""
REDUCE_ABOVE_PIXELS = 50_000_000
"""8-bit non-JPEG images above this many pixels are box-reduced (exact integer factor) while still 8-bit."""

# PIL warns above MAX_IMAGE_PIXELS and refuses above twice that (its decompression-bomb guard); recon
# applies its own limit, MAX_PIXELS, from the header before decoding (see _open_image).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class UnreadableImage(ReconError):
    """An image file recon cannot read; ``reason`` is the short cause (for a list of several files)."""

    def __init__(self, path: Path, reason: str, hint: str = "is the file corrupt or not an image?") -> None:
        super().__init__(f"cannot read image {path}: {reason}" + (f" ({hint})" if hint else ""))
        self.path = path
        self.reason = reason

_EXIF_IFD = 0x8769  # pointer to the Exif sub-IFD
_TAG_ORIENTATION = 0x0112
_TAG_FOCAL_35MM = 0xA405  # FocalLengthIn35mmFilm, in millimetres
_FULL_FRAME_LONG_MM = 36.0  # long side of a 35 mm "full frame" sensor (36 x 24 mm)

# 16-bit greyscale PIL modes; 16-bit colour is detected from the PNG header instead (PIL opens it as 8-bit).
_PIL_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def list_images(folder: str | Path) -> list[Path]:
    """Image files (by extension, case-insensitive) directly inside ``folder``, sorted by file name."""
    folder = Path(folder)
    found = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")]
    return sorted((p for p in found if p.is_file()), key=lambda p: p.name)


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG's IHDR chunk (byte 24), or None when ``path`` is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n":
        return head[24]
    return None


def _focal_35mm(exif: Image.Exif | None) -> float | None:
    """FocalLengthIn35mmFilm (mm) from PIL EXIF (it lives in the Exif sub-IFD), or None when absent/zero."""
    if exif is None:
        return None
    value = exif.get_ifd(_EXIF_IFD).get(_TAG_FOCAL_35MM, exif.get(_TAG_FOCAL_35MM))
    try:
        f35 = float(value)
    except (TypeError, ValueError):
        return None
    return f35 if f35 > 0 else None


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1..8 to an (H, W, C) array, as ``ImageOps.exif_transpose`` does for PIL."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 1)[::-1],
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


def _to_rgb_on_white(arr: np.ndarray) -> np.ndarray:
    """(H, W, C) float in [0, 1] with C in {1, 2, 3, 4} (gray, gray+alpha, RGB, RGBA) -> (H, W, 3) RGB."""
    if arr.ndim == 2:
        arr = arr[..., None]
    c = arr.shape[-1]
    if c in (2, 4):
        color, alpha = arr[..., : c - 1], arr[..., c - 1 :]
        arr = color * alpha + (1.0 - alpha)  # "over" a white background
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def _decode_high_depth(path: Path, orientation: int) -> np.ndarray:
    """16-bit (or float) images via OpenCV, which keeps the full depth; returns RGB(A) floats in [0, 1]."""
    raw = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ReconError(f"cannot decode image {path}: the file is corrupt or in an unsupported format")
    if raw.dtype == np.uint16:
        arr = raw.astype(np.float32) / 65535.0
    elif raw.dtype == np.uint8:
        arr = raw.astype(np.float32) / 255.0
    else:
        arr = np.clip(raw.astype(np.float32), 0.0, 1.0)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr[..., ::-1]  # BGR -> RGB
    elif arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., [2, 1, 0, 3]]  # BGRA -> RGBA
    if arr.ndim == 2:
        arr = arr[..., None]
    return _orient(np.ascontiguousarray(arr), orientation)


def _standard_mode(img: Image.Image) -> Image.Image:
    """A PIL image in one of the modes L, LA, RGB, RGBA (8 bits per channel)."""
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "PA":
        return img.convert("RGBA")
    if img.mode == "1":
        return img.convert("L")
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        return img.convert("RGBA" if "A" in img.getbands() else "RGB")  # CMYK, YCbCr, La, RGBa, ...
    return img


def _reduce_large(img: Image.Image, max_side: int | None) -> Image.Image:
    """Box-reduce an 8-bit image of more than REDUCE_ABOVE_PIXELS by the largest integer factor that divides
    both sides and keeps it at least as large as the final size (an exact, corner-aligned average, so the
    final INTER_AREA resize keeps the geometry of a direct one)."""
    width, height = img.size
    if max_side is None or width * height <= REDUCE_ABOVE_PIXELS:
        return img
    target = _fit_size(width, height, max_side)
    for k in range(max(width // target[0], 1), 1, -1):
        if width % k == 0 and height % k == 0 and width // k >= target[0] and height // k >= target[1]:
            return img.reduce(k)
    return img


def _decode_pil(img: Image.Image, max_side: int | None = None) -> np.ndarray:
    """An (already EXIF-transposed) PIL image -> RGB(A)/gray(+alpha) float array in [0, 1]."""
    img = _reduce_large(_standard_mode(img), max_side)
    return np.asarray(img, dtype=np.float32) / 255.0


@contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` with recon's size limit (MAX_PIXELS) checked from the header, before any decoding,
    and without PIL's decompression-bomb warning below it.

    Raises:
        ReconError: the image is larger than MAX_PIXELS.
        UnreadableImage: the file is not an image PIL can open.
    """
    too_large = (f"image {path} is larger than {MAX_PIXELS // 1_000_000} megapixels, the most recon reads; "
                 "downscale it first")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError:
        raise ReconError(too_large) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnreadableImage(path, str(e)) from None
    with img:
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise ReconError(f"{too_large} ({width}x{height} is {width * height / 1e6:.0f} megapixels)")
        yield img


def _draft_jpeg(img: Image.Image, max_side: int | None) -> None:
    """Let libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale (DCT scaling) when that stays at least as
    large as the final size: several times faster for phone photos loaded small.

    Only scales that divide both sides exactly are used, so the draft is an exact corner-aligned
    downscale and the final INTER_AREA resize keeps the geometry (and K scaling) of a direct resize.
    """
    if img.format != "JPEG" or max_side is None or img.mode not in ("RGB", "L"):
        return
    width, height = img.size
    target = _fit_size(width, height, max_side)
    for s in (8, 4, 2):
        if width % s == 0 and height % s == 0 and width // s >= target[0] and height // s >= target[1]:
            img.draft(img.mode, (width // s, height // s))
            return


def _resize_area(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    if (arr.shape[1], arr.shape[0]) == (width, height):
        return arr
    return cv2.resize(arr, (width, height), interpolation=cv2.INTER_AREA)


def _fit_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(W, H) shrunk (never enlarged) so that max(W, H) <= max_side, keeping the aspect ratio."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def image_size(path: str | Path) -> tuple[int, int]:
    """(W, H) of an image file after EXIF orientation, read from its header without decoding the pixels."""
    path = Path(path)
    try:
        with _open_image(path) as img:
            w, h = img.size
            orientation = int(img.getexif().get(_TAG_ORIENTATION, 1) or 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnreadableImage(path, str(e), hint="") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_image(path: str | Path, max_side: int | None = None) -> tuple[torch.Tensor, float | None]:
    """Load one photo as upright RGB.

    Args:
        path: image file.
        max_side: when set, downscale (INTER_AREA) so the long side is at most this many pixels.

    Returns:
        image: (H, W, 3) float32 tensor in [0, 1] (after EXIF orientation, alpha on white, resizing).
        exif_focal_px: focal length in pixels of the *returned* image from EXIF FocalLengthIn35mmFilm, or
            None when the tag is absent. A 35 mm-equivalent focal refers to a 36 x 24 mm frame, so we use
            ``f_px = f35 / 36 * long_side_px`` (the long side of the oriented image; for a landscape photo
            that is its width). This is exact for 3:2 sensors; for 4:3 phone sensors, whose 35 mm
            equivalent is defined on the diagonal (43.3 mm), it underestimates f by about 4 %
            (36 vs 0.8 * 43.3 = 34.6 mm): a prior, not a calibration.

    Raises:
        UnreadableImage: the file is missing, corrupt or not an image (the message names the file).
        ReconError: the image is larger than :data:`MAX_PIXELS`.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(path, "the file does not exist", hint="")
    try:
        with _open_image(path) as img:
            exif = img.getexif()
            orientation = int(exif.get(_TAG_ORIENTATION, 1) or 1)
            f35 = _focal_35mm(exif)
            full_size = img.size[::-1] if orientation in (5, 6, 7, 8) else img.size
            high_depth = img.mode in _PIL_HIGH_DEPTH_MODES or (_png_bit_depth(path) or 8) > 8
            if high_depth:
                arr = _decode_high_depth(path, orientation)
            else:
                _draft_jpeg(img, max_side)
                img.load()  # decode now, so truncated/corrupt data fails here with the file named
                arr = _decode_pil(ImageOps.exif_transpose(img), max_side)
    except ReconError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnreadableImage(path, str(e)) from None
    rgb = _to_rgb_on_white(arr)
    new_w, new_h = _fit_size(*full_size, max_side)  # from the full size: a JPEG draft is only a shortcut
    rgb = _resize_area(np.ascontiguousarray(rgb, dtype=np.float32), new_w, new_h)
    focal = None if f35 is None else f35 / _FULL_FRAME_LONG_MM * max(new_w, new_h)
    return torch.from_numpy(np.clip(rgb, 0.0, 1.0)), focal


def load_images(paths: list[Path], max_side: int | None = None) -> tuple[torch.Tensor, list[float | None]]:
    """Load several photos into one (N, H, W, 3) batch of a common size.

    Images whose aspect ratios agree within 1 % but whose sizes differ are all resized (INTER_AREA) to the
    smallest one; EXIF focals are rescaled with them.

    Raises:
        ReconError: unreadable images (every one of them named in one message), or aspect ratios that
            differ by more than 1 % (both files named).
    """
    if not paths:
        raise ReconError("no images to load")
    images: list[torch.Tensor] = []
    focals: list[float | None] = []
    bad: list[UnreadableImage] = []
    for p in paths:
        try:
            img, f = load_image(p, max_side)
        except UnreadableImage as e:
            bad.append(e)
            continue
        images.append(img)
        focals.append(f)
    if len(bad) == 1:
        raise bad[0]
    if bad:
        listed = "; ".join(f"{e.path.name} ({e.reason})" for e in bad)
        raise ReconError(f"{len(bad)} of {len(paths)} images in {bad[0].path.parent} cannot be read (corrupt "
                         f"or not images): {listed}")
    sizes = [(int(im.shape[1]), int(im.shape[0])) for im in images]
    aspects = [w / h for w, h in sizes]
    ref = 0
    for i, a in enumerate(aspects):
        if abs(a / aspects[ref] - 1.0) > 0.01:
            (w0, h0), (w1, h1) = sizes[ref], sizes[i]
            raise ReconError(
                f"images have different aspect ratios: {paths[ref].name} is {w0}x{h0} but {paths[i].name} is "
                f"{w1}x{h1}; use photos from one camera setting (or crop them to one aspect ratio)"
            )
    target_w, target_h = min(sizes, key=lambda s: s[0] * s[1])
    for i, (w, h) in enumerate(sizes):
        if (w, h) != (target_w, target_h):
            images[i] = torch.from_numpy(_resize_area(images[i].numpy(), target_w, target_h))
            if focals[i] is not None:
                focals[i] = focals[i] * max(target_w, target_h) / max(w, h)
    return torch.stack(images), focals


def load_image_folder(
    folder: str | Path, max_side: int | None = None, names: list[str] | None = None
) -> Views:
    """All images of a folder (sorted by file name) as :class:`Views` without reference cameras.

    Args:
        folder: the folder holding the photos (not searched recursively).
        max_side: optional cap on the long side of the loaded images (never upscaled).
        names: optional file names to load, in this order (default: every image in the folder).

    Raises:
        ReconError: missing folder, not a folder, no images, a missing named image, an unreadable image,
            or aspect ratios that differ by more than 1 %.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ReconError(f"input folder {folder} does not exist")
    if not folder.is_dir():
        raise ReconError(f"input {folder} is not a folder; pass the folder that holds the photos")
    if names is None:
        paths = list_images(folder)
        if not paths:
            exts = ", ".join(sorted(IMAGE_EXTS))
            raise ReconError(f"no images in {folder} (looked for files ending in {exts})")
    else:
        paths = [folder / n for n in names]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            n_miss = f"{len(missing)} of {len(paths)} missing"
            raise ReconError(f"image {missing[0]} is not in {folder} ({n_miss})")
    images, focals = load_images(paths, max_side)
    return Views(
        images=images,
        names=[p.name for p in paths],
        cameras=None,
        exif_focal_px=focals,
        source="folder",
        root=str(folder),
        files=[str(p) for p in paths],
    )
