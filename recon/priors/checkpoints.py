"""Loading learned-prior checkpoints (DUSt3R, MASt3R, VGGT) from local files, safely.

Accepted files:

- ``.pth`` / ``.pt`` / ``.bin``: a plain state dict, or the official training format
  ``{'model': state_dict, 'args': argparse.Namespace | str, ...}``. Loaded with
  ``torch.load(weights_only=True)``: only tensors, containers and primitives are unpickled, plus
  ``argparse.Namespace`` (the official ``args``); anything else (e.g. an object whose ``__reduce__``
  would run code) is refused with a :class:`ReconError`.
- ``.safetensors``: a flat state dict.
- a folder holding exactly one of the above (``model.safetensors`` / ``weights.safetensors`` preferred).

Model sizes: a ``config.json`` beside the weights wins (official constructor kwargs, flat as in the
Hugging Face repos or under ``constructor_kwargs`` as in our fixtures); otherwise the official
checkpoint's ``args.model`` constructor string is parsed (literals only, never evaluated); otherwise the
config is None and the networks use the official sizes, inferred from the weight shapes where possible.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from recon.errors import ReconError
from recon.priors.networks.loading import build_strict

ModelKind = Literal["dust3r", "mast3r", "vggt"]

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_PREFERRED_NAMES = ("model.safetensors", "weights.safetensors", "pytorch_model.bin")


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def _resolve_weights_file(path: Path) -> Path:
    if not path.exists():
        raise ReconError(f"checkpoint not found: {path} (give the path of a local .pth or .safetensors file)")
    if path.is_file():
        return path
    for name in _PREFERRED_NAMES:
        if (path / name).is_file():
            return path / name
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if len(found) != 1:
        what = "no weights file" if not found else f"{len(found)} weights files"
        raise ReconError(
            f"checkpoint folder {path} holds {what}; give the path of the .pth/.safetensors file"
        )
    return found[0]


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        if m is None:  # not a class/function reference: the bytes are simply not a valid pickle
            raise ReconError(
                f"cannot read {path} as a PyTorch checkpoint (corrupt or not a checkpoint)"
            ) from None
        culprit = f" ({m.group(1)})"
        raise ReconError(
            f"refusing to load {path}: it contains Python objects other than tensors{culprit}; "
            "only plain weight checkpoints are loaded (convert it to .safetensors from a trusted environment)"
        ) from None
    # Arbitrary bytes make the weights-only unpickler fail in many ways (seen: IndexError, KeyError)
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError,
            AssertionError) as e:
        raise ReconError(
            f"cannot read {path} as a PyTorch checkpoint ({type(e).__name__}); is it complete?"
        ) from None


def _safetensors_load(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ReconError(f"cannot read {path} as a .safetensors file ({e})") from None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _strip_prefix(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


# --------------------------------------------------------------------------------------------------
# Official "args" constructor strings
# --------------------------------------------------------------------------------------------------

_NAMES = {"inf": math.inf, "nan": math.nan, "True": True, "False": False, "None": None}


def _literal(node: ast.AST) -> Any:
    """Evaluate a literal expression: constants, tuples/lists/dicts, inf/nan names, unary +/- and
    ``float('inf')``. Nothing is executed."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.Tuple | ast.List):
        items = [_literal(e) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _literal(node.operand)
        return -v if isinstance(node.op, ast.USub) else +v
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("float", "int")
        and len(node.args) == 1
        and not node.keywords
    ):
        return {"float": float, "int": int}[node.func.id](_literal(node.args[0]))
    raise ValueError(f"not a literal: {ast.dump(node)[:80]}")


def parse_constructor_string(text: str) -> dict[str, Any]:
    """Parse an official model string such as ``"AsymmetricCroCo3DStereo(enc_depth=24, ...)"``.

    Returns ``{"official_class": name, "constructor_kwargs": {...}}``; keyword values must be literals
    (``inf`` allowed). Raises ValueError otherwise.
    """
    tree = ast.parse(text.strip(), mode="eval").body
    if not isinstance(tree, ast.Call) or not isinstance(tree.func, ast.Name):
        raise ValueError("not a constructor call")
    kwargs = {kw.arg: _literal(kw.value) for kw in tree.keywords if kw.arg is not None}
    return {"official_class": tree.func.id, "constructor_kwargs": kwargs}


def _config_from_args(args: Any, path: Path) -> dict | None:
    text = args if isinstance(args, str) else getattr(args, "model", None)
    if not isinstance(text, str):
        return None
    try:
        return parse_constructor_string(text)
    except (ValueError, SyntaxError):
        raise ReconError(
            f"{path}: cannot parse the model description in its 'args': {text[:120]!r}"
        ) from None


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def read_weights(path: str | Path) -> tuple[dict[str, Tensor], dict | None]:
    """Read a checkpoint: returns ``(state_dict, config)``.

    ``config`` is the parsed ``config.json`` beside the weights, else the official ``args`` model string
    as ``{"official_class", "constructor_kwargs"}``, else None (use the official sizes). Raises
    ReconError for a missing file, an unreadable or unsafe file, or a file that holds no state dict.
    """
    path = _resolve_weights_file(Path(path).expanduser())
    config: dict | None = None
    if path.suffix == ".safetensors":
        sd = _safetensors_load(path)
    else:
        obj = _torch_load(path)
        if isinstance(obj, Mapping) and _is_state_dict(obj.get("model")):
            sd = dict(obj["model"])
            config = _config_from_args(obj.get("args"), path)
        elif isinstance(obj, Mapping) and _is_state_dict(obj.get("state_dict")):
            sd = dict(obj["state_dict"])
        elif _is_state_dict(obj):
            sd = dict(obj)
        else:
            raise ReconError(f"{path} is not a model checkpoint (no state dict of tensors found)")
    if not sd:
        raise ReconError(f"{path} holds no tensors")
    sd = _strip_prefix(sd, "module.")
    cfg_file = path.with_name("config.json")
    if cfg_file.is_file():
        try:
            config = json.loads(cfg_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ReconError(f"cannot read {cfg_file}: {e}") from None
        if not isinstance(config, dict):
            raise ReconError(f"{cfg_file} must hold a JSON object of model settings")
    return sd, config


def detect_kind(state_dict: Mapping[str, Tensor]) -> str | None:
    """Which network a state dict belongs to, from its key names: 'dust3r', 'mast3r', 'vggt', 'croco'
    (a CroCo pre-training checkpoint without heads) or None."""
    keys = state_dict.keys()
    if any(k.startswith(("aggregator.", "camera_head.")) for k in keys):
        return "vggt"
    if "patch_embed.proj.weight" in state_dict and any(k.startswith("dec_blocks.") for k in keys):
        if any(k.startswith("downstream_head1.head_local_features.") for k in keys):
            return "mast3r"
        if any(k.startswith("downstream_head1.") for k in keys):
            return "dust3r"
        return "croco"
    return None


_KIND_NAMES = {
    "dust3r": "DUSt3R",
    "mast3r": "MASt3R",
    "vggt": "VGGT",
    "croco": "CroCo (pre-training, no heads)",
}


def check_kind(state_dict: Mapping[str, Tensor], kind: str, path: str | Path) -> None:
    """Raise ReconError unless ``state_dict`` is a ``kind`` checkpoint."""
    found = detect_kind(state_dict)
    if found == kind:
        return
    if found in ("dust3r", "mast3r", "vggt"):
        raise ReconError(
            f"{path} is a {_KIND_NAMES[found]} checkpoint, not {_KIND_NAMES[kind]}; use --prior {found}"
        )
    what = "a CroCo pre-training model without heads" if found == "croco" else "an unknown model"
    sample = ", ".join(list(state_dict)[:3])
    raise ReconError(f"{path} is not a {_KIND_NAMES[kind]} checkpoint: it looks like {what} (keys: {sample})")


def _network_config(config: Mapping | None, state_dict: Mapping[str, Tensor], base: Any, path: str | Path):
    from recon.priors.networks.dust3r_config import config_from_dict

    try:
        return config_from_dict(config, state_dict, base)
    except (ValueError, TypeError, KeyError) as e:
        raise ReconError(f"{path}: invalid model settings ({e})") from None


def build_dust3r(
    state_dict: Mapping[str, Tensor], config: Mapping | None = None, path: str | Path = "checkpoint"
) -> nn.Module:
    """A :class:`~recon.priors.networks.dust3r.DUSt3R` in eval mode with ``state_dict`` loaded strictly."""
    from recon.priors.networks.dust3r import DUSt3R

    check_kind(state_dict, "dust3r", path)
    return build_strict(DUSt3R, _network_config(config, state_dict, None, path), state_dict, path)


def build_mast3r(
    state_dict: Mapping[str, Tensor], config: Mapping | None = None, path: str | Path = "checkpoint"
) -> nn.Module:
    """A :class:`~recon.priors.networks.mast3r.MASt3R` in eval mode with ``state_dict`` loaded strictly."""
    from recon.priors.networks.dust3r_config import mast3r_default_config
    from recon.priors.networks.mast3r import MASt3R

    check_kind(state_dict, "mast3r", path)
    return build_strict(
        MASt3R, _network_config(config, state_dict, mast3r_default_config(), path), state_dict, path
    )


def _build_vggt(state_dict: Mapping[str, Tensor], config: Mapping | None, path: str | Path) -> nn.Module:
    try:
        from recon.priors.networks.vggt import build_vggt  # provided by the VGGT network module
    except ImportError:
        raise ReconError("the VGGT network is not available in this build; use --prior dust3r") from None
    check_kind(state_dict, "vggt", path)
    return build_vggt(state_dict, config, path)


_BUILDERS: dict[str, Callable[[Mapping[str, Tensor], Mapping | None, str | Path], nn.Module]] = {
    "dust3r": build_dust3r,
    "mast3r": build_mast3r,
    "vggt": _build_vggt,
}


def load_network(kind: ModelKind, path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Load a checkpoint file and return the ``kind`` network on ``device`` in eval mode.

    Raises ReconError (one line) for a missing/unreadable/unsafe file, a checkpoint of another model, or
    weights that do not fit the configured sizes.
    """
    if kind not in _BUILDERS:
        raise ReconError(f"unknown network {kind!r}; choose one of {', '.join(_BUILDERS)}")
    state_dict, config = read_weights(path)
    return _BUILDERS[kind](state_dict, config, str(path)).to(device)
