"""Cache a :class:`PriorResult` on disk so that a resumed run does not recompute the geometry prior."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from recon.cameras import Cameras
from recon.io.atomic import atomic_path
from recon.priors.base import PriorResult


def save_prior(path: Path, prior: PriorResult) -> None:
    """Write tensors to ``path`` (safetensors); names, failures and info go in its metadata."""
    tensors = {
        "K": prior.cameras.K,
        "w2c": prior.cameras.w2c,
        "sizes": prior.cameras.sizes,
        "pointmaps": prior.pointmaps,
        "conf": prior.conf,
        "colors": prior.colors,
    }
    if prior.depth is not None:
        tensors["depth"] = prior.depth
    meta = {
        "names": json.dumps(prior.cameras.names),
        "failed": json.dumps(prior.failed),
        "info": json.dumps(prior.info, default=str),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def load_prior(path: Path) -> PriorResult:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    cams = Cameras(t["K"], t["w2c"], t["sizes"], json.loads(meta["names"]))
    return PriorResult(
        cameras=cams,
        pointmaps=t["pointmaps"],
        conf=t["conf"],
        colors=t["colors"],
        depth=t.get("depth"),
        failed=json.loads(meta["failed"]),
        info=json.loads(meta["info"]),
    )

