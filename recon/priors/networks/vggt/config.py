"""Sizes of a VGGT network, resolved from a config dict and/or the checkpoint's weight shapes.

Defaults are the released VGGT-1B: a DINOv2 ViT-L/14 patch embed with 4 register tokens, a 24 + 24 block
alternating-attention aggregator of width 1024 (16 heads), a camera head of width 2048 (trunk depth 4,
16 heads, 4 refinement iterations) and two DPT heads (256 features, levels [256, 512, 1024, 1024] hooked
on aggregator outputs [4, 11, 17, 23]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from torch import Tensor


@dataclass
class VGGTConfig:
    """Hyper-parameters of :class:`~recon.priors.networks.vggt.VGGT` (defaults: the released model)."""

    img_size: int = 518
    """Training resolution: the DINOv2 pos-embed covers an (img_size / patch_size)^2 grid."""
    patch_size: int = 14
    embed_dim: int = 1024
    """Token width of the patch embed and of the aggregator; the heads see 2 * embed_dim."""
    # DINOv2-with-registers patch embed
    patch_embed_depth: int = 24
    patch_embed_num_heads: int = 16
    patch_embed_mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    """Register tokens of the DINOv2 patch embed and of the aggregator (the official uses 4 for both)."""
    interpolate_antialias: bool = True
    # Aggregator
    depth: int = 24
    """Number of frame blocks (and of global blocks)."""
    num_heads: int = 16
    mlp_ratio: float = 4.0
    rope_freq: float = 100.0
    aa_block_size: int = 1
    """Consecutive frame (then global) blocks per alternation; outputs are kept per pair of blocks."""
    # Camera head
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_mlp_ratio: float = 4.0
    camera_num_iterations: int = 4
    # DPT heads
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_intermediate_layer_idx: tuple[int, int, int, int] = (4, 11, 17, 23)
    dpt_head_features_2: int = 32
    dpt_frames_chunk_size: int = 8
    """Frames per DPT pass (memory only; results do not depend on it). 0 or less: all frames at once."""
    # Which heads exist
    enable_camera: bool = True
    enable_depth: bool = True
    enable_point: bool = True
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """Constructor arguments that do not change inference (kept for reference)."""

    @property
    def patch_start_idx(self) -> int:
        """Index of the first patch token in an aggregator frame: [camera, registers..., patches...]."""
        return 1 + self.num_register_tokens

    @property
    def num_aa_blocks(self) -> int:
        return self.depth // self.aa_block_size

    def check(self) -> None:
        """Raise ValueError on inconsistent values."""
        for dim, heads, what in (
            (self.embed_dim, self.patch_embed_num_heads, "patch_embed_num_heads"),
            (self.embed_dim, self.num_heads, "num_heads"),
            (2 * self.embed_dim, self.camera_num_heads, "camera_num_heads"),
        ):
            if heads <= 0 or dim % heads:
                raise ValueError(f"{what}={heads} does not divide the width {dim}; set it in config.json")
        if (self.embed_dim // self.num_heads) % 4:
            raise ValueError("the aggregator head dim must be a multiple of 4 for 2D RoPE")
        if self.aa_block_size <= 0 or self.depth % self.aa_block_size:
            raise ValueError(f"depth {self.depth} is not a multiple of aa_block_size {self.aa_block_size}")
        if len(self.dpt_out_channels) != 4 or len(self.dpt_intermediate_layer_idx) != 4:
            raise ValueError("the DPT heads take exactly four levels")
        if max(self.dpt_intermediate_layer_idx) >= self.depth:
            raise ValueError(
                f"DPT layers {self.dpt_intermediate_layer_idx} do not fit {self.depth} aggregator "
                "outputs; set dpt_heads.intermediate_layer_idx in config.json"
            )
        if self.dpt_features % 4 or (self.dpt_features // 2) % 4 or any(c % 4 for c in self.dpt_out_channels):
            raise ValueError("DPT widths must be multiples of 4 (sin/cos uv embedding)")


def _count_blocks(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    idx = {int(k[len(prefix) :].split(".", 1)[0]) for k in state_dict if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def infer_config_from_weights(state_dict: Mapping[str, Tensor], base: VGGTConfig) -> VGGTConfig:
    """Fill every size that weight shapes determine into ``base``.

    Head counts cannot be read from shapes: when a width changes they become width // 64 (the head dim of
    every released DINOv2/VGGT model) if that divides, else 0, so that :meth:`VGGTConfig.check` asks for an
    explicit value rather than guessing. The DPT hook indices cannot be read either.
    """
    sd = state_dict
    upd: dict[str, Any] = {}
    pe = "aggregator.patch_embed."
    if f"{pe}patch_embed.proj.weight" in sd:
        w = sd[f"{pe}patch_embed.proj.weight"]
        upd["embed_dim"], upd["patch_size"] = int(w.shape[0]), int(w.shape[-1])
    if f"{pe}pos_embed" in sd:
        m = math.isqrt(int(sd[f"{pe}pos_embed"].shape[1]) - 1)
        upd["img_size"] = m * upd.get("patch_size", base.patch_size)
    if f"{pe}register_tokens" in sd:
        upd["num_register_tokens"] = int(sd[f"{pe}register_tokens"].shape[1])
    if n := _count_blocks(sd, f"{pe}blocks."):
        upd["patch_embed_depth"] = n
        w = sd[f"{pe}blocks.0.mlp.fc1.weight"]
        upd["patch_embed_mlp_ratio"] = w.shape[0] / w.shape[1]
    if n := _count_blocks(sd, "aggregator.frame_blocks."):
        upd["depth"] = n
        w = sd["aggregator.frame_blocks.0.mlp.fc1.weight"]
        upd["mlp_ratio"] = w.shape[0] / w.shape[1]
    upd["enable_camera"] = "camera_head.embed_pose.weight" in sd
    upd["enable_depth"] = "depth_head.norm.weight" in sd
    upd["enable_point"] = "point_head.norm.weight" in sd
    if n := _count_blocks(sd, "camera_head.trunk."):
        upd["camera_trunk_depth"] = n
        w = sd["camera_head.trunk.0.mlp.fc1.weight"]
        upd["camera_mlp_ratio"] = w.shape[0] / w.shape[1]
    head = "depth_head" if upd["enable_depth"] else "point_head"
    if f"{head}.scratch.layer1_rn.weight" in sd:
        upd["dpt_features"] = int(sd[f"{head}.scratch.layer1_rn.weight"].shape[0])
        upd["dpt_out_channels"] = tuple(int(sd[f"{head}.projects.{i}.weight"].shape[0]) for i in range(4))
        upd["dpt_head_features_2"] = int(sd[f"{head}.scratch.output_conv2.0.weight"].shape[0])
    if "embed_dim" in upd and upd["embed_dim"] != base.embed_dim:
        for key, dim in (
            ("patch_embed_num_heads", upd["embed_dim"]),
            ("num_heads", upd["embed_dim"]),
            ("camera_num_heads", 2 * upd["embed_dim"]),
        ):
            upd[key] = dim // 64 if dim % 64 == 0 else 0
    return replace(base, **upd)


# Our field names reachable from the sections of a fixture-style config.json: (section, key) -> field.
_SECTION_KEYS = {
    ("patch_embed_vit", "depth"): "patch_embed_depth",
    ("patch_embed_vit", "num_heads"): "patch_embed_num_heads",
    ("patch_embed_vit", "mlp_ratio"): "patch_embed_mlp_ratio",
    ("patch_embed_vit", "num_register_tokens"): "num_register_tokens",
    ("patch_embed_vit", "interpolate_antialias"): "interpolate_antialias",
    ("aggregator", "depth"): "depth",
    ("aggregator", "num_heads"): "num_heads",
    ("aggregator", "mlp_ratio"): "mlp_ratio",
    ("aggregator", "rope_freq"): "rope_freq",
    ("aggregator", "aa_block_size"): "aa_block_size",
    ("camera_head", "trunk_depth"): "camera_trunk_depth",
    ("camera_head", "num_heads"): "camera_num_heads",
    ("camera_head", "mlp_ratio"): "camera_mlp_ratio",
    ("camera_head", "num_iterations"): "camera_num_iterations",
    ("dpt_heads", "features"): "dpt_features",
    ("dpt_heads", "out_channels"): "dpt_out_channels",
    ("dpt_heads", "intermediate_layer_idx"): "dpt_intermediate_layer_idx",
    ("dpt_heads", "head_features_2"): "dpt_head_features_2",
    ("dpt_heads", "frames_chunk_size"): "dpt_frames_chunk_size",
}
# Official constructor kwargs that do not change inference.
_IGNORED_KWARGS = {"enable_track"}


def _coerce(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(VGGTConfig)}[name]
    if "tuple" in str(kind):
        return tuple(int(v) for v in value)
    if kind in ("int", int):
        return int(value)
    if kind in ("float", float):
        return float(value)
    if kind in ("bool", bool):
        return bool(value)
    return value


def vggt_config_from_dict(
    config: Mapping[str, Any] | None,
    state_dict: Mapping[str, Tensor] | None = None,
    base: VGGTConfig | None = None,
) -> VGGTConfig:
    """Resolve a :class:`VGGTConfig`: explicit ``config`` values, then weight shapes, then ``base``.

    ``config`` may be the official constructor kwargs (``img_size``, ``patch_size``, ``embed_dim``,
    ``enable_*``; flat, as in the Hugging Face repos), a fixture-style ``config.json``
    (``constructor_kwargs`` plus ``patch_embed_vit`` / ``aggregator`` / ``camera_head`` / ``dpt_heads``
    sections), or our own field names. Raises ValueError on unknown or inconsistent values.
    """
    cfg = base or VGGTConfig()
    if state_dict is not None:
        cfg = infer_config_from_weights(state_dict, cfg)
    if not config:
        cfg.check()
        return cfg
    names = {f.name for f in fields(VGGTConfig)} - {"extra"}
    upd: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    kwargs = config.get("constructor_kwargs")
    flat = dict(kwargs) if isinstance(kwargs, Mapping) else dict(config)
    for k, v in flat.items():
        if k in names:
            upd[k] = _coerce(k, v)
        elif isinstance(v, int | float | bool | str | list | tuple) or v is None:
            extra[k] = v
    for (section, key), name in _SECTION_KEYS.items():
        sec = config.get(section)
        if isinstance(sec, Mapping) and key in sec:
            upd[name] = _coerce(name, sec[key])
    if isinstance(kwargs, Mapping):  # fixture style: only constructor kwargs and sections are settings
        extra = {k: v for k, v in kwargs.items() if k not in names}
    cfg = replace(
        cfg, **upd, extra={**cfg.extra, **{k: v for k, v in extra.items() if k not in _IGNORED_KWARGS}}
    )
    cfg.check()
    return cfg
