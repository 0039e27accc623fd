"""Tests of the classical SfM prior (recon.priors.classical): features, two-view geometry, focal
self-calibration, incremental registration and bundle adjustment.

Pose accuracy is measured gauge-free, as in the sparse-view literature: relative rotation error (RRE) and
relative translation direction error (RTE) over all pairs of placed views, plus absolute rotation errors
after a Sim(3) (Umeyama) alignment of the estimated to the reference camera centres.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import shared_scene

from recon.cameras import Cameras, rotation_angle_deg, sim3_transform_w2c, umeyama
from recon.errors import ReconError
from recon.views import Views

# --------------------------------------------------------------------------------------------------
# Loading shared scenes: recon.io.load_views when it exists, else a small local reader of the four
# formats described in ../shared/data/README.md (reference cameras are for evaluation only).
# --------------------------------------------------------------------------------------------------


def _read_rgb(path: Path, max_side: int | None) -> tuple[np.ndarray, float, float]:
    """(H, W, 3) float32 image resized so its long side is <= max_side, and the (sx, sy) resize factors."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(path)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    H, W = img.shape[:2]
    if max_side is not None and max(H, W) > max_side:
        s = max_side / max(H, W)
        Wn, Hn = round(W * s), round(H * s)
        img = cv2.resize(img, (Wn, Hn), interpolation=cv2.INTER_AREA)
    return img.astype(np.float32) / 255.0, img.shape[1] / W, img.shape[0] / H


def _fallback_load(root: Path, max_side: int | None) -> Views:
    """Read one of the shared scenes (llff, dtu, strecha, middlebury) with its reference cameras."""
    name = root.name
    files: list[Path]
    Ks, w2cs = [], []
    if (root / "poses_bounds.npy").exists():  # LLFF
        files = sorted((root / "images_8").glob("*.png"))
        a = np.load(root / "poses_bounds.npy")
        M = a[:, :15].reshape(-1, 3, 5)
        for m in M:
            c2w = np.eye(4)
            c2w[:3, :3] = np.stack([m[:, 1], m[:, 0], -m[:, 2]], 1)
            c2w[:3, 3] = m[:, 3]
            w2cs.append(np.linalg.inv(c2w))
            H, W, f = m[:, 4]
            Ks.append(np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]]))
        full_w = M[0, 1, 4]
    elif (root / "cameras.npz").exists():  # DTU (MonoSDF)
        files = sorted(root.glob("*_rgb.png"))
        d = np.load(root / "cameras.npz")
        A = np.array([[0.32, 0, -64], [0, 0.32, 0], [0, 0, 1.0]])
        for f in files:
            i = int(f.name.split("_")[0])
            P = A @ d[f"world_mat_{i}"][:3] @ d[f"scale_mat_{i}"]
            K, R, C = cv2.decomposeProjectionMatrix(P)[:3]
            K = K / K[2, 2]
            C = C[:3, 0] / C[3, 0]
            w2c = np.eye(4)
            w2c[:3, :3] = R
            w2c[:3, 3] = -R @ C
            Ks.append(K)
            w2cs.append(w2c)
        full_w = 384
    elif (root / "gt_dense_cameras").exists():  # Strecha
        files = sorted((root / "images").glob("*.jpg"))
        for f in files:
            rows = [list(map(float, ln.split())) for ln in (root / "gt_dense_cameras" / f"{f.name}.camera")
                    .read_text().splitlines() if ln.strip()]
            K = np.array(rows[0:3])
            Rc2w = np.array(rows[4:7])
            C = np.array(rows[7])
            w2c = np.eye(4)
            w2c[:3, :3] = Rc2w.T
            w2c[:3, 3] = -Rc2w.T @ C
            Ks.append(K)
            w2cs.append(w2c)
        full_w = rows[8][0]
    else:  # Middlebury *_par.txt
        par = next(root.glob("*_par.txt"))
        lines = par.read_text().split("\n")[1:]
        files = []
        for ln in lines:
            p = ln.split()
            if len(p) < 22:
                continue
            files.append(root / p[0])
            v = np.array(list(map(float, p[1:])))
            Ks.append(v[:9].reshape(3, 3))
            w2c = np.eye(4)
            w2c[:3, :3] = v[9:18].reshape(3, 3)
            w2c[:3, 3] = v[18:21]
            w2cs.append(w2c)
        full_w = 640
    imgs = []
    for f, K in zip(files, Ks, strict=True):
        img, sx, sy = _read_rgb(f, max_side)
        s = img.shape[1] / full_w
        K[:2] *= s
        imgs.append(img)
    n = len(files)
    W, H = imgs[0].shape[1], imgs[0].shape[0]
    cams = Cameras(
        K=torch.tensor(np.stack(Ks), dtype=torch.float32),
        w2c=torch.tensor(np.stack(w2cs), dtype=torch.float32),
        sizes=torch.tensor([[W, H]] * n),
        names=[f.name for f in files],
    )
    return Views(images=torch.tensor(np.stack(imgs)), names=[f.name for f in files], cameras=cams,
                 source=name, root=str(root))


def load_scene(name: str, max_side: int | None = None) -> Views:
    root = shared_scene(name)
    try:
        from recon.io.datasets import load_views  # the project's reader, when it has landed
    except ImportError:
        return _fallback_load(root, max_side)
    return load_views(root, max_side)


def sparse_split(views: Views, scene: str) -> Views:
    """The 3 training views of the sparse-view protocols used by the targets (see the module docstring)."""
    n = len(views)
    if scene.startswith("llff"):
        rest = [i for i in range(n) if i % 8]  # every 8th image is a test view
        ids = [rest[int(round(x))] for x in np.linspace(0, len(rest) - 1, 3)]
    elif scene.startswith("dtu"):
        ids = [views.names.index(f"{i:06d}_rgb.png") for i in (25, 22, 28)]
    else:
        ids = [int(round(x)) for x in np.linspace(0, n - 1, 3)]
    return views.subset(ids)


# --------------------------------------------------------------------------------------------------
# Pose metrics (gauge-free relative errors; absolute rotation errors after Sim(3) alignment)
# --------------------------------------------------------------------------------------------------


def relative_errors(est: Cameras, ref: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """Per pair (a < b): relative rotation error and relative translation direction error (degrees)."""
    R, Rg = est.w2c[:, :3, :3].double(), ref.w2c[:, :3, :3].double()
    C, Cg = est.centers.double(), ref.centers.double()
    rre, rte = [], []
    for a in range(len(est)):
        for b in range(a + 1, len(est)):
            rre.append(float(rotation_angle_deg(R[b] @ R[a].T, Rg[b] @ Rg[a].T)))
            ta, tg = R[a] @ (C[b] - C[a]), Rg[a] @ (Cg[b] - Cg[a])
            cos = float(ta @ tg / (ta.norm() * tg.norm()).clamp_min(1e-12))
            rte.append(float(np.degrees(np.arccos(np.clip(cos, -1, 1)))))
    return np.array(rre), np.array(rte)


def aligned_rotation_errors(est: Cameras, ref: Cameras) -> np.ndarray:
    """Per-camera rotation error (degrees) after a Sim(3) (Umeyama) alignment of estimated to reference.

    The alignment uses the camera centres plus one point on each optical axis (at the size of the rig):
    with 3 cameras that are nearly collinear the centres alone leave the rotation about their line free.
    """

    def anchors(c: Cameras) -> torch.Tensor:
        C = c.centers.double()
        size = (C - C.mean(0)).norm(dim=1).mean().clamp_min(1e-9)
        axis = c.w2c[:, 2, :3].double()  # the camera z axis in world coordinates (third row of R)
        return torch.cat([C, C + size * axis])

    s, R, t = umeyama(anchors(est), anchors(ref))
    w2c = sim3_transform_w2c(est.w2c.double(), s, R, t)
    return rotation_angle_deg(w2c[:, :3, :3], ref.w2c[:, :3, :3].double()).numpy()


def auc(errors_deg: np.ndarray, threshold: float) -> float:
    """Area under the accuracy curve of errors up to ``threshold`` degrees (normalised to [0, 1])."""
    e = np.sort(np.asarray(errors_deg, dtype=np.float64))
    grid = np.linspace(0, threshold, 1001)
    acc = np.searchsorted(e, grid, side="right") / max(len(e), 1)
    return float(np.trapezoid(acc, grid) / threshold)


def evaluate(result, views: Views) -> dict:
    ref = views.cameras.subset(result.cameras.names)
    rre, rte = relative_errors(result.cameras, ref)
    f_ref = float(ref.K[0, 0, 0])
    return {
        "placed": len(result.cameras),
        "rre": rre,
        "rte": rte,
        "abs_rot": aligned_rotation_errors(result.cameras, ref) if len(ref) >= 3 else rre,
        "auc15": auc(np.maximum(rre, rte), 15.0),
        "focal_err": abs(result.info["focal_px"] - f_ref) / f_ref,
    }


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------

from recon.matching.features import Features, root_sift  # noqa: E402
from recon.matching.match import match_descriptors  # noqa: E402
from recon.priors.classical import SfMConfig, run_sfm  # noqa: E402
from recon.priors.classical.bundle import bundle_adjust, project_points, rodrigues  # noqa: E402
from recon.priors.classical.sfm_model import triangulate_dlt  # noqa: E402
from recon.priors.classical.twoview import estimate_shared_focal  # noqa: E402


def _features(xy: np.ndarray, desc: np.ndarray) -> Features:
    n = len(xy)
    return Features(xy.astype(np.float64), desc.astype(np.float32), np.ones(n, np.float32), np.zeros((n, 3)))


def test_root_sift_is_unit_norm_hellinger():
    rng = np.random.default_rng(0)
    d = rng.uniform(0, 255, (50, 128))
    r = root_sift(d)
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, atol=1e-5)
    # the dot product of RootSIFT vectors is the Bhattacharyya coefficient of the L1-normalised SIFT
    p = d / d.sum(1, keepdims=True)
    np.testing.assert_allclose(r[0] @ r[1], np.sqrt(p[0] * p[1]).sum(), rtol=1e-5)


def test_matching_is_mutual_and_ratio_tested_with_duplicate_keypoints():
    rng = np.random.default_rng(1)
    n = 300
    da = root_sift(rng.uniform(0, 1, (n, 128)))
    xy_a = rng.uniform(0, 500, (n, 2))
    perm = rng.permutation(n)
    db = root_sift(np.square(da[perm]) + rng.uniform(0, 2e-3, (n, 128)))  # noisy copies, shuffled
    xy_b = xy_a[perm] + 10.0
    # a near-duplicate keypoint (same place, slightly different descriptor) of b's first 20 features
    # must not make their matches ambiguous; a copy far away must.
    dup_near = root_sift(np.square(db[:20]) + 1e-4)
    dup_far = root_sift(np.square(db[20:40]) + 1e-4)
    db2 = np.concatenate([db, dup_near, dup_far])
    xy_b2 = np.concatenate([xy_b, xy_b[:20] + 0.5, xy_b[20:40] + 100.0])
    m = match_descriptors(_features(xy_a, da), _features(xy_b2, db2), ratio=0.85)
    got = dict(m.tolist())
    inv = np.argsort(perm)  # feature k of a is feature inv[k] of b
    correct = sum(1 for a, b in got.items() if b == inv[a] or (b >= n and b < n + 20 and b - n == inv[a]))
    assert correct == len(got), "every accepted match must be right"
    ambiguous_far = {int(perm[k]) for k in range(20, 40)}  # a-features whose b-match has a distant twin
    assert not (ambiguous_far & set(got)), "matches with a distant look-alike must fail the ratio test"
    assert len(got) >= n - 20 - 5


def test_guided_matching_resolves_repeated_texture_along_epipolar_lines():
    """Repeated texture (windows, bricks): every feature has a look-alike elsewhere, so unguided matching
    rejects all of them by the ratio test. With the epipolar geometry (rectified pair: x_b^T F x_a = 0
    means y_b = y_a) the look-alikes on other rows are never compared, and the true matches are found."""
    from recon.matching.match import epipolar_mask

    rng = np.random.default_rng(7)
    n = 200
    da = root_sift(rng.uniform(0, 1, (n, 128)))
    xy_a = np.c_[rng.uniform(50, 450, n), rng.permutation(np.linspace(10, 490, n))]  # distinct rows
    xy_b = xy_a + [-20.0, 0.0]  # disparity 20 px
    db = root_sift(np.square(da) + rng.uniform(0, 2e-3, (n, 128)))
    twin_xy = np.c_[xy_b[:, 0], (xy_b[:, 1] + 120.0) % 500]  # the same texture on another row
    twin = db.copy()  # exactly repeated texture
    a = _features(xy_a, da)
    b = _features(np.concatenate([xy_b, twin_xy]), np.concatenate([db, twin]))
    F = np.array([[0.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # x_b^T F x_a = y_a - y_b
    mask = epipolar_mask(F, xy_a[:3], b.xy, 1.0).numpy()
    np.testing.assert_array_equal(mask, np.abs(xy_a[:3, 1:2] - b.xy[None, :, 1]) <= 1.0)

    assert len(match_descriptors(a, b, ratio=0.85)) == 0
    m = match_descriptors(a, b, ratio=0.85, F=F, max_epipolar_px=2.0)
    assert len(m) >= 0.95 * n
    np.testing.assert_array_equal(m[:, 1], m[:, 0])  # feature k of a is feature k of b, never its twin


def test_fundamental_from_poses_satisfies_the_epipolar_constraint():
    from recon.priors.classical.twoview import fundamental_from_poses

    rng = np.random.default_rng(3)
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    w2c = [np.eye(4), np.eye(4)]
    for T in w2c:
        T[:3, :3] = rodrigues(rng.normal(0, 0.2, (1, 3)))[0]
        T[:3, 3] = rng.normal(0, 0.3, 3)
    X = rng.uniform(-1, 1, (50, 3)) + [0, 0, 5]
    x = [project_points(np.stack(w2c), 500.0, K[:2, 2], X, np.full(50, c))[0] for c in (0, 1)]
    F = fundamental_from_poses(K, w2c[0], w2c[1])
    l_b = np.c_[x[0], np.ones(50)] @ F.T

    def dist(xb: np.ndarray) -> np.ndarray:
        return np.abs((l_b * np.c_[xb, np.ones(50)]).sum(1)) / np.linalg.norm(l_b[:, :2], axis=1)

    assert dist(x[1]).max() < 1e-9
    assert np.median(dist(x[1] + rng.normal(0, 3.0, x[1].shape))) > 0.5  # off the lines: measured as such


def test_pair_graph_is_exhaustive_for_few_views_and_finds_loop_closures_for_many():
    from recon.matching.pairs import pairs_to_match

    rng = np.random.default_rng(4)
    scenes = [root_sift(rng.uniform(0, 1, (300, 128))) for _ in range(10)]
    # 20 views in file order; view i and view i + 10 show the same place (a loop), others differ
    feats = [_features(rng.uniform(0, 100, (300, 2)), scenes[i % 10]) for i in range(20)]
    assert pairs_to_match(feats[:6], exhaustive_max=15, window=2, retrieval_k=1) == [
        (i, j) for i in range(6) for j in range(i + 1, 6)
    ]
    pairs = set(pairs_to_match(feats, exhaustive_max=15, window=2, retrieval_k=1))
    assert {(i, i + 1) for i in range(19)} <= pairs  # the sequential window
    assert {(i, i + 10) for i in range(10)} <= pairs  # retrieval finds the revisits
    assert len(pairs) < 20 * 19 // 2 // 2


def test_focal_self_calibration_recovers_the_focal():
    W, H, f = 640, 480, 520.0
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
    Ki = np.linalg.inv(K)
    rng = np.random.default_rng(2)
    Fs = []
    for _ in range(3):
        R = rodrigues(rng.normal(0, 0.3, (1, 3)))[0]
        t = rng.normal(0, 1, 3)
        tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
        Fs.append(Ki.T @ tx @ R @ Ki)
    est = estimate_shared_focal(Fs, [1.0] * 3, (W, H), (15.0, 120.0))
    assert est.confident
    assert abs(est.focal_px - f) / f < 0.01


def test_triangulation_and_bundle_adjustment_recover_focal_and_poses():
    rng = np.random.default_rng(3)
    P, C, f = 250, 4, 300.0
    X = rng.uniform(-1.5, 1.5, (P, 3)) + [0, 0, 4]  # a deep, wide point cloud: focal is well determined
    w2c = np.tile(np.eye(4), (C, 1, 1))
    for c in range(1, C):
        w2c[c, :3, :3] = rodrigues(rng.normal(0, 0.3, (1, 3)))[0]
        w2c[c, :3, 3] = rng.normal(0, 1.0, 3)
    pp = np.array([160.0, 120.0])
    cam, pt = np.repeat(np.arange(C), P), np.tile(np.arange(P), C)
    uv, _ = project_points(w2c, f, pp, X[pt], cam)
    # exact DLT on noise-free observations
    Kinv = np.linalg.inv(np.array([[f, 0, pp[0]], [0, f, pp[1]], [0, 0, 1]]))
    xn = (np.c_[uv, np.ones(len(uv))] @ Kinv.T)[:, :2].reshape(C, P, 2).transpose(1, 0, 2)
    Xt = triangulate_dlt(np.broadcast_to(w2c[:, :3], (P, C, 3, 4)), xn)
    np.testing.assert_allclose(Xt, X, atol=1e-8)
    # BA from a 20% wrong focal and perturbed poses/points, with 0.3 px noise and 5% gross outliers,
    # must reach the same minimum as BA started at the truth (the noise floor of this geometry)
    obs = uv + rng.normal(0, 0.3, uv.shape)
    out = rng.random(len(obs)) < 0.05
    obs[out] += rng.uniform(-30, 30, (out.sum(), 2))
    w0 = w2c.copy()
    w0[1:, :3, 3] += rng.normal(0, 0.05, (C - 1, 3))
    res = bundle_adjust(w0, 1.2 * f, pp, X + rng.normal(0, 0.05, X.shape), cam, pt, obs, max_nfev=100)
    best = bundle_adjust(w2c, f, pp, X, cam, pt, obs, max_nfev=100)
    assert abs(res.focal - f) / f < 0.02
    assert abs(res.focal - best.focal) / f < 0.003
    assert np.median(res.residuals[~out]) < 0.4

    def cams(w: np.ndarray) -> Cameras:
        return Cameras(torch.eye(3).expand(C, 3, 3), torch.tensor(w), torch.ones(C, 2), [])

    rre, rte = relative_errors(cams(res.w2c), cams(w2c))
    assert rre.max() < 0.5 and rte.max() < 1.0
    rre_best, _ = relative_errors(cams(res.w2c), cams(best.w2c))
    assert rre_best.max() < 0.03


# --------------------------------------------------------------------------------------------------
# End to end on generated scenes
# --------------------------------------------------------------------------------------------------

# Small images keep the suite fast; affine simulation is off there because these views are not
# wide-baseline (it is exercised by the real-scene tests).
FAST = SfMConfig(affine_features=0)


@functools.lru_cache(maxsize=2)
def _synthetic(n_views: int, seed: int = 0) -> Views:
    """A rendered synthetic scene (cached: rendering dominates the fast tests' time)."""
    from recon.synthetic import SceneConfig, make_scene

    return make_scene(SceneConfig(n_views=n_views, width=256, height=192, seed=seed)).views


def test_synthetic_three_views():
    views = _synthetic(3)
    res = run_sfm(views, FAST)
    assert res.failed == {} and res.cameras.names == views.names
    ev = evaluate(res, views)
    assert ev["abs_rot"].max() < 1.0 and ev["rre"].max() < 1.0 and ev["rte"].max() < 3.0
    assert ev["focal_err"] < 0.03
    # structure: points reproject and the neighbour lists cover the other views
    uv, z = project_points(res.cameras.w2c.double().numpy(), res.info["focal_px"],
                           np.array(views.size) / 2.0, res.points3d[res.tracks.point], res.tracks.view)
    assert (z > 0).all() and np.median(np.linalg.norm(uv - res.tracks.xy, axis=1)) < 0.5
    assert all(sorted(nb) == sorted(set(range(3)) - {i}) for i, nb in enumerate(res.neighbors))
    assert res.cameras.K.shape == (3, 3, 3)
    assert torch.allclose(res.cameras.K[:, :2, 2], torch.tensor([128.0, 96.0]))


@pytest.mark.slow
def test_synthetic_six_views():
    views = _synthetic(6)
    res = run_sfm(views, FAST)
    assert res.failed == {}
    ev = evaluate(res, views)
    assert ev["abs_rot"].max() < 1.0 and ev["rre"].max() < 1.0
    assert ev["focal_err"] < 0.03


def _noise_image(seed: int, H: int = 192, W: int = 256) -> np.ndarray:
    """A textured image (blurred noise at several scales) that shares no geometry with other seeds."""
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W, 3), np.float32)
    for s in (3, 9, 27):
        n = rng.uniform(0, 1, (H // s + 2, W // s + 2, 3)).astype(np.float32)
        img += cv2.resize(n, (W, H), interpolation=cv2.INTER_CUBIC)
    return np.clip(img / 3.0, 0, 1)


def test_unrelated_photos_raise_recon_error_naming_them():
    views = Views(images=torch.tensor(np.stack([_noise_image(10), _noise_image(11)])),
                  names=["beach.jpg", "kitchen.jpg"])
    with pytest.raises(ReconError, match="beach.jpg.*kitchen.jpg"):
        run_sfm(views, FAST)


def test_a_photo_that_overlaps_nothing_is_reported_not_placed():
    views = _synthetic(3)
    imgs = torch.cat([views.images, torch.tensor(_noise_image(12))[None]])
    mixed = Views(images=imgs, names=[*views.names, "unrelated.png"])
    res = run_sfm(mixed, FAST)
    assert res.cameras.names == views.names
    assert set(res.failed) == {"unrelated.png"} and "overlap" in res.failed["unrelated.png"]


def test_too_few_views_is_a_user_error():
    views = Views(images=torch.tensor(_noise_image(13))[None], names=["only.jpg"])
    with pytest.raises(ReconError):
        run_sfm(views, FAST)


# --------------------------------------------------------------------------------------------------
# Real scenes, 3-view sparse protocols (most are slow: tens of seconds each on 2 shared CPU cores)
# --------------------------------------------------------------------------------------------------


def _run_real(scene: str, max_side: int | None) -> tuple[dict, object, Views, float]:
    views = sparse_split(load_scene(scene, max_side), scene)
    t0 = time.perf_counter()
    res = run_sfm(views, SfMConfig())
    dt = time.perf_counter() - t0
    ev = evaluate(res, views)
    print(f"{scene}: placed {res.cameras.names}, failed {res.failed}, RRE {np.round(ev['rre'], 2)}, "
          f"RTE {np.round(ev['rte'], 2)}, aligned rot {np.round(ev['abs_rot'], 2)}, "
          f"focal err {100 * ev['focal_err']:.1f}%, AUC@15 {ev['auc15']:.3f}, {dt:.1f} s")
    return ev, res, views, dt


@pytest.mark.slow
def test_llff_fern_three_views():
    ev, res, views, _ = _run_real("llff_fern", 504)
    assert res.failed == {} and ev["placed"] == 3
    assert ev["rre"].max() < 2.0 and ev["abs_rot"].max() < 2.0
    assert ev["auc15"] >= 0.9


def test_dtu_scan24_three_views():
    """Not slow (about 10 s): the hardest 3-view target, guarded in the default suite."""
    ev, res, views, _ = _run_real("dtu_scan24_monosdf", None)
    assert ev["placed"] == 3
    assert ev["abs_rot"].mean() < 2.0
    # At this 23 deg field of view the focal is barely observable from the 217 points of unguided matching
    # (estimated 7% short, mean RRE 2.3 deg); guided matching closes the 22-28 loop and brings it within
    # 1.5% (measured: RRE 1.06 deg, focal 911 px against 925.5).
    assert ev["rre"].mean() < 2.0
    assert ev["focal_err"] < 0.05
    # wrong guided matches on the repeated windows triangulate without error but at depths where the
    # building is not; they are dropped so the dense stage's depth range stays tight (far/near 4.4
    # without that check, 2.3 before guided matching, 3.0 now)
    from recon.priors.classical.prior import depth_ranges

    rng = depth_ranges(res.cameras, torch.as_tensor(res.points3d, dtype=torch.float32))
    assert (rng[:, 1] / rng[:, 0]).max() < 3.2


@pytest.mark.slow
def test_strecha_fountain_three_views():
    ev, res, views, _ = _run_real("strecha_fountain-P11", 1024)
    assert ev["placed"] == 3
    assert ev["rre"].mean() < 2.0


@pytest.mark.slow
def test_middlebury_temple_three_views_never_crashes():
    """A hard case (small dark object, wide ring baselines): views may fail, but each with a reason."""
    views = sparse_split(load_scene("middlebury_templeSparseRing", None), "middlebury")
    try:
        res = run_sfm(views, SfMConfig())
    except ReconError as e:  # a user-facing, one-line explanation is acceptable here
        assert "\n" not in str(e)
        return
    assert set(res.cameras.names) | set(res.failed) == set(views.names)
    assert all(len(r) > 10 and "\n" not in r for r in res.failed.values())
