"""2D rotary position embedding (RoPE) for patch tokens, as used by CroCo/DUSt3R/MASt3R ("RoPE100").

A token at grid position ``(y, x)`` has its per-head feature vector split in two halves: the first half
is rotated by angles proportional to ``y``, the second half by angles proportional to ``x``. Within one
half of size ``D`` the rotation follows the usual "rotate-half" 1D RoPE layout:

    inv_freq[k] = F0 / base ** (2k / D),          k = 0 .. D/2 - 1
    theta       = pos * cat(inv_freq, inv_freq)   (D angles)
    rope(t)     = t * cos(theta) + rotate_half(t) * sin(theta),   rotate_half(t) = cat(-t[D/2:], t[:D/2])

so channel ``k`` is paired with channel ``k + D/2``. ``base`` is the number after "RoPE" in the official
``pos_embed`` string (100 for every released DUSt3R/MASt3R checkpoint); VGGT uses the same layout with its
own ``base``. RoPE has no parameters, so it contributes no state_dict keys.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def grid_positions(batch: int, h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """Integer (y, x) positions of a row-major ``h x w`` token grid, (batch, h*w, 2) int64.

    Token ``t = y * w + x`` has position ``(y, x)``; indices start at 0.
    """
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    pos = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(1, h * w, 2)
    return pos.expand(batch, -1, -1).clone()


def _rotate_half(t: Tensor) -> Tensor:
    half = t.shape[-1] // 2
    return torch.cat((-t[..., half:], t[..., :half]), dim=-1)


class RoPE2D(nn.Module):
    """Apply 2D RoPE to per-head tokens.

    Args:
        base: frequency base (100 for "RoPE100").
        F0: global frequency scale (1.0 in every released model).
    """

    def __init__(self, base: float = 100.0, F0: float = 1.0):
        super().__init__()
        self.base = float(base)
        self.F0 = float(F0)

    def _rope1d(self, t: Tensor, pos: Tensor) -> Tensor:
        """1D RoPE on t (B, heads, N, D) with integer positions pos (B, N)."""
        D = t.shape[-1]
        # Frequencies and angles in float32 whatever the token dtype (as the reference tables are built),
        # then cast: half-precision angles would lose whole radians at large positions.
        inv_freq = self.F0 / (self.base ** (torch.arange(0, D, 2, device=t.device, dtype=torch.float32) / D))
        angles = pos.to(torch.float32)[..., None] * inv_freq  # (B, N, D/2)
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, N, D)
        cos, sin = angles.cos().to(t.dtype), angles.sin().to(t.dtype)
        return t * cos + _rotate_half(t) * sin

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Rotate tokens (B, heads, N, head_dim) by positions (B, N, 2) = (y, x); returns the same shape."""
        head_dim = tokens.shape[-1]
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
        ty, tx = tokens.chunk(2, dim=-1)
        return torch.cat((self._rope1d(ty, positions[..., 0]), self._rope1d(tx, positions[..., 1])), dim=-1)

    def extra_repr(self) -> str:
        return f"base={self.base}, F0={self.F0}"


def parse_rope_name(pos_embed: str) -> float:
    """The RoPE frequency base from an official ``pos_embed`` string such as ``"RoPE100"``."""
    if not pos_embed.startswith("RoPE"):
        raise ValueError(f"unsupported positional embedding {pos_embed!r}; only 'RoPE<base>' is implemented")
    return float(pos_embed[len("RoPE") :])
