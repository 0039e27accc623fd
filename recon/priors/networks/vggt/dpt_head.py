"""VGGT's DPT head (keys ``depth_head.*`` / ``point_head.*``), a variant of DPT that differs from the
DUSt3R one in :mod:`recon.priors.networks.dpt` (key layout, position embeddings, ReLU semantics).

For the four hooked aggregator outputs (B, S, N, 2C), per frame:

1. patch tokens ``[:, :, patch_start_idx:]`` -> ``norm`` (one LayerNorm shared by the levels, eps 1e-5)
   -> (B*S, 2C, h, w) -> ``projects[i]`` (1x1 conv to ``out_channels[i]``) -> + 0.1 * uv embedding ->
   ``resize_layers[i]``: ConvT k4 s4 (x4), ConvT k2 s2 (x2), identity, Conv3x3 s2 (x1/2).
2. ``scratch.layer{i}_rn``: 3x3 conv (no bias) to ``features``.
3. fusion, coarse to fine: ``refinenet4(l4)`` resized to l3's size, ``refinenet3(., l3)`` to l2's size,
   ``refinenet2(., l2)`` to l1's, ``refinenet1(., l1)`` x2 (bilinear, align_corners=True). refinenet4 has
   no skip input and hence no ``resConfUnit1``.
4. ``scratch.output_conv1`` (3x3, F -> F/2) -> bilinear resize to the image size (H, W)
   (align_corners=True) -> + 0.1 * uv embedding -> ``scratch.output_conv2``: 3x3 (F/2 -> 32), ReLU,
   1x1 (-> output_dim).

Residual units: the official ReLUs are in-place, so the skip connection carries ``relu(x)``, not ``x``:
``RCU(x) = conv2(relu(conv1(relu(x)))) + relu(x)``. We write that without in-place ops.

uv embedding (added to an (n, c, h, w) map of an (H, W) image): with ``a = W / H`` and
``s = sqrt(a^2 + 1)``, ``u`` spans ``±(a/s)(w-1)/w`` over the columns and ``v`` spans ``±(1/s)(h-1)/h``
over the rows (``linspace`` in the map's dtype); channels are
``[sin(u om), cos(u om), sin(v om), cos(v om)]``, each c/4 wide, ``om_k = 100^(-k / (c/4))``; the angles
and sin/cos are computed in float64 and cast to the map's dtype.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.priors.networks.vggt.config import VGGTConfig

DPT_NORM_EPS = 1e-5
POS_EMBED_RATIO = 0.1
POS_EMBED_OMEGA0 = 100.0
Activation = Literal["exp", "inv_log"]


def uv_embedding(h: int, w: int, channels: int, aspect: float, dtype: torch.dtype, device=None) -> Tensor:
    """Sin/cos embedding (channels, h, w) of normalised image coordinates (module docstring)."""
    s = (aspect**2 + 1.0) ** 0.5
    ux, vy = aspect / s * (w - 1) / w, 1.0 / s * (h - 1) / h
    u = torch.linspace(-ux, ux, w, dtype=dtype, device=device).to(torch.float64)
    v = torch.linspace(-vy, vy, h, dtype=dtype, device=device).to(torch.float64)
    q = channels // 4
    omega = 1.0 / POS_EMBED_OMEGA0 ** (torch.arange(q, dtype=torch.float64, device=device) / q)
    au, av = u[:, None] * omega, v[:, None] * omega  # (w, q), (h, q)
    emb_u = torch.cat((au.sin(), au.cos()), dim=-1).T[:, None, :].expand(2 * q, h, w)
    emb_v = torch.cat((av.sin(), av.cos()), dim=-1).T[:, :, None].expand(2 * q, h, w)
    return torch.cat((emb_u, emb_v), dim=0).to(dtype)


def _add_uv_embedding(x: Tensor, aspect: float) -> Tensor:
    emb = uv_embedding(x.shape[-2], x.shape[-1], x.shape[1], aspect, x.dtype, x.device)
    return x + POS_EMBED_RATIO * emb


class ResidualConvUnit(nn.Module):
    """``conv2(relu(conv1(relu(x)))) + relu(x)`` (the official in-place ReLU makes the skip ``relu(x)``)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FusionBlock(nn.Module):
    """``out_conv(resize(rcu2(x + rcu1(skip))))``; without ``has_skip`` there is no ``resConfUnit1``."""

    def __init__(self, features: int, has_skip: bool = True):
        super().__init__()
        if has_skip:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        """x (n, F, h, w), skip of the same shape; output resized to ``size`` (else x2)."""
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Scratch(nn.Module):
    """Holds the per-level convs, fusion blocks and output convs under their checkpoint names."""

    def __init__(self, out_channels: tuple[int, ...], features: int, head_features_2: int, output_dim: int):
        super().__init__()
        for i, c in enumerate(out_channels):
            setattr(self, f"layer{i + 1}_rn", nn.Conv2d(c, features, kernel_size=3, padding=1, bias=False))
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features, has_skip=False)
        self.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, head_features_2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(head_features_2, output_dim, kernel_size=1),
        )


class VGGTDenseHead(nn.Module):
    """Dense head: (value, confidence) maps from four aggregator outputs (module docstring).

    Args:
        cfg: network sizes (``dpt_*``, ``embed_dim``, ``patch_size``, ``patch_start_idx``).
        output_dim: channels before activation; the last one is the confidence.
        activation: ``'exp'`` (depth: ``exp(x)``) or ``'inv_log'`` (points: ``sign(x) * expm1(|x|)``).
            The confidence is always ``1 + exp(x)``.
    """

    def __init__(self, cfg: VGGTConfig, output_dim: int, activation: Activation):
        super().__init__()
        if activation not in ("exp", "inv_log"):
            raise ValueError(f"unknown DPT activation {activation!r}")
        self.cfg = cfg
        self.activation = activation
        oc = cfg.dpt_out_channels
        self.norm = nn.LayerNorm(2 * cfg.embed_dim, eps=DPT_NORM_EPS)
        self.projects = nn.ModuleList([nn.Conv2d(2 * cfg.embed_dim, c, kernel_size=1) for c in oc])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = _Scratch(tuple(oc), cfg.dpt_features, cfg.dpt_head_features_2, output_dim)

    def features(self, aggregated_tokens: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        """Fused features after ``output_conv1``, (n, F/2, 8h, 8w), for tokens of n = B*S frames."""
        H, W = image_size
        p = self.cfg.patch_size
        h, w = H // p, W // p
        aspect = W / H
        s = self.scratch
        levels = []
        for i, idx in enumerate(self.cfg.dpt_intermediate_layer_idx):
            t = aggregated_tokens[idx][:, :, self.cfg.patch_start_idx :]
            B, S, P, C = t.shape
            if P != h * w:
                raise ValueError(f"{P} patch tokens do not fill a {h}x{w} grid for a {H}x{W} image")
            x = self.norm(t.reshape(B * S, P, C)).transpose(1, 2).reshape(B * S, C, h, w)
            x = _add_uv_embedding(self.projects[i](x), aspect)
            x = self.resize_layers[i](x)
            levels.append(getattr(s, f"layer{i + 1}_rn")(x))
        l1, l2, l3, l4 = levels
        out = s.refinenet4(l4, size=tuple(l3.shape[-2:]))
        out = s.refinenet3(out, l3, size=tuple(l2.shape[-2:]))
        out = s.refinenet2(out, l2, size=tuple(l1.shape[-2:]))
        out = s.refinenet1(out, l1)
        return s.output_conv1(out)

    def raw(self, aggregated_tokens: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        """The head output before activation, (B*S, output_dim, H, W)."""
        H, W = image_size
        p = self.cfg.patch_size
        x = self.features(aggregated_tokens, image_size)
        x = F.interpolate(x, size=((H // p) * p, (W // p) * p), mode="bilinear", align_corners=True)
        x = _add_uv_embedding(x, W / H)
        return self.scratch.output_conv2(x)

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """Raw (n, D, H, W) -> (values (n, H, W, D-1), conf (n, H, W))."""
        fmap = raw.permute(0, 2, 3, 1)
        x, conf = fmap[..., :-1], fmap[..., -1]
        values = x.exp() if self.activation == "exp" else torch.sign(x) * torch.expm1(x.abs())
        return values, 1.0 + conf.exp()

    def forward(self, aggregated_tokens: list[Tensor], image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Aggregator outputs (B, S, N, 2C) of (H, W) images -> (values (B, S, H, W, D-1), conf (B, S, H, W)).

        Frames go through in chunks of ``dpt_frames_chunk_size`` (memory only: frames are independent).
        """
        B, S = aggregated_tokens[0].shape[:2]
        chunk = self.cfg.dpt_frames_chunk_size
        chunk = S if chunk <= 0 else chunk
        values, confs = [], []
        for s0 in range(0, S, chunk):
            part = [t[:, s0 : s0 + chunk] for t in aggregated_tokens]
            v, c = self.activate(self.raw(part, image_size))
            n = part[0].shape[1]
            values.append(v.reshape(B, n, *v.shape[1:]))
            confs.append(c.reshape(B, n, *c.shape[1:]))
        return torch.cat(values, dim=1), torch.cat(confs, dim=1)
