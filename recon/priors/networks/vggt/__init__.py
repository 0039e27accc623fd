"""Clean-room VGGT (Visual Geometry Grounded Transformer), state-dict compatible with the official
checkpoints.

- :mod:`.config`: :class:`VGGTConfig`, :func:`vggt_config_from_dict`;
- :mod:`.patch_embed`: the DINOv2-with-registers patch embed; :mod:`.aggregator`: alternating
  frame/global attention; :mod:`.camera_head`, :mod:`.dpt_head`: the heads;
- :mod:`.model`: :class:`VGGT`, :func:`build_vggt` (used by :mod:`recon.priors.checkpoints`);
- :mod:`.pose_encoding`: pose encodings to the project's ``w2c`` / ``K``;
- :mod:`.preprocess`: input images as the released model expects them, and outputs back on the
  original pixels.
"""

from recon.priors.networks.vggt.config import VGGTConfig, vggt_config_from_dict
from recon.priors.networks.vggt.model import VGGT, build_vggt
from recon.priors.networks.vggt.pose_encoding import (
    pose_encoding_to_extrinsic_intrinsic,
    pose_encoding_to_w2c_K,
)
from recon.priors.networks.vggt.preprocess import (
    VGGTPrediction,
    network_crop,
    outputs_to_image,
    predict,
    prepare_images,
)

__all__ = [
    "VGGT",
    "VGGTConfig",
    "VGGTPrediction",
    "build_vggt",
    "network_crop",
    "outputs_to_image",
    "pose_encoding_to_extrinsic_intrinsic",
    "pose_encoding_to_w2c_K",
    "predict",
    "prepare_images",
    "vggt_config_from_dict",
]
