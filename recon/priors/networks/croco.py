"""CroCo-style two-view backbone of DUSt3R/MASt3R: a ViT encoder and a two-branch cross-attention decoder.

Submodules sit at the model root under the checkpoint names: ``patch_embed``, ``enc_blocks``,
``enc_norm``, ``decoder_embed``, ``dec_blocks`` (view-1 branch), ``dec_blocks2`` (view-2 branch),
``dec_norm`` and ``mask_token`` (a pre-training leftover kept only so checkpoints load strictly).

Encoder: patch embedding (no additive position embedding), ``enc_depth`` pre-norm blocks with 2D RoPE,
``enc_norm``. Decoder: a shared linear ``decoder_embed``; block k of each branch reads both branches'
outputs of block k-1 (self-attention on its own tokens, cross-attention to the other view's tokens).

Orientation ("landscape only"): the official ``ManyAR_PatchEmbed`` models were trained on batches stored
in landscape layout, where a portrait image (``true_shape`` H > W) is kept transposed in the tensor; the
patch embedding transposes it back and the head output is transposed again into the tensor's layout. With
``landscape_only=False`` (what the official ``load_model`` builds for inference, and our default) images
are simply given in their true orientation. For any landscape input the two are the same computation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recon.priors.networks.layers import Block, DecoderBlock, PatchEmbed
from recon.priors.networks.rope import RoPE2D


def is_portrait(true_shape: Tensor) -> Tensor:
    """(B,) bool: which rows of a (B, 2) ``[H, W]`` true_shape are portrait (H > W)."""
    return true_shape[:, 0] > true_shape[:, 1]


class CroCoStereoBackbone(nn.Module):
    """Encoder + two-branch decoder. Heads are added by subclasses (DUSt3R, MASt3R).

    Args:
        patch_size: ViT patch size (16).
        enc_embed_dim, enc_depth, enc_num_heads: encoder width, number of blocks, heads.
        dec_embed_dim, dec_depth, dec_num_heads: decoder width, number of blocks (per branch), heads.
        mlp_ratio: MLP hidden width / token width (4).
        rope_base: RoPE frequency base (100 for "RoPE100").
        norm_mem: LayerNorm the other view's tokens before cross-attention (official ``norm_im2_in_dec``).
        landscape_only: emulate the ManyAR_PatchEmbed input layout (see the module docstring).
    """

    def __init__(
        self,
        patch_size: int = 16,
        enc_embed_dim: int = 1024,
        enc_depth: int = 24,
        enc_num_heads: int = 16,
        dec_embed_dim: int = 768,
        dec_depth: int = 12,
        dec_num_heads: int = 12,
        mlp_ratio: float = 4.0,
        rope_base: float = 100.0,
        norm_mem: bool = True,
        landscape_only: bool = False,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.landscape_only = landscape_only
        self.rope = RoPE2D(base=rope_base)
        self.patch_embed = PatchEmbed(patch_size, 3, enc_embed_dim)
        self.enc_blocks = nn.ModuleList(
            [Block(enc_embed_dim, enc_num_heads, mlp_ratio, rope=self.rope) for _ in range(enc_depth)]
        )
        self.enc_norm = nn.LayerNorm(enc_embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(enc_embed_dim, dec_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_embed_dim))  # unused at inference

        def branch() -> nn.ModuleList:
            return nn.ModuleList(
                [
                    DecoderBlock(dec_embed_dim, dec_num_heads, mlp_ratio, rope=self.rope, norm_mem=norm_mem)
                    for _ in range(dec_depth)
                ]
            )

        self.dec_blocks = branch()
        self.dec_blocks2 = branch()
        self.dec_norm = nn.LayerNorm(dec_embed_dim, eps=1e-6)

    @property
    def enc_embed_dim(self) -> int:
        return self.enc_norm.normalized_shape[0]

    @property
    def dec_embed_dim(self) -> int:
        return self.dec_norm.normalized_shape[0]

    def true_shapes(self, img: Tensor, true_shape: Tensor | None) -> Tensor:
        """The (B, 2) int64 ``[H, W]`` of each image; without ``true_shape``, the tensor's own size."""
        B, _, H, W = img.shape
        if true_shape is None:
            return torch.tensor([[H, W]], device=img.device).expand(B, 2)
        true_shape = torch.as_tensor(true_shape, device=img.device).reshape(B, 2).long()
        if self.landscape_only:
            if W < H:
                raise ValueError("landscape_only models take landscape tensors (W >= H); transpose portraits")
            if not bool(((true_shape.amin(1) == H) & (true_shape.amax(1) == W)).all()):
                raise ValueError(f"true_shape {true_shape.tolist()} does not match the tensor size {H}x{W}")
        elif not bool((true_shape == torch.tensor([H, W], device=img.device)).all()):
            raise ValueError(f"true_shape {true_shape.tolist()} differs from the tensor size {H}x{W}")
        return true_shape

    def _patch_embed(self, img: Tensor, true_shape: Tensor) -> tuple[Tensor, Tensor]:
        if not self.landscape_only:
            return self.patch_embed(img)
        portrait = is_portrait(true_shape)
        if not bool(portrait.any()):
            return self.patch_embed(img)
        # Portrait samples are stored transposed: embed them in their true orientation (their token grid
        # is (W/p, H/p) in tensor terms), so both groups end up with the same number of tokens.
        B, _, H, W = img.shape
        p = self.patch_size
        tokens = img.new_empty(B, (H // p) * (W // p), self.enc_embed_dim)
        pos = img.new_empty(B, (H // p) * (W // p), 2, dtype=torch.long)
        for mask, im in ((~portrait, img), (portrait, img.transpose(-1, -2))):
            if bool(mask.any()):
                tokens[mask], pos[mask] = self.patch_embed(im[mask])
        return tokens, pos

    def encode(self, img: Tensor, true_shape: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode images (B, 3, H, W) in [-1, 1] -> tokens (B, N, enc_dim) after ``enc_norm``, pos (B, N, 2).

        The encoding of an image does not depend on its partner, so callers may cache it per image.
        """
        tokens, pos = self._patch_embed(img, self.true_shapes(img, true_shape))
        for blk in self.enc_blocks:
            tokens = blk(tokens, pos)
        return self.enc_norm(tokens), pos

    def decode(
        self, feat1: Tensor, pos1: Tensor, feat2: Tensor, pos2: Tensor
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Run both decoder branches on encoder tokens of view 1 and view 2.

        Returns per view the list ``[encoder tokens, block 1 out, ..., dec_norm(block L out)]`` (length
        dec_depth + 1): index 0 is the encoder output (enc_dim channels), the rest have dec_dim channels,
        and only the last entry is normalised. DPT hooks index this list.
        """
        out1, out2 = [feat1], [feat2]
        x1, x2 = self.decoder_embed(feat1), self.decoder_embed(feat2)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2, strict=True):
            x1, x2 = blk1(x1, x2, pos1, pos2), blk2(x2, x1, pos2, pos1)
            out1.append(x1)
            out2.append(x2)
        out1[-1] = self.dec_norm(out1[-1])
        out2[-1] = self.dec_norm(out2[-1])
        return out1, out2

    def apply_head(
        self, head: nn.Module, decout: list[Tensor], tensor_hw: tuple[int, int], true_shape: Tensor
    ) -> dict[str, Tensor]:
        """Call ``head(decout, (H, W)) -> {name: (B, H, W, ...)}`` per orientation group.

        Returns the outputs in the layout of the input tensor of size ``tensor_hw`` (portraits transposed
        back when ``landscape_only``; otherwise the head simply runs once at the tensor size).
        """
        H, W = tensor_hw
        if not self.landscape_only:
            return head(decout, (H, W))
        portrait = is_portrait(true_shape)
        if not bool(portrait.any()):
            return head(decout, (H, W))
        if bool(portrait.all()):
            return {k: v.transpose(1, 2) for k, v in head(decout, (W, H)).items()}
        land = head([d[~portrait] for d in decout], (H, W))
        port = {k: v.transpose(1, 2) for k, v in head([d[portrait] for d in decout], (W, H)).items()}
        out = {}
        for k, v in land.items():
            full = v.new_empty(len(true_shape), *v.shape[1:])
            full[~portrait], full[portrait] = v, port[k]
            out[k] = full
        return out


__all__ = ["CroCoStereoBackbone", "is_portrait"]
