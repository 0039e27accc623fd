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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from recon.priors.networks.croco import CroCoStereoBackbone
from recon.priors.networks.dpt import DPTHead
from recon.priors.networks.layers import unpatchify
from recon.priors.networks.rope import parse_rope_name

INF = float("inf")
Mode = tuple[str, float, float]
HeadType = Literal["linear", "dpt", "catmlp+dpt"]


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class Dust3RConfig:
    """Sizes and output modes of a DUSt3R/MASt3R network. Defaults: the released
    ``DUSt3R_ViTLarge_BaseDecoder_512_dpt`` (ViT-L encoder, ViT-B decoder, DPT head).

    ``dpt_hooks`` None means the official formula ``[0, L*2//4, L*3//4, L]`` (L = dec_depth) over the
    decoder output list (index 0 = encoder output). ``local_feat_dim`` > 0 adds MASt3R's descriptor MLP.
    """

    patch_size: int = 16
    img_size: tuple[int, int] = (512, 512)
    """Training resolution; informational only (RoPE works at any multiple of the patch size)."""
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    rope_base: float = 100.0
    norm_mem: bool = True
    landscape_only: bool = False
    """Emulate ManyAR_PatchEmbed's transposed-portrait input layout (see ``croco.py``); False = images in
    their true orientation, as the official ``load_model`` builds the released models for inference."""
    head_type: HeadType = "dpt"
    depth_mode: Mode = ("exp", -INF, INF)
    conf_mode: Mode | None = ("exp", 1.0, INF)
    dpt_layer_dims: tuple[int, ...] = (96, 192, 384, 768)
    dpt_feature_dim: int = 256
    dpt_last_dim: int = 128
    dpt_hooks: tuple[int, ...] | None = None
    # MASt3R only (head_type "catmlp+dpt")
    local_feat_dim: int = 0
    two_confs: bool = False
    desc_mode: str = "norm"
    desc_conf_mode: Mode | None = None
    """None: the descriptor confidence uses ``conf_mode`` (the official fallback)."""
    mlp_hidden_factor: float = 4.0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """Official constructor arguments that do not change the computation (kept for reference)."""

    @property
    def has_conf(self) -> bool:
        return self.conf_mode is not None

    @property
    def hooks(self) -> tuple[int, ...]:
        L = self.dec_depth
        return tuple(self.dpt_hooks) if self.dpt_hooks is not None else (0, L * 2 // 4, L * 3 // 4, L)

    def check(self) -> None:
        """Raise ValueError on inconsistent values."""
        for dim, heads, what in (
            (self.enc_embed_dim, self.enc_num_heads, "encoder"),
            (self.dec_embed_dim, self.dec_num_heads, "decoder"),
        ):
            if heads <= 0:
                raise ValueError(
                    f"the number of {what} heads cannot be read from the weights (width {dim}); "
                    f"set {what[:3]}_num_heads in config.json"
                )
            if dim % heads or (dim // heads) % 4:
                raise ValueError(f"{what} width {dim} with {heads} heads: head dim must be a multiple of 4")
        if self.head_type not in ("linear", "dpt", "catmlp+dpt"):
            raise ValueError(f"unknown head_type {self.head_type!r}")
        if self.head_type == "catmlp+dpt" and self.local_feat_dim <= 0:
            raise ValueError("head_type 'catmlp+dpt' needs local_feat_dim > 0 (output_mode 'pts3d+descNN')")
        if self.head_type != "linear" and (len(self.hooks) != 4 or max(self.hooks) > self.dec_depth):
            raise ValueError(f"DPT hooks {self.hooks} do not fit a decoder of depth {self.dec_depth}")


def mast3r_default_config() -> Dust3RConfig:
    """The released ``MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric`` sizes and modes."""
    return Dust3RConfig(
        head_type="catmlp+dpt",
        local_feat_dim=24,
        two_confs=True,
        desc_conf_mode=("exp", 0.0, INF),
    )


def _as_float(v: Any) -> float:
    if isinstance(v, str):
        v = v.strip().lower()
        if v in ("inf", "+inf", "infinity"):
            return INF
        if v in ("-inf", "-infinity"):
            return -INF
    return float(v)


def _as_mode(v: Any) -> Mode | None:
    if v is None:
        return None
    if isinstance(v, str):  # official also accepts a bare mode name for conf/depth
        return (v, -INF, INF)
    mode, vmin, vmax = v
    return (str(mode), _as_float(vmin), _as_float(vmax))


def _count_blocks(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    idx = {int(k[len(prefix) :].split(".", 1)[0]) for k in state_dict if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def infer_config_from_weights(state_dict: Mapping[str, Tensor], base: Dust3RConfig) -> Dust3RConfig:
    """Fill every size that the weight shapes determine (widths, depths, head type and widths) into
    ``base``; head counts cannot be read from shapes and are set to width // 64 (the official head dim)
    unless that does not divide."""
    sd = state_dict
    upd: dict[str, Any] = {}
    if "patch_embed.proj.weight" in sd:
        w = sd["patch_embed.proj.weight"]
        upd["enc_embed_dim"], upd["patch_size"] = int(w.shape[0]), int(w.shape[-1])
    if "decoder_embed.weight" in sd:
        upd["dec_embed_dim"] = int(sd["decoder_embed.weight"].shape[0])
    if n := _count_blocks(sd, "enc_blocks."):
        upd["enc_depth"] = n
    if n := _count_blocks(sd, "dec_blocks."):
        upd["dec_depth"] = n
    if "enc_blocks.0.mlp.fc1.weight" in sd:
        w = sd["enc_blocks.0.mlp.fc1.weight"]
        upd["mlp_ratio"] = w.shape[0] / w.shape[1]
    for dim_key, heads_key in (("enc_embed_dim", "enc_num_heads"), ("dec_embed_dim", "dec_num_heads")):
        if dim_key in upd:
            # 0 = unknown: check() then asks for an explicit value instead of guessing silently.
            upd[heads_key] = upd[dim_key] // 64 if upd[dim_key] % 64 == 0 else 0
    p = upd.get("patch_size", base.patch_size)
    if "downstream_head1.proj.weight" in sd:
        upd["head_type"] = "linear"
        nchan = sd["downstream_head1.proj.weight"].shape[0] // (p * p)
        if nchan == 3:
            upd["conf_mode"] = None
    elif "downstream_head1.dpt.head.4.weight" in sd:
        upd["head_type"] = "catmlp+dpt" if "downstream_head1.head_local_features.fc1.weight" in sd else "dpt"
        if sd["downstream_head1.dpt.head.4.weight"].shape[0] == 3:
            upd["conf_mode"] = None
        upd["dpt_layer_dims"] = tuple(
            int(sd[f"downstream_head1.dpt.act_postprocess.{i}.0.weight"].shape[0]) for i in range(4)
        )
        upd["dpt_feature_dim"] = int(sd["downstream_head1.dpt.scratch.layer1_rn.weight"].shape[0])
        upd["dpt_last_dim"] = int(sd["downstream_head1.dpt.head.2.weight"].shape[0])
    if "downstream_head1.head_local_features.fc1.weight" in sd:
        fc1 = sd["downstream_head1.head_local_features.fc1.weight"]
        fc2 = sd["downstream_head1.head_local_features.fc2.weight"]
        upd["mlp_hidden_factor"] = fc1.shape[0] / fc1.shape[1]
        per_pixel = fc2.shape[0] // (p * p)
        two = base.two_confs if base.local_feat_dim else True
        upd["two_confs"] = two
        upd["local_feat_dim"] = per_pixel - int(two)
    return replace(base, **upd)


# official constructor kwargs that only matter for training or for other parts of the official code
_IGNORED_KWARGS = {"patch_embed_cls", "freeze", "output_mode", "pos_embed", "img_size"}


def config_from_dict(
    config: Mapping[str, Any] | None,
    state_dict: Mapping[str, Tensor] | None = None,
    base: Dust3RConfig | None = None,
) -> Dust3RConfig:
    """Resolve a :class:`Dust3RConfig`: explicit ``config`` values, then weight shapes, then ``base``.

    ``config`` may be the official constructor kwargs (``enc_embed_dim``, ``head_type``,
    ``output_mode='pts3d+desc24'``, ``pos_embed='RoPE100'``, ``depth_mode=('exp', -inf, inf)`` ...), a
    fixture-style ``config.json`` (``constructor_kwargs`` plus ``dpt`` / ``local_feat_mlp`` sections), or
    our own field names (``dpt_feature_dim`` ...). 'inf' strings are accepted for infinities.
    """
    cfg = base or Dust3RConfig()
    if state_dict is not None:
        cfg = infer_config_from_weights(state_dict, cfg)
    if not config:
        cfg.check()
        return cfg
    kw = dict(config.get("constructor_kwargs", config))
    names = {f.name for f in fields(Dust3RConfig)} - {"extra"}
    upd: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for k, v in kw.items():
        if k in ("depth_mode", "conf_mode", "desc_conf_mode"):
            upd[k] = _as_mode(v)
        elif k == "pos_embed":
            upd["rope_base"] = parse_rope_name(str(v))
        elif k == "img_size":
            upd["img_size"] = (v, v) if isinstance(v, int) else tuple(int(x) for x in v)
        elif k == "output_mode":
            mode = str(v)
            if mode.startswith("pts3d+desc"):
                upd["local_feat_dim"] = int(mode[len("pts3d+desc") :])
            elif mode != "pts3d":
                raise ValueError(f"unsupported output_mode {mode!r}")
        elif k == "norm_im2_in_dec":
            upd["norm_mem"] = bool(v)
        elif k == "hidden_dim_factor":
            upd["mlp_hidden_factor"] = float(v)
        elif k in ("dpt_layer_dims", "dpt_hooks"):
            upd[k] = tuple(int(x) for x in v)
        elif k in names:
            upd[k] = v
        else:
            extra[k] = v
    if "landscape_only" not in kw:
        # Without an explicit value the official inference loader builds landscape_only=False.
        upd["landscape_only"] = False
    dpt = config.get("dpt") or {}
    for src, dst in (("layer_dims", "dpt_layer_dims"), ("hooks", "dpt_hooks")):
        if src in dpt:
            upd[dst] = tuple(int(x) for x in dpt[src])
    for src, dst in (("feature_dim", "dpt_feature_dim"), ("last_dim", "dpt_last_dim")):
        if src in dpt:
            upd[dst] = int(dpt[src])
    lf = config.get("local_feat_mlp") or {}
    if "hidden_dim_factor" in lf:
        upd["mlp_hidden_factor"] = float(lf["hidden_dim_factor"])
    for k in ("enc_depth", "dec_depth", "enc_embed_dim", "dec_embed_dim", "enc_num_heads", "dec_num_heads"):
        if k in upd:
            upd[k] = int(upd[k])
    cfg = replace(
        cfg, **upd, extra={**cfg.extra, **{k: v for k, v in extra.items() if k not in _IGNORED_KWARGS}}
    )
    cfg.check()
    return cfg


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


# --------------------------------------------------------------------------------------------------
# Input preparation and the way back to the original pixels
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkCrop:
    """How an image was turned into a network input: an aspect-preserving resize, then a crop.

    Coordinates follow CONVENTIONS (pixel-corner origin, pixel (i, j) centred at (j + 0.5, i + 0.5)), so
    a point ``u`` of the original image lands at ``u * scale - crop_offset`` in the network image:

        u_net = sx * u_img - x0,   v_net = sy * v_img - y0
        K_net = [[sx fx, 0, sx cx - x0], [0, sy fy, sy cy - y0], [0, 0, 1]]

    ``sx``, ``sy`` are the per-axis resize factors (equal up to the rounding of the resized size). The
    network image covers the original region ``[x0/sx, (x0 + w)/sx) x [y0/sy, (y0 + h)/sy)``; the part of
    the image outside it (at most a few pixels per side, plus a 4:3 crop of square images) has no
    prediction (see :meth:`to_image`).
    """

    image_size: tuple[int, int]
    """(W, H) of the original image."""
    resized_size: tuple[int, int]
    """(W, H) after the resize."""
    offset: tuple[int, int]
    """(x0, y0): top-left corner of the crop in resized pixels."""
    size: tuple[int, int]
    """(w, h) of the network input."""

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy) = resized / original size."""
        return (self.resized_size[0] / self.image_size[0], self.resized_size[1] / self.image_size[1])

    def image_to_network(self, uv: Tensor) -> Tensor:
        """Original-image pixel coordinates (..., 2) -> network-image coordinates."""
        s = uv.new_tensor(self.scale)
        return uv * s - uv.new_tensor(self.offset)

    def network_to_image(self, uv: Tensor) -> Tensor:
        """Network-image pixel coordinates (..., 2) -> original-image coordinates."""
        return (uv + uv.new_tensor(self.offset)) / uv.new_tensor(self.scale)

    def K_to_network(self, K: Tensor) -> Tensor:
        """Intrinsics (..., 3, 3) of the original image -> of the network input."""
        (sx, sy), (x0, y0) = self.scale, self.offset
        A = K.new_tensor([[sx, 0.0, -x0], [0.0, sy, -y0], [0.0, 0.0, 1.0]])
        return A @ K

    def K_to_image(self, K: Tensor) -> Tensor:
        """Intrinsics (..., 3, 3) estimated on the network input -> of the original image."""
        (sx, sy), (x0, y0) = self.scale, self.offset
        A = K.new_tensor([[1.0 / sx, 0.0, x0 / sx], [0.0, 1.0 / sy, y0 / sy], [0.0, 0.0, 1.0]])
        return A @ K

    def to_image(self, values: Tensor, mode: str = "bilinear") -> tuple[Tensor, Tensor]:
        """Resample a per-pixel network output (h, w) or (h, w, C) onto the original (H, W) pixel grid.

        Each original pixel centre is mapped into the network image and sampled there (``mode``
        'bilinear' or 'nearest'; edge pixels clamp). Returns ``(values (H, W[, C]), valid (H, W) bool)``
        where ``valid`` is False for pixels outside the cropped region.
        """
        squeeze = values.dim() == 2
        v = values[..., None] if squeeze else values
        w, h = self.size
        if v.shape[:2] != (h, w):
            raise ValueError(f"expected a ({h}, {w}, ...) map, got {tuple(values.shape)}")
        W, H = self.image_size
        dev = v.device
        ys, xs = torch.meshgrid(
            torch.arange(H, device=dev, dtype=torch.float32) + 0.5,
            torch.arange(W, device=dev, dtype=torch.float32) + 0.5,
            indexing="ij",
        )
        uv = self.image_to_network(torch.stack((xs, ys), dim=-1))
        valid = (uv[..., 0] >= 0) & (uv[..., 0] <= w) & (uv[..., 1] >= 0) & (uv[..., 1] <= h)
        grid = torch.stack((uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1), dim=-1)[None]
        src = v.permute(2, 0, 1)[None].to(torch.float32)
        out = F.grid_sample(src, grid, mode=mode, padding_mode="border", align_corners=False)[0]
        out = out.permute(1, 2, 0).to(values.dtype)
        return (out[..., 0] if squeeze else out), valid


def _to_uint8(image: np.ndarray | Tensor) -> np.ndarray:
    a = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    return a


def prepare_image(
    image: np.ndarray | Tensor, size: int = 512, patch_size: int = 16, square_ok: bool = False
) -> tuple[Tensor, NetworkCrop]:
    """Resize and crop one RGB image the way the released DUSt3R/MASt3R models were trained.

    ``image`` is (H, W, 3), float in [0, 1] or uint8. For ``size`` 512 (or any size other than 224): the
    long side is resized to ``size`` (Lanczos when shrinking, bicubic when enlarging, on 8-bit values),
    then the centred crop with both sides multiples of ``patch_size`` is taken; a square image is cropped
    to 4:3 unless ``square_ok``. For ``size`` 224 (the 224 linear model): the short side becomes 224 and
    the centred square is kept. Returns the (3, h, w) float32 tensor in [-1, 1] and its
    :class:`NetworkCrop`.
    """
    a = _to_uint8(image)
    H0, W0 = a.shape[:2]
    pil = Image.fromarray(a)
    target = round(size * max(W0 / H0, H0 / W0)) if size == 224 else size
    S = max(W0, H0)
    interp = Image.Resampling.LANCZOS if S > target else Image.Resampling.BICUBIC
    W1, H1 = (int(round(W0 * target / S)), int(round(H0 * target / S)))
    pil = pil.resize((W1, H1), interp)
    cx, cy = W1 // 2, H1 // 2
    if size == 224:
        halfw = halfh = min(cx, cy)
    else:
        half_p = patch_size // 2
        halfw, halfh = ((2 * cx) // patch_size) * half_p, ((2 * cy) // patch_size) * half_p
        if not square_ok and W1 == H1:
            halfh = (3 * halfw // 4) // half_p * half_p
    box = (cx - halfw, cy - halfh, cx + halfw, cy + halfh)
    crop = np.asarray(pil.crop(box), dtype=np.float32) / 255.0
    if crop.shape[0] % patch_size or crop.shape[1] % patch_size or min(crop.shape[:2]) == 0:
        raise ValueError(f"image {W0}x{H0} is too small for the network input at size {size}")
    tensor = torch.from_numpy((crop - 0.5) / 0.5).permute(2, 0, 1).contiguous()
    info = NetworkCrop((W0, H0), (W1, H1), (box[0], box[1]), (2 * halfw, 2 * halfh))
    return tensor, info
