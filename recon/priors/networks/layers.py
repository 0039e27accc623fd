"""Generic vision-transformer building blocks shared by the learned priors (DUSt3R, MASt3R, VGGT).

Attribute names are chosen so that the modules' ``state_dict`` keys are the ones used by the public
checkpoints (``qkv``, ``proj``, ``fc1``/``fc2``, ``norm1``/``norm2``, ``projq``/``projk``/``projv``,
``ls1.gamma`` ...); nothing here is specific to one model.

Tensor layout: tokens are (B, N, C); per-head tensors are (B, heads, N, head_dim); 2D token positions
are int64 (B, N, 2) as (y, x) (see :mod:`recon.priors.networks.rope`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.priors.networks.rope import RoPE2D, grid_positions


class Mlp(nn.Module):
    """Two-layer perceptron ``fc2(act(fc1(x)))`` with exact (erf) GELU by default."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        bias: bool = True,
        act_layer: type[nn.Module] = nn.GELU,
    ):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scale ``x * gamma`` (key ``gamma``)."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, C) -> (B, heads, N, C // heads)."""
    B, N, C = x.shape
    return x.reshape(B, N, num_heads, C // num_heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, H * d)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection, optional q/k LayerNorm and 2D RoPE.

    ``qkv`` output channels are laid out as (3, heads, head_dim): q, then k, then v. When ``qk_norm`` is
    set, ``q_norm``/``k_norm`` (LayerNorm over head_dim) are applied before RoPE, as in VGGT.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        rope: RoPE2D | None = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.q_norm = nn.LayerNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.rope = rope

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        """x (B, N, dim), pos (B, N, 2) (required when RoPE is set) -> (B, N, dim)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Multi-head attention of queries from one token set to keys/values of another (separate q/k/v
    projections ``projq``, ``projk``, ``projv``), with 2D RoPE on q (query positions) and k (memory
    positions)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, rope: RoPE2D | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim, bias=qkv_bias)
        self.projk = nn.Linear(dim, dim, bias=qkv_bias)
        self.projv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        qpos: Tensor | None = None,
        kpos: Tensor | None = None,
    ) -> Tensor:
        """query (B, Nq, dim), key/value (B, Nk, dim), qpos (B, Nq, 2), kpos (B, Nk, 2) -> (B, Nq, dim)."""
        q = _split_heads(self.projq(query), self.num_heads)
        k = _split_heads(self.projk(key), self.num_heads)
        v = _split_heads(self.projv(value), self.num_heads)
        if self.rope is not None:
            q, k = self.rope(q, qpos), self.rope(k, kpos)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x)))``.

    LayerScale (``ls1``/``ls2``) exists only when ``layerscale_init`` is given (VGGT/DINOv2); CroCo's
    encoder blocks have none.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        norm_eps: float = 1e-6,
        rope: RoPE2D | None = None,
        qk_norm: bool = False,
        layerscale_init: float | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            rope=rope,
            qk_norm=qk_norm,
            norm_eps=norm_eps,
        )
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DecoderBlock(nn.Module):
    """CroCo decoder block: self-attention, cross-attention to the other view's tokens, MLP.

        x = x + attn(norm1(x), xpos)
        m = norm_y(y) if norm_mem else y
        x = x + cross_attn(norm2(x), m, m, xpos, ypos)
        x = x + mlp(norm3(x))

    ``norm_y`` always exists (it is in the checkpoints); ``norm_mem`` (official ``norm_im2_in_dec``,
    True for DUSt3R/MASt3R) says whether it is used.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        rope: RoPE2D | None = None,
        norm_mem: bool = True,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, rope=rope)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias=qkv_bias, rope=rope)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=norm_eps)
        self.norm_mem = norm_mem

    def forward(self, x: Tensor, y: Tensor, xpos: Tensor | None, ypos: Tensor | None) -> Tensor:
        """x (B, N, dim) this view's tokens, y (B, M, dim) the other view's tokens -> updated x."""
        x = x + self.attn(self.norm1(x), xpos)
        mem = self.norm_y(y) if self.norm_mem else y
        x = x + self.cross_attn(self.norm2(x), mem, mem, xpos, ypos)
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: ``Conv2d(in, dim, p, stride=p)`` then row-major flattening.

    ``norm`` is an Identity kept for the layout of the public models (it has no keys).
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, img: Tensor) -> tuple[Tensor, Tensor]:
        """img (B, C, H, W) with H, W multiples of the patch size -> tokens (B, N, dim), pos (B, N, 2).

        Token ``t = y * (W/p) + x`` covers pixels ``[p*y, p*y+p) x [p*x, p*x+p)``; ``pos[t] = (y, x)``.
        """
        B, _, H, W = img.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
        tokens = self.norm(self.proj(img).flatten(2).transpose(1, 2))
        return tokens, grid_positions(B, H // p, W // p, device=img.device)


def unpatchify(tokens: Tensor, image_size: tuple[int, int], patch_size: int) -> Tensor:
    """Per-token pixel blocks to an image: (B, N, C*p*p) on the (H/p, W/p) grid -> (B, C, H, W).

    Token ``t = ty * (W/p) + tx``, channel ``c*p*p + i*p + j`` becomes channel ``c`` of pixel
    ``(p*ty + i, p*tx + j)`` (``pixel_shuffle`` order).
    """
    H, W = image_size
    B, N, D = tokens.shape
    h, w = H // patch_size, W // patch_size
    if N != h * w:
        raise ValueError(f"{N} tokens do not fill a {h}x{w} grid for a {H}x{W} image")
    return F.pixel_shuffle(tokens.transpose(1, 2).reshape(B, D, h, w), patch_size)
