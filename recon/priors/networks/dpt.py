"""DPT dense-prediction head in the layout of DUSt3R/MASt3R (CroCo's DPT adapter).

It turns four token maps from a ViT (hooked layers, each (B, N, C_i) on an (H/p, W/p) grid) into a
full-resolution (B, num_channels, H, W) map:

1. ``act_postprocess[i]``: 1x1 conv to ``layer_dims[i]`` and a resampling to strides p/4, p/8, p/16, p/32
   of the tokens' grid (transposed convs x4 and x2, identity, 3x3 conv stride 2).
2. ``scratch.layer_rn[i]``: 3x3 conv (no bias) to ``feature_dim`` (the same modules are also registered as
   ``scratch.layer{i+1}_rn``, so both key names are in the state_dict: they are one tensor).
3. Fusion from coarse to fine with ``scratch.refinenet4..1``; refinenet4's output is cropped to the size
   of level 3 (at odd token grids the stride-2 conv rounds up).
4. ``head``: conv3x3 (F -> F/2), bilinear x2, conv3x3 (F/2 -> last_dim), ReLU, conv1x1 (-> channels).

Bilinear upsamplings use ``align_corners=True``. ReLUs are not in-place, so a residual unit returns
``conv2(relu(conv1(relu(x)))) + x`` (VGGT's variant differs; it is not this module).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` with 3x3 convs keeping ``features`` channels."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Feature fusion: ``out_conv(up2(rcu2(x + rcu1(skip))))`` (``skip`` optional, ``rcu1`` unused then)."""

    def __init__(self, features: int):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Scratch(nn.Module):
    """Holds the per-level projections and the fusion blocks under their checkpoint names."""

    def __init__(self, layer_dims: Sequence[int], feature_dim: int):
        super().__init__()
        for i, d in enumerate(layer_dims):
            setattr(self, f"layer{i + 1}_rn", nn.Conv2d(d, feature_dim, kernel_size=3, padding=1, bias=False))
        # The same four convs again under a list name: the official state_dict has both key sets.
        self.layer_rn = nn.ModuleList([getattr(self, f"layer{i + 1}_rn") for i in range(len(layer_dims))])
        for i in range(len(layer_dims)):
            setattr(self, f"refinenet{i + 1}", FusionBlock(feature_dim))


class _Upsample2x(nn.Module):
    """Bilinear x2 (align_corners=True); a module so that the ``head`` Sequential keeps its indices."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class DPTHead(nn.Module):
    """DPT regression head (keys ``act_postprocess.*``, ``scratch.*``, ``head.*``).

    Args:
        dim_tokens: channels of the four hooked token maps (DUSt3R: [enc_dim, dec_dim, dec_dim, dec_dim]).
        num_channels: output channels (4 for points + confidence).
        layer_dims: per-level widths after ``act_postprocess`` (official [96, 192, 384, 768]).
        feature_dim: fusion width (official 256).
        last_dim: width before the last 1x1 conv (official feature_dim // 2).
        patch_size: the ViT patch size (the tokens' stride in pixels).
    """

    def __init__(
        self,
        dim_tokens: Sequence[int],
        num_channels: int,
        layer_dims: Sequence[int] = (96, 192, 384, 768),
        feature_dim: int = 256,
        last_dim: int = 128,
        patch_size: int = 16,
    ):
        super().__init__()
        if len(dim_tokens) != 4 or len(layer_dims) != 4:
            raise ValueError("the DPT head takes exactly four hooked layers")
        self.patch_size = patch_size
        ld = list(layer_dims)
        self.act_postprocess = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(dim_tokens[0], ld[0], kernel_size=1),
                    nn.ConvTranspose2d(ld[0], ld[0], kernel_size=4, stride=4),
                ),
                nn.Sequential(
                    nn.Conv2d(dim_tokens[1], ld[1], kernel_size=1),
                    nn.ConvTranspose2d(ld[1], ld[1], kernel_size=2, stride=2),
                ),
                nn.Sequential(nn.Conv2d(dim_tokens[2], ld[2], kernel_size=1)),
                nn.Sequential(
                    nn.Conv2d(dim_tokens[3], ld[3], kernel_size=1),
                    nn.Conv2d(ld[3], ld[3], kernel_size=3, stride=2, padding=1),
                ),
            ]
        )
        self.scratch = _Scratch(ld, feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, kernel_size=3, padding=1),
            _Upsample2x(),
            nn.Conv2d(feature_dim // 2, last_dim, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, num_channels, kernel_size=1),
        )

    def forward(self, layers: Sequence[Tensor], image_size: tuple[int, int]) -> Tensor:
        """layers: four (B, N, C_i) token maps on the (H/p, W/p) grid; image_size (H, W) -> (B, ch, H, W)."""
        H, W = image_size
        h, w = H // self.patch_size, W // self.patch_size
        feats = []
        for i, tokens in enumerate(layers):
            B, N, C = tokens.shape
            if N != h * w:
                raise ValueError(f"{N} tokens do not fill a {h}x{w} grid for a {H}x{W} image")
            grid = tokens.transpose(1, 2).reshape(B, C, h, w)
            feats.append(self.scratch.layer_rn[i](self.act_postprocess[i](grid)))
        s = self.scratch
        path = s.refinenet4(feats[3])[:, :, : feats[2].shape[2], : feats[2].shape[3]]
        path = s.refinenet3(path, feats[2])
        path = s.refinenet2(path, feats[1])
        path = s.refinenet1(path, feats[0])
        return self.head(path)
