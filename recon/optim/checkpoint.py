"""Trainer checkpoints: one ``train_state.pt`` per run folder, written atomically, loaded safely.

The file holds only tensors and plain Python values (dicts, lists, numbers, strings), so it loads with
``torch.load(..., weights_only=True)``: a checkpoint can never execute code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from recon.errors import ReconError
from recon.io.atomic import atomic_path

CHECKPOINT_NAME = "train_state.pt"
CHECKPOINT_VERSION = 1


def checkpoint_path(ckpt_dir: str | Path) -> Path:
    return Path(ckpt_dir) / CHECKPOINT_NAME


def save_checkpoint(ckpt_dir: str | Path, state: dict) -> Path:
    """Write ``state`` (tensors and plain values) to ``ckpt_dir/train_state.pt`` atomically."""
    path = checkpoint_path(ckpt_dir)
    payload = {"version": CHECKPOINT_VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(ckpt_dir: str | Path, map_location=None) -> dict | None:
    """The state saved in ``ckpt_dir``, or None when there is none. Unreadable files raise ReconError."""
    path = checkpoint_path(ckpt_dir)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        reason = type(e).__name__
        raise ReconError(f"cannot read checkpoint {path} ({reason}); delete it to start over") from e
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ReconError(f"checkpoint {path} is from an incompatible version; delete it to start over")
    return state


def checkpoint_step(ckpt_dir: str | Path) -> int | None:
    """The step of the checkpoint in ``ckpt_dir``, or None when there is none or it cannot be read."""
    try:
        state = load_checkpoint(ckpt_dir, map_location="cpu")
    except ReconError:
        return None
    return None if state is None else int(state["step"])
