"""VGGT's alternating-attention aggregator (keys ``aggregator.*``).

For B sequences of S frames (B, S, 3, H, W) in [0, 1]:

1. ImageNet normalisation ``(x - mean) / std``, then the DINOv2 patch embed per frame -> (B*S, P, C)
   patch tokens, P = (H/p) * (W/p).
2. Each frame gets [camera token, R register tokens, P patch tokens]. ``camera_token`` (1, 2, 1, C) and
   ``register_token`` (1, 2, R, C) hold two variants: index 0 for the first frame of every sequence (the
   reference frame that defines the world coordinates), index 1 for all the others.
3. 2D RoPE positions: a patch at grid (y, x) gets (y + 1, x + 1); the special tokens get (0, 0).
4. ``depth`` rounds of: ``aa_block_size`` *frame* blocks (attention within each frame, tokens
   (B*S, 1+R+P, C)), then ``aa_block_size`` *global* blocks (attention over all frames of a sequence,
   tokens (B, S*(1+R+P), C)). Blocks are pre-norm with qk-norm, RoPE and LayerScale, LayerNorm eps 1e-5.
5. Output per round (per frame/global block pair): the frame block's output concatenated on channels
   with the global block's output, (B, S, 1+R+P, 2C).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recon.priors.networks.layers import Block
from recon.priors.networks.rope import RoPE2D, grid_positions
from recon.priors.networks.vggt.config import VGGTConfig
from recon.priors.networks.vggt.patch_embed import DinoV2PatchEmbed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AGGREGATOR_NORM_EPS = 1e-5  # torch's LayerNorm default, as the official blocks use it
LAYERSCALE_INIT = 0.01


def _per_frame_tokens(token: Tensor, B: int, S: int) -> Tensor:
    """(1, 2, n, C) special tokens -> (B*S, n, C): variant 0 for frame 0, variant 1 for frames 1..S-1."""
    first = token[:, :1].expand(B, 1, *token.shape[2:])
    others = token[:, 1:].expand(B, S - 1, *token.shape[2:])
    return torch.cat((first, others), dim=1).reshape(B * S, *token.shape[2:])


class Aggregator(nn.Module):
    """Alternating frame/global attention over the patch tokens of all frames (see module docstring)."""

    def __init__(self, cfg: VGGTConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.embed_dim
        self.patch_embed = DinoV2PatchEmbed(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=C,
            depth=cfg.patch_embed_depth,
            num_heads=cfg.patch_embed_num_heads,
            mlp_ratio=cfg.patch_embed_mlp_ratio,
            num_register_tokens=cfg.num_register_tokens,
            interpolate_antialias=cfg.interpolate_antialias,
        )
        rope = RoPE2D(base=cfg.rope_freq)

        def block() -> Block:
            return Block(
                C,
                cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                norm_eps=AGGREGATOR_NORM_EPS,
                rope=rope,
                qk_norm=True,
                layerscale_init=LAYERSCALE_INIT,
            )

        self.frame_blocks = nn.ModuleList([block() for _ in range(cfg.depth)])
        self.global_blocks = nn.ModuleList([block() for _ in range(cfg.depth)])
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, C))
        self.register_token = nn.Parameter(torch.zeros(1, 2, cfg.num_register_tokens, C))

    @property
    def patch_start_idx(self) -> int:
        return self.cfg.patch_start_idx

    def forward(self, images: Tensor) -> list[Tensor]:
        """images (B, S, 3, H, W) in [0, 1], H and W multiples of the patch size.

        Returns ``depth`` tensors (B, S, 1+R+P, 2C): block i's frame output and global output, concatenated.
        """
        B, S, _, H, W = images.shape
        p = self.cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
        mean = images.new_tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
        x = ((images - mean) / std).reshape(B * S, 3, H, W)
        patches = self.patch_embed(x)  # (B*S, P, C)
        specials = torch.cat(
            (_per_frame_tokens(self.camera_token, B, S), _per_frame_tokens(self.register_token, B, S)), dim=1
        )
        tokens = torch.cat((specials.to(patches.dtype), patches), dim=1)  # (B*S, N, C)
        N, C = tokens.shape[1], tokens.shape[2]

        pos = grid_positions(B * S, H // p, W // p, device=images.device) + 1
        pos = torch.cat((pos.new_zeros(B * S, specials.shape[1], 2), pos), dim=1)  # (B*S, N, 2)
        frame_pos, global_pos = pos, pos.reshape(B, S * N, 2)

        outputs = []
        k = self.cfg.aa_block_size
        for r in range(self.cfg.num_aa_blocks):
            x = tokens.reshape(B * S, N, C)
            frame_out = []
            for blk in self.frame_blocks[r * k : (r + 1) * k]:
                x = blk(x, frame_pos)
                frame_out.append(x.reshape(B, S, N, C))
            x = x.reshape(B, S * N, C)
            global_out = []
            for blk in self.global_blocks[r * k : (r + 1) * k]:
                x = blk(x, global_pos)
                global_out.append(x.reshape(B, S, N, C))
            tokens = x
            outputs.extend(torch.cat((f, g), dim=-1) for f, g in zip(frame_out, global_out, strict=True))
        return outputs
