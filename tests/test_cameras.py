"""Conventions in recon/cameras.py, checked against independent constructions."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from recon.cameras import (
    Cameras,
    camera_centers,
    intrinsics,
    invert_rigid,
    look_at_w2c,
    project,
    quat_multiply,
    quat_to_rotmat,
    quat_xyzw_to_wxyz,
    rot6d_to_rotmat,
    rotation_angle_deg,
    rotmat_to_quat,
    scale_K,
    se3_exp,
    se3_log,
    sim3_transform_w2c,
    so3_exp,
    so3_log,
    umeyama,
    unproject_depth,
)


def random_w2c(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    R = torch.tensor(Rotation.random(n, random_state=seed).as_matrix(), dtype=torch.float64)
    t = torch.tensor(rng.normal(size=(n, 3)), dtype=torch.float64)
    T = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    T[:, :3, :3], T[:, :3, 3] = R, t
    return T


def test_quaternion_matches_scipy_wxyz():
    q_xyzw = torch.tensor(Rotation.random(50, random_state=1).as_quat(), dtype=torch.float64)
    q = quat_xyzw_to_wxyz(q_xyzw) * 3.0  # unnormalised on purpose
    R_ref = torch.tensor(Rotation.from_quat(q_xyzw.numpy()).as_matrix())
    assert torch.allclose(quat_to_rotmat(q), R_ref, atol=1e-12)
    q_back = rotmat_to_quat(R_ref)
    assert torch.all(q_back[:, 0] >= 0)
    assert torch.allclose(quat_to_rotmat(q_back), R_ref, atol=1e-12)


def test_quat_multiply_composes_rotations():
    a = quat_xyzw_to_wxyz(torch.tensor(Rotation.random(10, random_state=2).as_quat()))
    b = quat_xyzw_to_wxyz(torch.tensor(Rotation.random(10, random_state=3).as_quat()))
    ab = quat_to_rotmat(a) @ quat_to_rotmat(b)
    assert torch.allclose(quat_to_rotmat(quat_multiply(a, b)), ab, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-9, 1e-3, 0.5, 3.0])
def test_so3_and_se3_roundtrip(scale):
    xi = torch.randn(20, 6, dtype=torch.float64) * scale
    xi[:, 3:] = xi[:, 3:] / xi[:, 3:].norm(dim=1, keepdim=True).clamp_min(1.0) * min(scale, 3.0)
    assert torch.allclose(se3_log(se3_exp(xi)), xi, atol=1e-9)
    R_ref = torch.tensor(Rotation.from_rotvec(xi[:, 3:].numpy()).as_matrix())
    assert torch.allclose(so3_exp(xi[:, 3:]), R_ref, atol=1e-12)
    assert torch.allclose(so3_log(R_ref), xi[:, 3:], atol=1e-9)


def test_se3_exp_is_matrix_exponential():
    xi = torch.tensor([0.3, -0.2, 0.5, 0.4, -0.7, 0.2], dtype=torch.float64)
    A = torch.zeros(4, 4, dtype=torch.float64)
    v, w = xi[:3], xi[3:]
    A[:3, :3] = torch.tensor([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    A[:3, 3] = v
    assert torch.allclose(se3_exp(xi), torch.linalg.matrix_exp(A), atol=1e-12)


def test_invert_rigid_and_centers():
    w2c = random_w2c(8)
    c2w = invert_rigid(w2c)
    assert torch.allclose(c2w @ w2c, torch.eye(4, dtype=torch.float64).expand(8, 4, 4), atol=1e-12)
    assert torch.allclose(camera_centers(w2c), c2w[:, :3, 3], atol=1e-12)


def test_projection_pixel_centre_convention():
    # A point on the optical axis lands on the principal point; with cx = W/2 that is the image centre,
    # i.e. the corner between the four middle pixels of an even-sized image.
    K = intrinsics(100.0, 100.0, 32.0, 24.0, dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64)
    uv, z = project(torch.tensor([[0.0, 0.0, 2.0], [0.2, -0.1, 2.0]], dtype=torch.float64), K, w2c)
    assert torch.allclose(uv[0], torch.tensor([32.0, 24.0], dtype=torch.float64))
    assert torch.allclose(uv[1], torch.tensor([42.0, 19.0], dtype=torch.float64))  # x right, y down
    assert torch.allclose(z, torch.tensor([2.0, 2.0], dtype=torch.float64))


def test_unproject_then_project_hits_pixel_centres():
    K = intrinsics(80.0, 82.0, 30.0, 21.0, dtype=torch.float64)
    w2c = random_w2c(1, seed=5)[0]
    depth = 1.0 + torch.rand(6, 8, dtype=torch.float64)
    pts = unproject_depth(depth, K, invert_rigid(w2c))
    uv, z = project(pts.reshape(-1, 3), K, w2c)
    jj, ii = np.meshgrid(np.arange(8), np.arange(6))
    assert torch.allclose(uv[:, 0], torch.tensor(jj.ravel() + 0.5, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(uv[:, 1], torch.tensor(ii.ravel() + 0.5, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(z, depth.reshape(-1), atol=1e-12)


def test_scale_K_keeps_pixel_footprint():
    # The image corner (0, 0) and (W, H) must map to the resized image's corners.
    K = intrinsics(500.0, 500.0, 320.0, 240.0, dtype=torch.float64)
    K2 = scale_K(K, 0.25)
    X = torch.linalg.inv(K) @ torch.tensor([640.0, 480.0, 1.0], dtype=torch.float64)
    assert torch.allclose(K2 @ X, torch.tensor([160.0, 120.0, 1.0], dtype=torch.float64))
    cams = Cameras(K[None].float(), torch.eye(4)[None], torch.tensor([[640, 480]]), ["a"])
    half = cams.scaled(0.5)
    assert half.sizes.tolist() == [[320, 240]] and torch.allclose(half.K[0], scale_K(K, 0.5).float())


def test_umeyama_recovers_similarity():
    X = torch.randn(30, 3, dtype=torch.float64)
    R = torch.tensor(Rotation.random(random_state=7).as_matrix())
    Y = 2.7 * X @ R.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    s, R_est, t = umeyama(X, Y)
    assert abs(float(s) - 2.7) < 1e-9 and torch.allclose(R_est, R, atol=1e-9)
    assert torch.allclose(s * X @ R_est.T + t, Y, atol=1e-9)


def test_sim3_transform_w2c_keeps_projections():
    w2c = random_w2c(4, seed=9)
    K = intrinsics(100.0, 100.0, 50.0, 40.0, dtype=torch.float64)
    X = torch.randn(10, 3, dtype=torch.float64) * 0.3
    s, R, t = 1.7, torch.tensor(Rotation.random(random_state=4).as_matrix()), torch.tensor([0.3, 0.1, -2.0])
    X2 = s * X @ R.T + t.double()
    w2c2 = sim3_transform_w2c(w2c, s, R, t.double())
    uv1, z1 = project(X, K, w2c)
    uv2, z2 = project(X2, K, w2c2)
    assert torch.allclose(uv1, uv2, atol=1e-9) and torch.allclose(z2, s * z1, atol=1e-9)


def test_look_at_and_angle():
    f64 = torch.float64
    w2c = look_at_w2c(torch.tensor([0.0, -3.0, 0.0], dtype=f64), torch.zeros(3, dtype=f64))
    uv, z = project(torch.zeros(1, 3, dtype=torch.float64), intrinsics(1, 1, 0, 0, torch.float64), w2c)
    assert torch.allclose(uv, torch.zeros(1, 2, dtype=torch.float64)) and float(z) == pytest.approx(3.0)
    # world up (+z) appears upwards in the image (negative y)
    uv_up, _ = project(torch.tensor([[0.0, 0.0, 1.0]], dtype=f64), intrinsics(1, 1, 0, 0, f64), w2c)
    assert uv_up[0, 1] < 0
    R1 = so3_exp(torch.tensor([0.0, 0.0, math.radians(30)], dtype=torch.float64))
    assert float(rotation_angle_deg(R1, torch.eye(3, dtype=torch.float64))) == pytest.approx(30.0)


def test_rot6d_identity_and_orthonormal():
    d6 = torch.randn(10, 6, dtype=torch.float64)
    R = rot6d_to_rotmat(d6)
    eye = torch.eye(3, dtype=torch.float64).expand(10, 3, 3)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.det(R), torch.ones(10, dtype=torch.float64))
    assert torch.allclose(rot6d_to_rotmat(torch.tensor([1.0, 0, 0, 0, 1, 0])), torch.eye(3))


def test_cameras_validation_and_subset():
    with pytest.raises(ValueError):
        Cameras(torch.eye(3)[None], torch.eye(4).repeat(2, 1, 1), torch.tensor([[4, 4]]))
    sizes = torch.tensor([[4, 3]] * 3)
    cams = Cameras(torch.eye(3).repeat(3, 1, 1), random_w2c(3).float(), sizes, ["a", "b", "c"])
    sub = cams.subset(["c", "a"])
    assert sub.names == ["c", "a"] and torch.equal(sub.w2c[0], cams.w2c[2])
