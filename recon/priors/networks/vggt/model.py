"""VGGT: feed-forward cameras, depth and point maps for S frames at once, checkpoint-compatible.

State-dict layout (official ``vggt.models.vggt.VGGT``): ``aggregator.*``, ``camera_head.*``,
``depth_head.*``, ``point_head.*``. The released checkpoint also has ``track_head.*`` (point tracking),
which this project does not use: :func:`build_vggt` drops those keys before the strict load.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from recon.errors import ReconError
from recon.priors.networks.loading import build_strict
from recon.priors.networks.vggt.aggregator import Aggregator
from recon.priors.networks.vggt.camera_head import CameraHead
from recon.priors.networks.vggt.config import VGGTConfig, vggt_config_from_dict
from recon.priors.networks.vggt.dpt_head import VGGTDenseHead
from recon.priors.networks.vggt.pose_encoding import pose_encoding_to_extrinsic_intrinsic

UNUSED_KEY_PREFIXES = ("track_head.",)


class VGGT(nn.Module):
    """The VGGT network (any size; defaults: the released VGGT-1B).

    ``forward(images)`` takes (S, 3, H, W) or (B, S, 3, H, W) images in [0, 1] (H, W multiples of the
    patch size; see :func:`~recon.priors.networks.vggt.preprocess.prepare_images`) and returns a dict:

    - ``pose_enc`` (B, S, 9): ``[T, quat xyzw, fov_h, fov_w]`` of the last camera-head iteration,
      ``pose_enc_list`` (iterations, B, S, 9) all of them (see :mod:`.pose_encoding`);
    - ``extrinsic`` (B, S, 3, 4) world-to-camera ``[R|T]`` (OpenCV; world = frame 0's camera) and
      ``intrinsic`` (B, S, 3, 3) in pixels of the (H, W) input;
    - ``depth`` (B, S, H, W, 1) z-depth along the camera axis, ``depth_conf`` (B, S, H, W) >= 1;
    - ``world_points`` (B, S, H, W, 3) in the world frame, ``world_points_conf`` (B, S, H, W) >= 1.

    Geometry is up to one unknown global scale, shared by depth, points and translations.
    """

    def __init__(self, cfg: VGGTConfig | None = None):
        super().__init__()
        cfg = cfg or VGGTConfig()
        cfg.check()
        self.cfg = cfg
        self.aggregator = Aggregator(cfg)
        self.camera_head = CameraHead(cfg) if cfg.enable_camera else None
        self.depth_head = VGGTDenseHead(cfg, output_dim=2, activation="exp") if cfg.enable_depth else None
        self.point_head = VGGTDenseHead(cfg, output_dim=4, activation="inv_log") if cfg.enable_point else None

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dim() == 4:
            images = images[None]
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"expected images (S, 3, H, W) or (B, S, 3, H, W), got {tuple(images.shape)}")
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        tokens = self.aggregator(images)
        out: dict[str, Tensor] = {}
        if self.camera_head is not None:
            pose_list = self.camera_head(tokens)
            out["pose_enc"] = pose_list[-1]
            out["pose_enc_list"] = torch.stack(pose_list)
            out["extrinsic"], out["intrinsic"] = pose_encoding_to_extrinsic_intrinsic(
                out["pose_enc"], image_size
            )
        if self.depth_head is not None:
            out["depth"], out["depth_conf"] = self.depth_head(tokens, image_size)
        if self.point_head is not None:
            out["world_points"], out["world_points_conf"] = self.point_head(tokens, image_size)
        return out


def build_vggt(
    state_dict: Mapping[str, Tensor], config: Mapping | None = None, path: str = "checkpoint"
) -> VGGT:
    """A :class:`VGGT` in eval mode (float32, CPU) with ``state_dict`` loaded strictly.

    Sizes come from ``config`` (see :func:`vggt_config_from_dict`), else from the weight shapes, else the
    released defaults. ``track_head.*`` keys are dropped (no tracker here). Raises ReconError (one line)
    for settings that do not fit or weights that do not fit the network.
    """
    sd = {k: v for k, v in state_dict.items() if not k.startswith(UNUSED_KEY_PREFIXES)}
    try:
        cfg = vggt_config_from_dict(config, sd)
    except (ValueError, TypeError, KeyError) as e:
        raise ReconError(f"{path}: invalid VGGT model settings ({e})") from None
    return build_strict(VGGT, cfg, sd, path)
