"""VGGT pose encodings -> project cameras (the one place where VGGT's camera conventions are translated).

A VGGT pose encoding is (..., 9) = ``[T (3), q (4), fov_h, fov_w]``:

- ``q`` is a quaternion in **scalar-last (x, y, z, w)** order (the project uses w, x, y, z), not
  necessarily of unit norm (the official conversion divides by |q|^2, i.e. normalises);
- ``[R(q) | T]`` is **world-to-camera** in the **OpenCV** frame (x right, y down, z forward); the world
  frame is the first frame's camera (its encoding is close to the identity);
- the FoVs are full angles in radians of the network input image (H, W):
  ``fx = (W/2) / tan(fov_w/2)``, ``fy = (H/2) / tan(fov_h/2)`` and the principal point is ``(W/2, H/2)``.

The principal point ``(W/2, H/2)`` is the exact image centre in the project's pixel convention (pixel
(i, j) centred at (j + 0.5, i + 0.5)). The official unprojection samples pixel centres at integer
coordinates instead, which would put the centre half a pixel off; the model was trained on cameras with a
centred principal point, so the centre is what it predicts and that is what we keep.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.cameras import make_rigid, quat_to_rotmat, quat_xyzw_to_wxyz


def fov_to_K(fov_h: Tensor, fov_w: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Pinhole K (..., 3, 3) with a centred principal point from full FoVs (radians) of an (H, W) image."""
    H, W = image_size
    K = torch.zeros(*fov_h.shape, 3, 3, dtype=fov_h.dtype, device=fov_h.device)
    K[..., 0, 0] = (W / 2.0) / torch.tan(fov_w / 2.0)
    K[..., 1, 1] = (H / 2.0) / torch.tan(fov_h / 2.0)
    K[..., 0, 2] = W / 2.0
    K[..., 1, 2] = H / 2.0
    K[..., 2, 2] = 1.0
    return K


def pose_encoding_to_w2c_K(pose_enc: Tensor, image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Pose encodings (..., 9) of an (H, W) network input -> ``(w2c (..., 4, 4), K (..., 3, 3))``.

    ``w2c`` is the project's world-to-camera (OpenCV) matrix, ``K`` is in pixels of the (H, W) image
    (map it to the original photo with :meth:`~recon.priors.networks.network_input.NetworkCrop.K_to_image`).
    """
    if pose_enc.shape[-1] != 9:
        raise ValueError(f"a VGGT pose encoding has 9 values, got shape {tuple(pose_enc.shape)}")
    R = quat_to_rotmat(quat_xyzw_to_wxyz(pose_enc[..., 3:7]))
    w2c = make_rigid(R, pose_enc[..., :3])
    return w2c, fov_to_K(pose_enc[..., 7], pose_enc[..., 8], image_size)


def pose_encoding_to_extrinsic_intrinsic(
    pose_enc: Tensor, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """The official output layout: ``(extrinsic [R|T] (..., 3, 4), intrinsic (..., 3, 3))``, the same
    cameras as :func:`pose_encoding_to_w2c_K` (extrinsic = the top three rows of w2c)."""
    w2c, K = pose_encoding_to_w2c_K(pose_enc, image_size)
    return w2c[..., :3, :], K
