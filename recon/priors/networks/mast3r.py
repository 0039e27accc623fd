"""MASt3R: DUSt3R's network with a head that also predicts dense local descriptors (official
``AsymmetricMASt3R`` with ``head_type='catmlp+dpt'``), checkpoint-compatible.

Each view's head (``downstream_head{1,2}``) has the DUSt3R DPT points head (``dpt.*``) plus an MLP
``head_local_features`` (``fc1``, GELU, ``fc2``) on the concatenation of the encoder tokens and the last
(normalised) decoder tokens. The MLP predicts, per token, a p x p block of ``local_feat_dim`` descriptor
channels (+1 descriptor-confidence channel when ``two_confs``), unpatchified with pixel shuffle.

Outputs, in addition to DUSt3R's ``pts3d``/``pts3d_in_other_view`` and ``conf``:

- ``desc`` (B, H, W, D): descriptor channels; ``desc_mode`` 'norm' divides by their L2 norm (no epsilon),
  'linear' keeps them;
- ``desc_conf`` (B, H, W): the extra channel through ``desc_conf_mode`` (``conf_mode`` when None) when
  ``two_confs``, else a copy of ``conf``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recon.priors.networks.dust3r import DUSt3R, apply_conf_mode, make_dpt, postprocess_pts3d
from recon.priors.networks.dust3r_config import Dust3RConfig, mast3r_default_config
from recon.priors.networks.layers import Mlp, unpatchify


def apply_desc_mode(desc: Tensor, mode: str) -> Tensor:
    """Descriptor activation: 'norm' -> unit L2 norm over the last dim; 'linear' -> unchanged."""
    if mode == "norm":
        return desc / desc.norm(dim=-1, keepdim=True)
    if mode == "linear":
        return desc
    raise ValueError(f"unknown desc_mode {mode!r}")


class CatMlpDPTHead(nn.Module):
    """MASt3R head: DPT points (keys ``dpt.*``) + descriptor MLP (keys ``head_local_features.*``)."""

    def __init__(self, cfg: Dust3RConfig):
        super().__init__()
        self.cfg = cfg
        in_dim = cfg.enc_embed_dim + cfg.dec_embed_dim
        self.dpt = make_dpt(cfg)
        self.head_local_features = Mlp(
            in_dim,
            int(cfg.mlp_hidden_factor * in_dim),
            (cfg.local_feat_dim + int(cfg.two_confs)) * cfg.patch_size**2,
        )

    def forward(self, decout: list[Tensor], image_size: tuple[int, int]) -> dict[str, Tensor]:
        cfg = self.cfg
        out = postprocess_pts3d(self.dpt([decout[h] for h in cfg.hooks], image_size), cfg)
        tokens = torch.cat((decout[0], decout[-1]), dim=-1)  # encoder ++ normalised last decoder tokens
        local = unpatchify(self.head_local_features(tokens), image_size, cfg.patch_size).permute(0, 2, 3, 1)
        D = cfg.local_feat_dim
        out["desc"] = apply_desc_mode(local[..., :D], cfg.desc_mode)
        if cfg.two_confs:
            out["desc_conf"] = apply_conf_mode(local[..., D], cfg.desc_conf_mode or cfg.conf_mode)
        elif "conf" in out:
            out["desc_conf"] = out["conf"].clone()
        return out


class MASt3R(DUSt3R):
    """DUSt3R with descriptor heads; defaults to the released ViT-L/ViT-B 512 ``catmlp+dpt`` model."""

    def __init__(self, cfg: Dust3RConfig | None = None):
        super().__init__(cfg or mast3r_default_config())

    @staticmethod
    def make_head(cfg: Dust3RConfig) -> nn.Module:
        if cfg.head_type == "catmlp+dpt":
            return CatMlpDPTHead(cfg)
        return DUSt3R.make_head(cfg)
