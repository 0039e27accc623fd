"""DUSt3R/MASt3R network configuration: sizes and output modes, resolved from config files and weights.

:class:`Dust3RConfig` holds a network's sizes and output modes (defaults: the released
``DUSt3R_ViTLarge_BaseDecoder_512_dpt``); :func:`config_from_dict` resolves one from official constructor
kwargs, fixture-style ``config.json`` files or weight shapes (:func:`infer_config_from_weights`). The
networks themselves are in :mod:`recon.priors.networks.dust3r` and :mod:`recon.priors.networks.mast3r`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from torch import Tensor

from recon.priors.networks.rope import parse_rope_name

INF = float("inf")
Mode = tuple[str, float, float]
HeadType = Literal["linear", "dpt", "catmlp+dpt"]


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
