"""Camera conventions and geometry helpers: the one home of ``shared/CONVENTIONS.md``.

Conventions (fixed project-wide):

- OpenCV camera frame: x right, y down, z forward.
- Extrinsics are world-to-camera 4x4 matrices ``w2c``: ``x_cam = R @ X_world + t``; ``c2w`` is the inverse.
- ``K`` is 3x3 in pixels of the image as used. Pixel (row i, col j) has its centre at (j + 0.5, i + 0.5);
  the top-left corner of the image is (0, 0). Resizing by (sx, sy) scales fx, cx by sx and fy, cy by sy.
- Quaternions are (w, x, y, z) and are normalised inside every function that consumes them.
- Pose updates are left-multiplied se(3) deltas on w2c: ``w2c = se3_exp(xi) @ w2c_ref`` with
  ``xi = (v, omega)`` (translation part first, rotation part second).

All functions take torch tensors with arbitrary leading batch dimensions unless stated otherwise and are
differentiable where it makes sense.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------------
# Rigid transforms
# --------------------------------------------------------------------------------------------------


def make_rigid(R: Tensor, t: Tensor) -> Tensor:
    """Stack rotation (..., 3, 3) and translation (..., 3) into a (..., 4, 4) rigid transform."""
    T = torch.zeros(*R.shape[:-2], 4, 4, dtype=R.dtype, device=R.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def invert_rigid(T: Tensor) -> Tensor:
    """Inverse of a rigid transform (..., 4, 4); turns w2c into c2w and back. Exact, no matrix inverse."""
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    Rt = R.transpose(-1, -2)
    return make_rigid(Rt, -(Rt @ t.unsqueeze(-1)).squeeze(-1))


def camera_centers(w2c: Tensor) -> Tensor:
    """Camera centres in world coordinates, (..., 3), from w2c (..., 4, 4): C = -R^T t."""
    R = w2c[..., :3, :3]
    t = w2c[..., :3, 3]
    return -(R.transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)


def transform_points(T: Tensor, X: Tensor) -> Tensor:
    """Apply 4x4 transforms T (..., 4, 4) to points X (..., N, 3) (T broadcasts over N)."""
    return X @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


# --------------------------------------------------------------------------------------------------
# Intrinsics and projection
# --------------------------------------------------------------------------------------------------


def intrinsics(fx: float, fy: float, cx: float, cy: float, dtype=torch.float32) -> Tensor:
    """A 3x3 K from its four parameters (pixels)."""
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def scale_K(K: Tensor, sx: float, sy: float | None = None) -> Tensor:
    """K for an image resized by (sx, sy) = (new_W / W, new_H / H).

    With the pixel-corner origin of CONVENTIONS, focal lengths and principal point scale alike (no 0.5
    shift is needed).
    """
    sy = sx if sy is None else sy
    S = torch.tensor([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]], dtype=K.dtype, device=K.device)
    return S @ K


def pixel_centers(H: int, W: int, dtype=torch.float32, device=None) -> Tensor:
    """Pixel centres (H, W, 2) as (x, y) = (j + 0.5, i + 0.5)."""
    ys = torch.arange(H, dtype=dtype, device=device) + 0.5
    xs = torch.arange(W, dtype=dtype, device=device) + 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def project(X_world: Tensor, K: Tensor, w2c: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points (..., N, 3) with K (..., 3, 3), w2c (..., 4, 4).

    Returns pixel coordinates (..., N, 2) and camera-frame depth z (..., N). Points behind the camera get
    meaningless pixels; callers mask with ``z > 0``.
    """
    X_cam = transform_points(w2c, X_world)
    z = X_cam[..., 2]
    uvw = X_cam @ K.transpose(-1, -2)
    w = uvw[..., 2:3]
    uv = uvw[..., :2] / torch.where(w.abs() < 1e-12, torch.full_like(w, 1e-12), w)
    return uv, z


def unproject_depth(depth: Tensor, K: Tensor, c2w: Tensor) -> Tensor:
    """Point map (H, W, 3) in world coordinates from a z-depth map (H, W), K (3, 3), c2w (4, 4)."""
    H, W = depth.shape[-2:]
    uv = pixel_centers(H, W, dtype=depth.dtype, device=depth.device)
    ones = torch.ones_like(uv[..., :1])
    rays = torch.cat([uv, ones], dim=-1) @ torch.linalg.inv(K).T  # z = 1 rays in camera frame
    X_cam = rays * depth[..., None]
    return X_cam @ c2w[:3, :3].T + c2w[:3, 3]


def fov_to_focal(fov_rad: float, size_px: float) -> float:
    return 0.5 * size_px / float(np.tan(0.5 * fov_rad))


def focal_to_fov(focal_px: float, size_px: float) -> float:
    return 2.0 * float(np.arctan(0.5 * size_px / focal_px))


# --------------------------------------------------------------------------------------------------
# Rotations: SO(3), quaternions (wxyz), 6D
# --------------------------------------------------------------------------------------------------


def skew(w: Tensor) -> Tensor:
    """Cross-product matrix (..., 3, 3) of vectors (..., 3)."""
    z = torch.zeros_like(w[..., 0])
    return torch.stack(
        [
            torch.stack([z, -w[..., 2], w[..., 1]], -1),
            torch.stack([w[..., 2], z, -w[..., 0]], -1),
            torch.stack([-w[..., 1], w[..., 0], z], -1),
        ],
        -2,
    )


def _taylor_safe(theta2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients A = sin(t)/t, B = (1-cos t)/t^2, C = (t - sin t)/t^3, stable at t -> 0."""
    small = theta2 < 1e-8
    t2 = torch.where(small, torch.ones_like(theta2), theta2)
    t = t2.sqrt()
    A = torch.where(small, 1 - theta2 / 6, torch.sin(t) / t)
    B = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(t)) / t2)
    C = torch.where(small, 1.0 / 6 - theta2 / 120, (t - torch.sin(t)) / (t2 * t))
    return A, B, C


def so3_exp(omega: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) from axis-angle vectors (..., 3) (Rodrigues)."""
    theta2 = (omega * omega).sum(-1)
    A, B, _ = _taylor_safe(theta2)
    Wx = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(Wx)
    return eye + A[..., None, None] * Wx + B[..., None, None] * (Wx @ Wx)


def so3_log(R: Tensor) -> Tensor:
    """Axis-angle vectors (..., 3) from rotation matrices (..., 3, 3); angle in [0, pi]."""
    q = rotmat_to_quat(R)
    w = q[..., :1].clamp(-1.0, 1.0)
    # make w >= 0 so the angle is in [0, pi]
    sign = torch.where(w < 0, -torch.ones_like(w), torch.ones_like(w))
    q = q * sign
    w = q[..., :1]
    v = q[..., 1:]
    n = v.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(n, w)
    scale = torch.where(n < 1e-8, 2.0 / w.clamp_min(1e-8), angle / n.clamp_min(1e-12))
    return v * scale


def rotation_angle_deg(R_a: Tensor, R_b: Tensor) -> Tensor:
    """Geodesic angle (degrees) between rotations (..., 3, 3)."""
    R = R_a @ R_b.transpose(-1, -2)
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def quat_normalize(q: Tensor) -> Tensor:
    return q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def quat_to_rotmat(q: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) from quaternions (..., 4) in (w, x, y, z); normalised inside."""
    w, x, y, z = quat_normalize(q).unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def rotmat_to_quat(R: Tensor) -> Tensor:
    """Quaternions (..., 4) in (w, x, y, z) with w >= 0 from rotation matrices (..., 3, 3).

    Uses the numerically safest of the four branches per matrix.
    """
    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    tr = m00 + m11 + m22
    cands = torch.stack(
        [
            torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                         m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0],
                         m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22,
                         m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0],
                         m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )  # (..., 4 branches, 4)
    diag = torch.stack([1 + tr, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = quat_normalize(q)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of (w, x, y, z) quaternions (..., 4)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


def quat_xyzw_to_wxyz(q: Tensor) -> Tensor:
    """Convert scalar-last quaternions (official VGGT encodings) to the project's scalar-first order."""
    return torch.cat([q[..., 3:4], q[..., :3]], dim=-1)


def rot6d_to_rotmat(d6: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) from the continuous 6D representation (first two rows, Gram-Schmidt)."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


# --------------------------------------------------------------------------------------------------
# se(3)
# --------------------------------------------------------------------------------------------------


def se3_exp(xi: Tensor) -> Tensor:
    """4x4 rigid transforms (..., 4, 4) from twists xi = (v, omega) (..., 6)."""
    v, omega = xi[..., :3], xi[..., 3:]
    theta2 = (omega * omega).sum(-1)
    A, B, C = _taylor_safe(theta2)
    Wx = skew(omega)
    WW = Wx @ Wx
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand_as(Wx)
    R = eye + A[..., None, None] * Wx + B[..., None, None] * WW
    V = eye + B[..., None, None] * Wx + C[..., None, None] * WW
    t = (V @ v.unsqueeze(-1)).squeeze(-1)
    return make_rigid(R, t)


def se3_log(T: Tensor) -> Tensor:
    """Twists (..., 6) = (v, omega) from rigid transforms (..., 4, 4); inverse of :func:`se3_exp`."""
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    omega = so3_log(R)
    theta2 = (omega * omega).sum(-1)
    A, B, _ = _taylor_safe(theta2)
    Wx = skew(omega)
    small = theta2 < 1e-8
    t2 = torch.where(small, torch.ones_like(theta2), theta2)
    # V^-1 = I - W/2 + (1/t^2) (1 - A / (2B)) W^2
    coef = torch.where(small, torch.full_like(theta2, 1.0 / 12), (1 - A / (2 * B)) / t2)
    eye = torch.eye(3, dtype=T.dtype, device=T.device).expand_as(Wx)
    Vinv = eye - 0.5 * Wx + coef[..., None, None] * (Wx @ Wx)
    v = (Vinv @ t.unsqueeze(-1)).squeeze(-1)
    return torch.cat([v, omega], dim=-1)


# --------------------------------------------------------------------------------------------------
# Similarity alignment
# --------------------------------------------------------------------------------------------------


def umeyama(src: Tensor, dst: Tensor, with_scale: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares similarity (s, R, t) with dst ~= s * R @ src + t, for point sets (N, 3).

    Computed in float64. Degenerate inputs (all points equal) give s = 1, R = I.
    """
    dtype = src.dtype
    x = src.double()
    y = dst.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    var_x = (xc * xc).sum() / x.shape[0]
    cov = yc.T @ xc / x.shape[0]
    U, S, Vt = torch.linalg.svd(cov)
    D = torch.eye(3, dtype=torch.float64)
    if torch.det(U) * torch.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    if with_scale and var_x > 1e-20:
        s = (S * D.diagonal()).sum() / var_x
    else:
        s = torch.tensor(1.0, dtype=torch.float64)
    t = my - s * R @ mx
    return s.to(dtype), R.to(dtype), t.to(dtype)


def sim3_transform_w2c(w2c: Tensor, s: Tensor | float, R: Tensor, t: Tensor) -> Tensor:
    """Re-express cameras (..., 4, 4) after the world is mapped by X' = s R X + t.

    The returned w2c map X' to the same camera frame, scaled by s (so depths scale with the world).
    """
    Rc = w2c[..., :3, :3]
    tc = w2c[..., :3, 3]
    R_new = Rc @ R.T
    t_new = s * tc - (R_new @ t.unsqueeze(-1)).squeeze(-1)
    return make_rigid(R_new, t_new)


def look_at_w2c(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """w2c (4, 4) of an OpenCV camera at ``eye`` looking at ``target``; ``up`` is the world up direction.

    The camera's y axis (down in the image) points along -up as closely as possible.
    """
    up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype) if up is None else up.to(eye.dtype)
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    x = torch.nn.functional.normalize(torch.cross(z, up, dim=-1), dim=-1)  # right = forward x up
    y = torch.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], dim=0)  # rows: camera axes in world coordinates
    return make_rigid(R, -(R @ eye))


# --------------------------------------------------------------------------------------------------
# The Cameras container
# --------------------------------------------------------------------------------------------------


@dataclass
class Cameras:
    """A set of pinhole cameras in the project's conventions.

    Attributes:
        K: (N, 3, 3) float32 intrinsics in pixels of the image as used.
        w2c: (N, 4, 4) float32 world-to-camera transforms (OpenCV frame).
        sizes: (N, 2) int64 image sizes as (W, H).
        names: N image names (file names without folders).
    """

    K: Tensor
    w2c: Tensor
    sizes: Tensor
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.K.shape[0]
        if self.w2c.shape != (n, 4, 4) or self.K.shape != (n, 3, 3) or self.sizes.shape != (n, 2):
            raise ValueError(
                f"inconsistent camera shapes: K {tuple(self.K.shape)}, w2c {tuple(self.w2c.shape)}, "
                f"sizes {tuple(self.sizes.shape)}"
            )
        if not self.names:
            self.names = [f"{i:04d}" for i in range(n)]
        if len(self.names) != n:
            raise ValueError(f"{len(self.names)} names for {n} cameras")

    def __len__(self) -> int:
        return self.K.shape[0]

    @property
    def c2w(self) -> Tensor:
        """(N, 4, 4) camera-to-world transforms."""
        return invert_rigid(self.w2c)

    @property
    def centers(self) -> Tensor:
        """(N, 3) camera centres in world coordinates."""
        return camera_centers(self.w2c)

    def scaled(self, factor: float) -> Cameras:
        """Cameras for images resized by ``factor`` (sizes rounded to whole pixels, K scaled exactly)."""
        new_sizes = torch.round(self.sizes.double() * factor).long()
        sx = new_sizes[:, 0].double() / self.sizes[:, 0].double()
        sy = new_sizes[:, 1].double() / self.sizes[:, 1].double()
        S = torch.zeros(len(self), 3, 3, dtype=self.K.dtype)
        S[:, 0, 0] = sx.to(self.K.dtype)
        S[:, 1, 1] = sy.to(self.K.dtype)
        S[:, 2, 2] = 1
        return Cameras(S @ self.K, self.w2c.clone(), new_sizes, list(self.names))

    def to(self, device) -> Cameras:
        return Cameras(self.K.to(device), self.w2c.to(device), self.sizes.to(device), list(self.names))

    def subset(self, idx) -> Cameras:
        """Cameras at integer indices or names ``idx`` (a list), in that order."""
        ids = [self.names.index(i) if isinstance(i, str) else int(i) for i in idx]
        t = torch.as_tensor(ids, dtype=torch.long)
        names = [self.names[i] for i in ids]
        return Cameras(self.K[t].clone(), self.w2c[t].clone(), self.sizes[t].clone(), names)

    def with_w2c(self, w2c: Tensor) -> Cameras:
        w2c = w2c.detach().clone().to(self.K.dtype)
        return Cameras(self.K.clone(), w2c, self.sizes.clone(), list(self.names))

    def clone(self) -> Cameras:
        return self.with_w2c(self.w2c)

    @staticmethod
    def cat(items: list[Cameras]) -> Cameras:
        return Cameras(
            torch.cat([c.K for c in items]),
            torch.cat([c.w2c for c in items]),
            torch.cat([c.sizes for c in items]),
            [n for c in items for n in c.names],
        )


def interpolate_cameras(cameras: Cameras, i: int, j: int, ts: list[float] | torch.Tensor) -> Cameras:
    """Cameras between ``cameras[i]`` and ``cameras[j]`` at fractions ``ts`` (0 -> i, 1 -> j).

    Camera centres are interpolated linearly and orientations along the geodesic (slerp on SO(3));
    intrinsics and image size are those of camera i.
    """
    ts = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)
    c2w = invert_rigid(cameras.w2c.double())
    Ra, Rb = c2w[i, :3, :3], c2w[j, :3, :3]
    Ca, Cb = c2w[i, :3, 3], c2w[j, :3, 3]
    omega = so3_log(Rb @ Ra.T)
    R = so3_exp(ts[:, None] * omega) @ Ra
    C = Ca + ts[:, None] * (Cb - Ca)
    w2c = invert_rigid(make_rigid(R, C)).float()
    n = len(ts)
    names = [f"interp_{i:03d}_{j:03d}_{k:02d}.png" for k in range(n)]
    K = cameras.K[i : i + 1].expand(n, 3, 3).clone()
    return Cameras(K, w2c, cameras.sizes[i : i + 1].expand(n, 2).clone(), names)
