"""Dataset readers: real scenes checked by epipolar geometry, synthetic files checked by round trips.

The real-scene tests match SIFT features between two neighbouring views and measure the Sampson
distance of the matches to the epipolar geometry of the reader's cameras (F from K and w2c). A reader
with a wrong axis convention, transposed rotation, unscaled K or swapped images gives distances of many
pixels; the data sets' own calibrations give 0.1-0.4 px.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import shared_scene
from PIL import Image

from recon.cameras import Cameras, intrinsics, invert_rigid, look_at_w2c, skew
from recon.errors import ReconError
from recon.io.datasets import detect_format, load_views
from recon.io.dtu import MONOSDF_CROP
from recon.views import Views

# --------------------------------------------------------------------------------------------------
# Epipolar check on the shared scenes
# --------------------------------------------------------------------------------------------------


def _sift(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    gray = cv2.cvtColor((image.numpy() * 255).round().astype(np.uint8), cv2.COLOR_RGB2GRAY)
    kps, desc = cv2.SIFT_create(nfeatures=2000).detectAndCompute(gray, None)
    # OpenCV puts pixel centres at integers; CONVENTIONS puts them at +0.5
    return np.array([k.pt for k in kps], dtype=np.float64) + 0.5, desc


def _matches(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """SIFT matches (Lowe ratio 0.75), then RANSAC on F estimated from the matches alone (outlier removal
    that knows nothing about the reader's cameras)."""
    (pa, da), (pb, db) = _sift(a), _sift(b)
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < 0.75 * m[1].distance]
    x1, x2 = pa[[m.queryIdx for m in good]], pb[[m.trainIdx for m in good]]
    _, mask = cv2.findFundamentalMat(x1, x2, cv2.FM_RANSAC, 1.5, 0.999)
    keep = mask.ravel().astype(bool)
    return x1[keep], x2[keep]


def fundamental(cameras: Cameras, i: int, j: int) -> np.ndarray:
    """F with x_j^T F x_i = 0 for pixels of view i and j (float64)."""
    K, w2c = cameras.K.double(), cameras.w2c.double()
    rel = w2c[j] @ invert_rigid(w2c[i])  # camera i -> camera j
    E = skew(rel[:3, 3]) @ rel[:3, :3]
    return (torch.linalg.inv(K[j]).T @ E @ torch.linalg.inv(K[i])).numpy()


def sampson_px(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Sampson distance (pixels) of correspondences x1 <-> x2 (M, 2) to F."""
    h1 = np.c_[x1, np.ones(len(x1))]
    h2 = np.c_[x2, np.ones(len(x2))]
    Fx1, Ftx2 = h1 @ F.T, h2 @ F
    num = np.sum(h2 * Fx1, axis=1) ** 2
    den = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2
    return np.sqrt(num / den)


SCENES = [
    ("llff_fern", "llff", None, (378, 504)),
    ("middlebury_templeSparseRing", "middlebury", None, (480, 640)),
    ("dtu_scan24_monosdf", "dtu", None, (384, 384)),
    ("strecha_fountain-P11", "strecha", 1024, (683, 1024)),
]


@pytest.mark.parametrize(("scene", "fmt", "max_side", "hw"), SCENES, ids=[s[0] for s in SCENES])
def test_reader_matches_epipolar_geometry(scene, fmt, max_side, hw):
    views = load_views(shared_scene(scene), max_side=max_side)
    assert views.source == fmt and views.cameras is not None
    assert tuple(views.images.shape[1:3]) == hw
    assert torch.equal(views.cameras.sizes, torch.tensor([[hw[1], hw[0]]] * len(views)))
    x1, x2 = _matches(views.images[0], views.images[1])
    assert len(x1) >= 30, f"only {len(x1)} matches"
    d = sampson_px(fundamental(views.cameras, 0, 1), x1, x2)
    median = float(np.median(d))
    print(f"{scene}: {len(x1)} matches, median Sampson distance {median:.3f} px")
    assert median < 1.0
    # the same matches against a wrong geometry (view 0 vs a distant view) are far off: the check has teeth
    far = len(views) // 2
    assert float(np.median(sampson_px(fundamental(views.cameras, 0, far), x1, x2))) > 3.0


def test_detect_format_of_shared_scenes():
    for scene, fmt, *_ in SCENES:
        assert detect_format(shared_scene(scene)) == fmt


# --------------------------------------------------------------------------------------------------
# Synthetic round trips: files written here from each format's documentation, read back by the readers
# --------------------------------------------------------------------------------------------------

W, H = 40, 30


def _cameras(n: int = 3, w: int = W, h: int = H) -> Cameras:
    angles = torch.linspace(0.2, 1.4, n)
    eyes = torch.stack([4 * torch.cos(angles), 4 * torch.sin(angles), 1.0 + 0.3 * angles], -1)
    w2c = torch.stack([look_at_w2c(e, torch.tensor([0.1, -0.2, 0.3])) for e in eyes]).double()
    K = torch.stack([intrinsics(50.0 + 3 * i, 52.0, w / 2 + 1.5, h / 2 - 0.75, dtype=torch.float64)
                     for i in range(n)])
    return Cameras(K, w2c, torch.tensor([[w, h]] * n), [f"im{i}.png" for i in range(n)])


def _write_images(folder, names, w: int = W, h: int = H) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(names):
        Image.fromarray(np.full((h, w, 3), 40 * k, np.uint8)).save(folder / n)


def _assert_cameras(views: Views, ref: Cameras, scale: float = 1.0) -> None:
    torch.testing.assert_close(views.cameras.K.double(), ref.scaled(scale).K.double(), atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(views.cameras.w2c.double(), ref.w2c.double(), atol=1e-5, rtol=0)


def test_middlebury_par_file(tmp_path):
    cams = _cameras()
    lines = [str(len(cams))]
    for i, n in enumerate(cams.names):
        vals = [*cams.K[i].flatten().tolist(), *cams.w2c[i, :3, :3].flatten().tolist()]
        vals += cams.w2c[i, :3, 3].tolist()
        lines.append(n + " " + " ".join(f"{v:.17g}" for v in vals))
    (tmp_path / "toy_par.txt").write_text("\n".join(lines) + "\n")
    _write_images(tmp_path, cams.names)
    assert detect_format(tmp_path) == "middlebury"
    views = load_views(tmp_path, max_side=20)  # 40x30 -> 20x15: K halves
    assert views.names == cams.names and views.size == (20, 15)
    _assert_cameras(views, cams, 0.5)


def test_strecha_camera_files(tmp_path):
    cams = _cameras(2, 60, 40)
    (tmp_path / "gt_dense_cameras").mkdir()
    c2w = cams.c2w
    for i, n in enumerate(cams.names):
        rows = [cams.K[i, r].tolist() for r in range(3)] + [[0, 0, 0]]
        rows += [c2w[i, r, :3].tolist() for r in range(3)] + [c2w[i, :3, 3].tolist(), [60, 40]]
        text = "\n".join(" ".join(f"{v:.17g}" for v in r) for r in rows)
        (tmp_path / "gt_dense_cameras" / f"{n}.camera").write_text(text + "\n")
    _write_images(tmp_path / "images", cams.names, 60, 40)
    (tmp_path / "images" / "K.txt").write_text("not an image")
    assert detect_format(tmp_path) == "strecha"
    views = load_views(tmp_path)
    assert views.names == cams.names
    _assert_cameras(views, cams)


def test_dtu_monosdf_cameras_npz(tmp_path):
    # cameras at the original 1600x1200 resolution; MonoSDF images are a centre crop resized to 384x384
    cams = _cameras(3, 1600, 1200)
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(len(cams)):
        P = cams.K[i].numpy() @ cams.w2c[i, :3].numpy()
        world = np.eye(4)
        world[:3] = rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 10.0) * P  # P is only defined up to scale
        arrays[f"world_mat_{i}"] = world
        arrays[f"scale_mat_{i}"] = np.diag([2.0, 2.0, 2.0, 1.0])
    np.savez(tmp_path / "cameras.npz", **arrays)
    _write_images(tmp_path, [f"{i:06d}_rgb.png" for i in range(len(cams))], 384, 384)
    assert detect_format(tmp_path) == "dtu"
    views = load_views(tmp_path)
    crop = torch.from_numpy(MONOSDF_CROP)
    expect_K = crop @ cams.K
    torch.testing.assert_close(views.cameras.K.double(), expect_K, atol=1e-3, rtol=1e-6)
    torch.testing.assert_close(views.cameras.w2c.double(), cams.w2c, atol=1e-5, rtol=0)
    assert torch.linalg.det(views.cameras.w2c[:, :3, :3]).sub(1).abs().max() < 1e-5
    assert views.meta["scale_mat"].shape == (3, 4, 4)


def test_llff_poses_bounds(tmp_path):
    n, full_w, full_h, f = 3, 400, 300, 350.0
    cams = _cameras(n, full_w, full_h)
    c2w = cams.c2w.numpy()
    rows = []
    for i in range(n):
        m = np.zeros((3, 5))
        m[:, 0], m[:, 1], m[:, 2] = c2w[i, :3, 1], c2w[i, :3, 0], -c2w[i, :3, 2]  # [down, right, backwards]
        m[:, 3] = c2w[i, :3, 3]
        m[:, 4] = [full_h, full_w, f]
        rows.append(np.concatenate([m.ravel(), [0.5 + i, 20.0]]))
    np.save(tmp_path / "poses_bounds.npy", np.array(rows))
    _write_images(tmp_path / "images_4", [f"IMG_{i}.JPG" for i in range(n)], 100, 75)
    _write_images(tmp_path / "images", [f"IMG_{i}.JPG" for i in range(n)], 400, 300)
    assert detect_format(tmp_path) == "llff"
    views = load_views(tmp_path)
    assert views.meta["image_dir"] == "images_4" and views.size == (100, 75)
    expect_K = torch.tensor([[f / 4, 0, 50.0], [0, f / 4, 37.5], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(views.cameras.K.double(), expect_K.expand(n, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(views.cameras.w2c.double(), cams.w2c, atol=1e-5, rtol=0)
    np.testing.assert_allclose(views.meta["bounds"], [[0.5, 20], [1.5, 20], [2.5, 20]])
    (tmp_path / "images_4" / "IMG_2.JPG").unlink()
    with pytest.raises(ReconError, match="2 images but poses_bounds.npy has 3 poses"):
        load_views(tmp_path)


def test_folder_and_errors(tmp_path):
    _write_images(tmp_path / "photos" / "images", ["a.png", "b.png"])
    assert detect_format(tmp_path / "photos") == "folder"
    views = load_views(tmp_path / "photos")
    assert views.source == "folder" and views.names == ["a.png", "b.png"] and views.cameras is None
    with pytest.raises(ReconError, match="does not exist"):
        load_views(tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.md").write_text("nothing here")
    with pytest.raises(ReconError, match="supported inputs") as e:
        load_views(tmp_path / "junk")
    assert "COLMAP" in str(e.value) and "transforms.json" in str(e.value)
    with pytest.raises(ReconError, match="is a file"):
        load_views(tmp_path / "junk" / "readme.md")
