"""DINOv2 ViT with register tokens: VGGT's patch embed (keys ``aggregator.patch_embed.*``).

Forward (inference path), for images (B, 3, H, W) with H, W multiples of the patch size p:

1. ``patch_embed.proj``: Conv p x p stride p -> row-major patch tokens (B, h*w, C), h = H/p, w = W/p.
2. prepend ``cls_token`` and add the learned position embedding ``pos_embed`` (1, 1 + M*M, C), trained on
   an M x M grid. For any other grid its patch part is resized to (h, w) with **bicubic, antialiased**
   interpolation (the cls part is kept); only a square input with h*w == M*M uses it as stored.
3. insert the ``register_tokens`` (1, R, C) right after the cls token: [cls, registers, patches]
   (registers get no position embedding).
4. ``blocks``: pre-norm transformer blocks with LayerScale (LayerNorm eps 1e-6, no RoPE, no qk-norm).
5. ``norm`` (eps 1e-6); the patch part ``[:, 1 + R:]`` is the output ("x_norm_patchtokens").

``mask_token`` is in the checkpoints but only used by DINOv2 pre-training (masked image modelling).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.priors.networks.layers import Block, PatchEmbed

DINOV2_NORM_EPS = 1e-6


class DinoV2PatchEmbed(nn.Module):
    """DINOv2-with-registers encoder returning normalised patch tokens (B, h*w, embed_dim)."""

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        interpolate_antialias: bool = True,
        layerscale_init: float = 1.0,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.blocks = nn.ModuleList(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    norm_eps=DINOV2_NORM_EPS,
                    layerscale_init=layerscale_init,
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=DINOV2_NORM_EPS)

    def position_embedding(self, h: int, w: int) -> Tensor:
        """The position embedding for an h x w patch grid, (1, 1 + h*w, C) (cls entry first)."""
        pos = self.pos_embed
        n_stored = pos.shape[1] - 1
        if h * w == n_stored and h == w:
            return pos
        m = math.isqrt(n_stored)
        dtype = pos.dtype
        pos = pos.float()
        grid = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)  # (1, C, M, M), rows first
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=self.interpolate_antialias)
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat((pos[:, :1], patch_pos), dim=1).to(dtype)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) (ImageNet-normalised) -> normalised patch tokens (B, h*w, C), row-major."""
        B, _, H, W = images.shape
        p = self.patch_size
        tokens, _ = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(B, -1, -1), tokens), dim=1)
        x = x + self.position_embedding(H // p, W // p)
        x = torch.cat((x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 1 + self.num_register_tokens :]
