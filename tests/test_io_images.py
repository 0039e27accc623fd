"""Image loading: EXIF orientation and focal, alpha on white, 16-bit, grayscale, resizing, folder errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from recon.errors import ReconError
from recon.io.images import list_images, load_image, load_image_folder


def _quadrant_image(h: int = 40, w: int = 60) -> np.ndarray:
    """Black image with a white top-left quadrant: orientation errors move the white block."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = 255
    return a


def test_exif_orientation_and_focal(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels must be rotated 90 degrees clockwise for display
    exif.get_ifd(0x8769)[0xA405] = 50  # 50 mm equivalent
    p = tmp_path / "rot.jpg"
    Image.fromarray(_quadrant_image()).save(p, exif=exif, quality=98)
    img, f = load_image(p)
    assert tuple(img.shape) == (60, 40, 3)  # portrait after rotation
    # rotating clockwise moves the top-left block to the top-right
    assert img[:30, 20:].mean() > 0.95 and img[:30, :20].mean() < 0.05 and img[30:].mean() < 0.05
    assert f == pytest.approx(50 / 36 * 60)
    small, f_small = load_image(p, max_side=30)
    assert tuple(small.shape) == (30, 20, 3)
    assert f_small == pytest.approx(50 / 36 * 30)


def test_no_exif_gives_no_focal(tmp_path):
    p = tmp_path / "plain.png"
    Image.fromarray(_quadrant_image()).save(p)
    img, f = load_image(p)
    assert f is None
    assert img.dtype == torch.float32
    assert torch.equal(img, torch.from_numpy(_quadrant_image() / 255.0).float())


def test_rgba_and_la_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0
    rgba[:4, :, 3] = 255  # top half opaque red-ish, bottom half fully transparent
    rgba[4:6, :, 3] = 51  # 20 % opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img, _ = load_image(tmp_path / "a.png")
    assert torch.allclose(img[0, 0], torch.tensor([200 / 255, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(img[7, 7], torch.ones(3))
    a = 51 / 255
    expect = torch.tensor([200 / 255 * a + 1 - a, 1 - a, 1 - a])
    assert torch.allclose(img[4, 0], expect, atol=1e-6)
    la = np.stack([np.full((4, 4), 100, np.uint8), np.full((4, 4), 0, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    img, _ = load_image(tmp_path / "la.png")
    assert torch.allclose(img, torch.ones(4, 4, 3))


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "p.png", transparency=0)
    img, _ = load_image(tmp_path / "p.png")
    assert torch.allclose(img[0, 0], torch.ones(3))  # transparent index -> white
    assert torch.allclose(img[1, 1], torch.tensor([1.0, 0.0, 0.0]))


def test_16bit_png_color_and_gray(tmp_path):
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, size=(6, 5, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    img, _ = load_image(tmp_path / "c16.png")
    assert torch.allclose(img, torch.from_numpy(rgb16.astype(np.float32) / 65535), atol=1e-7)
    # values that differ only in the low byte must stay distinct (no truncation to 8 bits)
    assert len(torch.unique(img)) > 60
    gray16 = rng.integers(0, 65536, size=(6, 5), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    img, _ = load_image(tmp_path / "g16.png")
    assert tuple(img.shape) == (6, 5, 3)
    assert torch.allclose(img[..., 1], torch.from_numpy(gray16.astype(np.float32) / 65535), atol=1e-7)


def test_grayscale_to_rgb(tmp_path):
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    img, _ = load_image(tmp_path / "g.png")
    assert tuple(img.shape) == (3, 4, 3)
    for c in range(3):
        assert torch.allclose(img[..., c], torch.from_numpy(g / 255.0).float())


def test_resize_max_side_area_and_never_upscale(tmp_path):
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, ::2] = 255  # one-pixel stripes: area averaging gives mid grey, nearest would give 0 or 1
    Image.fromarray(a).save(tmp_path / "s.png")
    img, _ = load_image(tmp_path / "s.png", max_side=20)
    assert tuple(img.shape) == (10, 20, 3)
    assert torch.allclose(img, torch.full_like(img, 0.5), atol=1e-3)
    big, _ = load_image(tmp_path / "s.png", max_side=1000)
    assert tuple(big.shape) == (40, 80, 3)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(ReconError, match="bad.jpg"):
        load_image(bad)
    good = tmp_path / "trunc.png"
    Image.fromarray(_quadrant_image()).save(good)
    good.write_bytes(good.read_bytes()[:60])  # truncated stream
    with pytest.raises(ReconError, match="trunc.png"):
        load_image(good)
    with pytest.raises(ReconError, match="does not exist"):
        load_image(tmp_path / "nope.png")


def test_folder_loading_sorted_and_resized_to_smallest(tmp_path):
    Image.fromarray(_quadrant_image(40, 60)).save(tmp_path / "b.png")
    Image.fromarray(_quadrant_image(20, 30)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.png"]
    views = load_image_folder(tmp_path)
    assert views.names == ["a.png", "b.png"] and views.source == "folder" and views.cameras is None
    assert tuple(views.images.shape) == (2, 20, 30, 3)
    assert torch.allclose(views.images[0], views.images[1], atol=1e-6)  # the same picture at one size
    sub = load_image_folder(tmp_path, names=["b.png"])
    assert sub.names == ["b.png"]


def test_folder_errors(tmp_path):
    with pytest.raises(ReconError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    f = tmp_path / "file.png"
    Image.fromarray(_quadrant_image()).save(f)
    with pytest.raises(ReconError, match="not a folder"):
        load_image_folder(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReconError, match="no images"):
        load_image_folder(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(_quadrant_image(40, 60)).save(mixed / "wide.png")
    Image.fromarray(_quadrant_image(40, 40)).save(mixed / "square.png")
    with pytest.raises(ReconError, match="aspect") as e:
        load_image_folder(mixed)
    assert "wide.png" in str(e.value) and "square.png" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ReconError, match="missing.png"):
        load_image_folder(mixed, names=["missing.png"])


def test_large_jpeg_draft_decode_matches_full_decode(tmp_path):
    # a 800x600 photo-like pattern; loading at max_side 200 may decode at 1/2 or 1/4 scale in libjpeg
    yy, xx = np.mgrid[0:600, 0:800].astype(np.float32)
    img = np.stack([xx / 800, yy / 600, 0.5 + 0.5 * np.sin(xx / 23.0) * np.cos(yy / 17.0)], -1)
    img[200:260, 300:420] = 1.0  # a sharp block: a geometric shift would show at its edges
    p = tmp_path / "big.jpg"
    Image.fromarray((img * 255).round().astype(np.uint8)).save(p, quality=95)
    small, _ = load_image(p, max_side=200)
    full, _ = load_image(p)
    ref = cv2.resize(full.numpy(), (200, 150), interpolation=cv2.INTER_AREA)
    assert tuple(small.shape) == (150, 200, 3)
    assert np.abs(small.numpy() - ref).mean() < 0.004  # measured 0.002; a one-pixel shift gives 0.008
