"""Metrics against independent references: PSNR by hand, SSIM against a direct numpy window loop, pose
metrics on constructed cases whose answers are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.cameras import Cameras, look_at_w2c, make_rigid, sim3_transform_w2c, so3_exp
from recon.errors import ReconError
from recon.metrics import (
    camera_pose_metrics,
    pose_auc,
    pose_metrics,
    psnr,
    relative_pose_errors,
    ssim,
    ssim_map,
)


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. SSIM by a direct loop over every valid 11x11 window (float64, per channel, mean)."""
    ax = np.arange(11) - 5.0
    w = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    H, W, C = x.shape
    vals = []
    for c in range(C):
        for i in range(H - 10):
            for j in range(W - 10):
                px = x[i : i + 11, j : j + 11, c]
                py = y[i : i + 11, j : j + 11, c]
                mx, my = (w * px).sum(), (w * py).sum()
                vx = (w * (px - mx) ** 2).sum()
                vy = (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_psnr_by_hand():
    ref = torch.full((8, 6, 3), 0.1)
    img = torch.zeros(8, 6, 3)
    assert psnr(img, ref) == pytest.approx(20.0, abs=1e-4)  # mse 0.01
    # A batch is the mean of the per-image PSNRs (20 dB and 40 dB -> 30 dB), not the PSNR of the mean MSE.
    img2 = torch.full((8, 6, 3), 0.09)  # mse 1e-4 -> 40 dB
    assert psnr(torch.stack([img, img2]), torch.stack([ref, ref])) == pytest.approx(30.0, abs=1e-3)
    # Half the pixels off by 0.2: mse = 0.5 * 0.04 = 0.02.
    img3 = ref.clone()
    img3[:4] += 0.2
    assert psnr(img3, ref) == pytest.approx(-10 * math.log10(0.02), abs=1e-4)


def test_ssim_matches_direct_window_loop():
    g = torch.Generator().manual_seed(3)
    base = torch.rand(20, 24, 3, generator=g)
    # A structured image and a noisy, contrast-changed copy of it.
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 20), torch.linspace(0, 1, 24), indexing="ij")
    ref = (0.5 + 0.4 * torch.sin(6 * xx + 3 * yy))[..., None] * torch.tensor([1.0, 0.7, 0.4]) + 0.05 * base
    img = (0.8 * ref + 0.1 + 0.08 * torch.randn(20, 24, 3, generator=g)).clamp(0, 1)
    expect = _ssim_reference(img.double().numpy(), ref.double().numpy())
    got = float(ssim(img, ref))
    assert got == pytest.approx(expect, abs=1e-5)
    assert 0.2 < got < 0.95  # a non-trivial case
    assert float(ssim(ref, ref)) == pytest.approx(1.0, abs=1e-6)
    # Batched: mean of per-image values; reduction="none" gives them.
    per = ssim(torch.stack([img, ref]), torch.stack([ref, ref]), reduction="none")
    assert per[0].item() == pytest.approx(expect, abs=1e-5) and per[1].item() == pytest.approx(1.0, abs=1e-6)
    assert ssim_map(img, ref).shape == (1, 10, 14, 3)
    assert ssim_map(img, ref, padding="reflect").shape == (1, 20, 24, 3)


def test_ssim_is_differentiable():
    ref = torch.rand(16, 16, 3)
    img = (ref + 0.1 * torch.randn(16, 16, 3)).clamp(0, 1).requires_grad_(True)
    loss = 1 - ssim(img, ref, padding="reflect")
    loss.backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    # A small step against the gradient increases SSIM.
    with torch.no_grad():
        better = img - 1e-2 * img.grad / img.grad.abs().max()
    assert float(ssim(better, ref, padding="reflect")) > 1 - loss.item()


def _ring_cameras(n: int = 5) -> torch.Tensor:
    w2c = []
    for k in range(n):
        a = 2 * math.pi * k / n
        eye = torch.tensor([3 * math.cos(a), 3 * math.sin(a), 0.5 + 0.2 * k], dtype=torch.float64)
        w2c.append(look_at_w2c(eye, torch.zeros(3, dtype=torch.float64)))
    return torch.stack(w2c)


def test_pose_metrics_identity_and_similarity():
    ref = _ring_cameras()
    m = pose_metrics(ref, ref)
    assert m["ate"] == pytest.approx(0, abs=1e-9) and m["rre_deg"] == pytest.approx(0, abs=1e-5)
    assert m["rte_deg"] == pytest.approx(0, abs=1e-5)
    assert all(v == 1.0 for v in m["auc"].values()) and m["n_pairs"] == 10
    # The estimate in another world frame and scale: all metrics stay 0.
    R = so3_exp(torch.tensor([0.3, -1.1, 0.7], dtype=torch.float64))
    est = sim3_transform_w2c(ref, 2.7, R, torch.tensor([5.0, -2.0, 1.0], dtype=torch.float64))
    m = pose_metrics(est, ref)
    assert m["ate"] == pytest.approx(0, abs=1e-7) and m["rot_err_deg"] == pytest.approx(0, abs=1e-4)
    assert m["rre_deg"] == pytest.approx(0, abs=1e-4) and m["rte_deg"] == pytest.approx(0, abs=1e-4)
    assert all(v == 1.0 for v in m["auc"].values())


def test_pose_metrics_one_rotated_camera():
    ref = _ring_cameras(5)
    est = ref.clone()
    # Rotate the last camera by 10.5 degrees about its own centre (left-multiplied: the centre is unchanged).
    Rd = make_rigid(so3_exp(torch.tensor([0.0, math.radians(10.5), 0.0], dtype=torch.float64)),
                    torch.zeros(3, dtype=torch.float64))
    est[4] = Rd @ ref[4]
    m = pose_metrics(est, ref)
    # 4 of the 10 pairs contain camera 4: RRE 10.5 there, 0 elsewhere. As the second camera of each of its
    # pairs, its relative translation (expressed in the first camera's frame) is unchanged: RTE 0.
    assert m["rre_deg"] == pytest.approx(4 * 10.5 / 10, abs=1e-6)
    assert m["rte_deg"] == pytest.approx(0.0, abs=1e-6)
    assert m["ate"] == pytest.approx(0.0, abs=1e-9)  # centres did not move
    # The best global rotation spreads the one 10.5 degree error over the cameras: between 10.5/5 and 10.5.
    assert 10.5 / 5 - 1e-6 <= m["rot_err_deg"] < 10.5
    assert m["auc"]["5"] == pytest.approx(0.6)
    assert m["auc"]["15"] == pytest.approx((10 * 0.6 + 5 * 1.0) / 15)
    assert m["auc"]["30"] == pytest.approx((10 * 0.6 + 20 * 1.0) / 30)


def test_pose_metrics_unregistered_counts_as_180():
    ref = _ring_cameras(5)
    est = ref.clone()
    est[2] = torch.eye(4, dtype=torch.float64)  # garbage for a view the method did not place
    reg = torch.tensor([True, True, False, True, True])
    m = pose_metrics(est, ref, reg)
    assert m["n_registered"] == 4
    assert m["rre_deg"] == pytest.approx(0.4 * 180.0, abs=1e-6)
    assert m["rte_deg"] == pytest.approx(0.4 * 180.0, abs=1e-6)
    assert m["auc"]["30"] == pytest.approx(0.6) and m["auc"]["5"] == pytest.approx(0.6)
    assert m["ate"] == pytest.approx(0.0, abs=1e-9)  # only registered views are aligned and scored


def test_ate_units_and_fraction():
    ref = _ring_cameras(5)
    pert = ref.clone()
    pert[1, :3, 3] += torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64)  # move one camera
    m = pose_metrics(pert, ref)
    assert m["ate"] > 0.01
    # The estimate's own frame and scale do not matter; the reference's scale does (reference units).
    R = so3_exp(torch.tensor([0.2, 0.1, -0.4], dtype=torch.float64))
    m_sim = pose_metrics(sim3_transform_w2c(pert, 0.3, R, torch.ones(3, dtype=torch.float64)), ref)
    assert m_sim["ate"] == pytest.approx(m["ate"], rel=1e-6)
    eye3 = torch.eye(3, dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    m2 = pose_metrics(sim3_transform_w2c(pert, 2.0, eye3, zero), sim3_transform_w2c(ref, 2.0, eye3, zero))
    assert m2["ate"] == pytest.approx(2 * m["ate"], rel=1e-6)
    centres = torch.linalg.inv(ref)[:, :3, 3]
    diameter = max(float((a - b).norm()) for a in centres for b in centres)
    assert m["ate_frac"] == pytest.approx(m["ate"] / diameter, rel=1e-9)


def test_rotation_error_is_gauge_free_for_collinear_cameras():
    # Cameras on a line: centres alone cannot fix a rotation about that line, orientations can.
    eyes = [torch.tensor([x, 0.0, 0.0], dtype=torch.float64) for x in (-1.0, 0.0, 1.0)]
    ref = torch.stack([look_at_w2c(e, e + torch.tensor([0.2, 1.0, 0.1], dtype=torch.float64)) for e in eyes])
    R = so3_exp(torch.tensor([0.4, 0.0, 0.0], dtype=torch.float64))  # a rotation about the line (x axis)
    est = sim3_transform_w2c(ref, 1.0, R, torch.zeros(3, dtype=torch.float64))
    m = pose_metrics(est, ref)
    assert m["rot_err_deg"] == pytest.approx(0.0, abs=1e-6) and m["ate"] == pytest.approx(0.0, abs=1e-9)


def test_pose_auc_definition():
    errs = torch.tensor([0.5, 2.5, 7.0, 100.0], dtype=torch.float64)
    # t = 1..5: fractions below t are 1/4, 1/4, 2/4, 2/4, 2/4
    assert pose_auc(errs, 5) == pytest.approx((0.25 + 0.25 + 0.5 + 0.5 + 0.5) / 5)


def test_pose_metrics_degenerate_inputs():
    ref = _ring_cameras(3)
    m = pose_metrics(ref, ref, torch.tensor([True, False, False]))
    assert m["ate"] is None and m["ate_frac"] is None  # JSON-ready: undefined is None, not NaN
    assert m["rre_deg"] == pytest.approx(180.0) and m["auc"]["30"] == 0.0
    assert m["rot_err_deg"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ReconError, match="matching"):
        pose_metrics(ref, ref[:2])


def test_ate_needs_three_registered_views():
    """A similarity fits 2 centres exactly: ATE would be 0 whatever the poses, so it is not reported."""
    ref = _ring_cameras(2)
    wrong = torch.stack([look_at_w2c(torch.tensor([0.0, 0.0, 9.0], dtype=torch.float64), torch.ones(3,
                         dtype=torch.float64)), torch.eye(4, dtype=torch.float64)])
    m = pose_metrics(wrong, ref)
    assert m["ate"] is None and m["ate_frac"] is None
    assert m["rre_deg"] > 10  # the poses are wrong; only ATE is undefined
    # 3 of 5 registered: reported, and exact for exact poses.
    ring = _ring_cameras(5)
    m3 = pose_metrics(ring, ring, torch.tensor([True, False, True, False, True]))
    assert m3["ate"] == pytest.approx(0.0, abs=1e-9) and m3["ate_frac"] == pytest.approx(0.0, abs=1e-9)
    m2 = pose_metrics(ring, ring, torch.tensor([True, False, False, False, True]))
    assert m2["ate"] is None


def _collapse_onto(w2c: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Cameras with camera i moved onto camera j's centre (its rotation kept)."""
    out = w2c.clone()
    C_j = torch.linalg.inv(w2c[j])[:3, 3]
    out[i, :3, 3] = -w2c[i, :3, :3] @ C_j
    return out


def test_rte_of_a_collapsed_pair_is_180():
    ref = _ring_cameras(3)
    est = _collapse_onto(ref, 1, 0)
    pairs, rre, rte = relative_pose_errors(est, ref)
    assert pairs[0].tolist() == [0, 1]
    assert rte[0].item() == pytest.approx(180.0) and rre[0].item() == pytest.approx(0.0, abs=1e-6)
    # the sign-ambiguous variant does not fold it back to 0
    _, _, rte_folded = relative_pose_errors(est, ref, translation_sign_ambiguity=True)
    assert rte_folded[0].item() == pytest.approx(180.0)
    # a degenerate reference pair counts the same way
    _, _, rte_ref = relative_pose_errors(ref, est)
    assert rte_ref[0].item() == pytest.approx(180.0)
    m = pose_metrics(est, ref)
    assert m["auc"]["30"] < 1.0 - 1 / 3 + 1e-9  # the collapsed pair is a failure at every threshold
    # every camera on one centre: no pair has a direction
    all_one = _collapse_onto(_collapse_onto(ref, 1, 0), 2, 0)
    assert pose_metrics(all_one, ref)["rte_deg"] == pytest.approx(180.0)
    # a far-from-origin scene with exact poses is not mistaken for a degenerate one
    far = sim3_transform_w2c(ref, 1.0, torch.eye(3, dtype=torch.float64),
                             torch.tensor([1e4, -2e4, 5e3], dtype=torch.float64))
    assert pose_metrics(far, far)["rte_deg"] == pytest.approx(0.0, abs=1e-4)


def test_camera_pose_metrics_matches_by_name_and_counts_missing_views():
    ref_w2c = _ring_cameras(4)
    K = torch.eye(3).repeat(4, 1, 1)
    sizes = torch.tensor([[64, 48]] * 4)
    ref = Cameras(K, ref_w2c.float(), sizes, ["a.png", "b.png", "c.png", "d.png"])
    est = ref.subset(["d.png", "a.png", "b.png"])  # another order; c.png was not placed
    m = camera_pose_metrics(est, ref)
    assert m["n_views"] == 4 and m["n_registered"] == 3 and m["n_pairs"] == 6
    assert m["rre_deg"] == pytest.approx(3 * 180.0 / 6, abs=1e-3)  # 3 of 6 pairs involve c.png
    assert m["ate"] == pytest.approx(0.0, abs=1e-5)
