"""Loading a state dict into a network strictly, with one-line errors: shared by the networks' builders
(e.g. :func:`recon.priors.networks.vggt.build_vggt`) and :mod:`recon.priors.checkpoints`, which reads the
files. It lives below both so that neither imports the other's module late to dodge a cycle."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recon.errors import ReconError


def _complete_aliases(model: nn.Module, state_dict: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    groups: dict[int, list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(v), []).append(k)
    filled = None
    for keys in groups.values():
        present = [k for k in keys if k in state_dict]
        if present and len(present) < len(keys):
            filled = dict(state_dict) if filled is None else filled
            for k in keys:
                filled.setdefault(k, state_dict[present[0]])
    return state_dict if filled is None else filled


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, Tensor], path: str | Path, assign: bool = False
) -> None:
    """``model.load_state_dict(state_dict, strict=True, assign=assign)`` with a one-line ReconError on
    any mismatch (a few missing and unexpected keys and shape mismatches are named).

    Keys that name one shared tensor in ``model`` (e.g. DPT's ``scratch.layer1_rn`` and
    ``scratch.layer_rn.0``) may appear only once in the file: ``safetensors`` drops such duplicates when
    saving, so a present alias fills the absent one.
    """
    state_dict = _complete_aliases(model, state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{len(items)} {name}: {', '.join(items[:3])}{more}")
        raise ReconError(
            f"{path} does not fit the network ({'; '.join(parts)}); check the model sizes in config.json"
        )
    model.load_state_dict(state_dict, strict=True, assign=assign)


def build_strict(
    cls: type[nn.Module], cfg: Any, state_dict: Mapping[str, Tensor], path: str | Path
) -> nn.Module:
    """``cls(cfg)`` in eval mode (float32, CPU) holding ``state_dict``, loaded strictly (see
    :func:`load_state_dict_strict`)."""
    # Build on the meta device (no random init of the ~0.6-1.2B parameters), then adopt the checkpoint
    # tensors.
    with torch.device("meta"):
        model = cls(cfg)
    load_state_dict_strict(model, state_dict, path, assign=True)
    return model.float().eval()
