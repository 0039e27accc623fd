"""DUSt3R: two-view point-map regression (CroCo backbone + per-view heads), checkpoint-compatible.

Given two images, the network predicts for every pixel of view 1 its 3D point in view 1's camera frame
(``pts3d``) and for every pixel of view 2 its 3D point *also in view 1's camera frame*
(``pts3d_in_other_view``), each with a confidence ``conf`` >= 1 (higher is better). Frames are OpenCV
(x right, y down, z forward) up to an unknown global scale; no intrinsics are needed or given.

State-dict layout (official ``AsymmetricCroCo3DStereo``): the backbone keys of
:class:`~recon.priors.networks.croco.CroCoStereoBackbone` plus ``downstream_head1.*`` (view 1) and
``downstream_head2.*`` (view 2), each either ``proj.*`` (linear head) or ``dpt.*`` (DPT head).

Head outputs (official "postprocess"), from the raw (B, C, H, W) map permuted to (B, H, W, C):

- ``pts3d`` from channels 0:3 by ``depth_mode`` ``(mode, vmin, vmax)``: with ``d = |xyz|``,
  ``'exp'``: ``xyz / max(d, 1e-8) * expm1(d)``; ``'square'``: ``xyz / max(d, 1e-8) * d^2``;
  ``'linear'``: ``xyz``.
- ``conf`` from channel 3 by ``conf_mode``: ``'exp'``: ``vmin + min(exp(x), vmax - vmin)``;
  ``'sigmoid'``: ``vmin + (vmax - vmin) * sigmoid(x)``.

Input images are (B, 3, H, W) in [-1, 1] (``(rgb - 0.5) / 0.5``) with H, W multiples of 16; see
:func:`prepare_image` for the resize/crop the released 512 models expect and :class:`NetworkCrop` for the
way back to the original pixels.

The configuration (:class:`Dust3RConfig`, :func:`config_from_dict`) lives in
:mod:`recon.priors.networks.dust3r_config` and the input preparation in
:mod:`recon.priors.networks.network_input`; both are re-exported here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recon.priors.networks.croco import CroCoStereoBackbone
from recon.priors.networks.dpt import DPTHead
from recon.priors.networks.dust3r_config import (
    INF,
    Dust3RConfig,
    HeadType,
    Mode,
    config_from_dict,
    infer_config_from_weights,
    mast3r_default_config,
)
from recon.priors.networks.layers import unpatchify
from recon.priors.networks.network_input import NetworkCrop, prepare_image

__all__ = [
    "INF",
    "DPTPts3dHead",
    "DUSt3R",
    "Dust3RConfig",
    "HeadType",
    "LinearPts3dHead",
    "Mode",
    "NetworkCrop",
    "apply_conf_mode",
    "apply_depth_mode",
    "config_from_dict",
    "infer_config_from_weights",
    "make_dpt",
    "mast3r_default_config",
    "postprocess_pts3d",
    "prepare_image",
]


# --------------------------------------------------------------------------------------------------
# Output activations
# --------------------------------------------------------------------------------------------------


def apply_depth_mode(xyz: Tensor, mode: Mode) -> Tensor:
    """Raw (..., 3) -> 3D points by ``mode = (name, vmin, vmax)`` (only unbounded modes, as released)."""
    name, vmin, vmax = mode
    if not (vmin == -INF and vmax == INF):
        raise ValueError(f"bounded depth_mode {mode} is not supported")
    if name == "linear":
        return xyz
    d = xyz.norm(dim=-1, keepdim=True)
    direction = xyz / d.clip(min=1e-8)
    if name == "exp":
        return direction * torch.expm1(d)
    if name == "square":
        return direction * d.square()
    raise ValueError(f"unknown depth_mode {name!r}")


def apply_conf_mode(x: Tensor, mode: Mode) -> Tensor:
    """Raw confidence logits -> confidence by ``mode = (name, vmin, vmax)``."""
    name, vmin, vmax = mode
    if name == "exp":
        return vmin + x.exp().clip(max=vmax - vmin)
    if name == "sigmoid":
        return (vmax - vmin) * torch.sigmoid(x) + vmin
    raise ValueError(f"unknown conf_mode {name!r}")


def postprocess_pts3d(raw: Tensor, cfg: Dust3RConfig) -> dict[str, Tensor]:
    """Raw head output (B, C, H, W) -> {'pts3d': (B, H, W, 3), 'conf': (B, H, W)} (conf if configured)."""
    fmap = raw.permute(0, 2, 3, 1)
    out = {"pts3d": apply_depth_mode(fmap[..., 0:3], cfg.depth_mode)}
    if cfg.conf_mode is not None:
        out["conf"] = apply_conf_mode(fmap[..., 3], cfg.conf_mode)
    return out


# --------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------


class LinearPts3dHead(nn.Module):
    """Linear head: each decoder token predicts its p x p pixel block (``proj`` then pixel shuffle)."""

    def __init__(self, cfg: Dust3RConfig):
        super().__init__()
        self.cfg = cfg
        nchan = 3 + int(cfg.has_conf)
        self.proj = nn.Linear(cfg.dec_embed_dim, nchan * cfg.patch_size**2)

    def forward(self, decout: list[Tensor], image_size: tuple[int, int]) -> dict[str, Tensor]:
        raw = unpatchify(self.proj(decout[-1]), image_size, self.cfg.patch_size)
        return postprocess_pts3d(raw, self.cfg)


def make_dpt(cfg: Dust3RConfig) -> DPTHead:
    """The DPT of a DUSt3R/MASt3R points head (hooks on [encoder, decoder...] outputs)."""
    return DPTHead(
        dim_tokens=[cfg.enc_embed_dim if h == 0 else cfg.dec_embed_dim for h in cfg.hooks],
        num_channels=3 + int(cfg.has_conf),
        layer_dims=cfg.dpt_layer_dims,
        feature_dim=cfg.dpt_feature_dim,
        last_dim=cfg.dpt_last_dim,
        patch_size=cfg.patch_size,
    )


class DPTPts3dHead(nn.Module):
    """DPT head on the hooked decoder outputs (keys ``dpt.*``)."""

    def __init__(self, cfg: Dust3RConfig):
        super().__init__()
        self.cfg = cfg
        self.dpt = make_dpt(cfg)

    def forward(self, decout: list[Tensor], image_size: tuple[int, int]) -> dict[str, Tensor]:
        raw = self.dpt([decout[h] for h in self.cfg.hooks], image_size)
        return postprocess_pts3d(raw, self.cfg)


# --------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------


class DUSt3R(CroCoStereoBackbone):
    """Two-view point-map network (official ``AsymmetricCroCo3DStereo``), any size.

    ``forward(img1, img2)`` returns ``(res1, res2)``:

    - ``res1['pts3d']`` (B, H, W, 3): view 1's pixels in view 1's camera frame; ``res1['conf']`` (B, H, W);
    - ``res2['pts3d_in_other_view']`` (B, H, W, 3): view 2's pixels in **view 1's** camera frame;
      ``res2['conf']`` (B, H, W);
    - MASt3R adds ``desc`` (B, H, W, D) and ``desc_conf`` (B, H, W) to both.
    """

    def __init__(self, cfg: Dust3RConfig | None = None):
        cfg = cfg or Dust3RConfig()
        cfg.check()
        super().__init__(
            patch_size=cfg.patch_size,
            enc_embed_dim=cfg.enc_embed_dim,
            enc_depth=cfg.enc_depth,
            enc_num_heads=cfg.enc_num_heads,
            dec_embed_dim=cfg.dec_embed_dim,
            dec_depth=cfg.dec_depth,
            dec_num_heads=cfg.dec_num_heads,
            mlp_ratio=cfg.mlp_ratio,
            rope_base=cfg.rope_base,
            norm_mem=cfg.norm_mem,
            landscape_only=cfg.landscape_only,
        )
        self.cfg = cfg
        self.downstream_head1 = self.make_head(cfg)
        self.downstream_head2 = self.make_head(cfg)

    @staticmethod
    def make_head(cfg: Dust3RConfig) -> nn.Module:
        if cfg.head_type == "linear":
            return LinearPts3dHead(cfg)
        if cfg.head_type == "dpt":
            return DPTPts3dHead(cfg)
        raise ValueError(f"head_type {cfg.head_type!r} needs the MASt3R network")

    def decode_pair(
        self,
        feat1: Tensor,
        pos1: Tensor,
        feat2: Tensor,
        pos2: Tensor,
        tensor_hw1: tuple[int, int],
        tensor_hw2: tuple[int, int],
        true_shape1: Tensor | None = None,
        true_shape2: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Decoder and heads on encoded views (see :meth:`encode`); tensor_hw = the input images' (H, W)."""
        dec1, dec2 = self.decode(feat1, pos1, feat2, pos2)
        B = feat1.shape[0]
        dev = feat1.device
        ts1 = true_shape1 if true_shape1 is not None else torch.tensor([list(tensor_hw1)] * B, device=dev)
        ts2 = true_shape2 if true_shape2 is not None else torch.tensor([list(tensor_hw2)] * B, device=dev)
        res1 = self.apply_head(self.downstream_head1, dec1, tensor_hw1, ts1)
        res2 = self.apply_head(self.downstream_head2, dec2, tensor_hw2, ts2)
        res2["pts3d_in_other_view"] = res2.pop("pts3d")
        return res1, res2

    def forward(
        self,
        img1: Tensor,
        img2: Tensor,
        true_shape1: Tensor | None = None,
        true_shape2: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """img1, img2 (B, 3, H, W) in [-1, 1] (sizes may differ between the views); true_shape (B, 2)
        ``[H, W]`` only matters for ``landscape_only`` models. Returns ``(res1, res2)`` (class docstring)."""
        ts1 = self.true_shapes(img1, true_shape1)
        ts2 = self.true_shapes(img2, true_shape2)
        if img1.shape[-2:] == img2.shape[-2:]:
            # Same size: one encoder pass over both views (the encoding is per image).
            feat, pos = self.encode(torch.cat((img1, img2)), torch.cat((ts1, ts2)))
            (feat1, feat2), (pos1, pos2) = feat.chunk(2), pos.chunk(2)
        else:
            feat1, pos1 = self.encode(img1, ts1)
            feat2, pos2 = self.encode(img2, ts2)
        return self.decode_pair(
            feat1, pos1, feat2, pos2, tuple(img1.shape[-2:]), tuple(img2.shape[-2:]), ts1, ts2
        )
