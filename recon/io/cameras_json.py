"""``cameras.json``: the final cameras of a run and the prior's initial ones.

Layout (one entry per view, matrices as nested row-major lists)::

    {"cameras": [{"name": "0001.png", "width": 504, "height": 378,
                  "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
                  "w2c": 4x4 (OpenCV world-to-camera),
                  "initial_w2c": 4x4 or null,
                  "confidence": 0.5}, ...]}

``confidence`` (optional, in [0, 1]) is how well the prior's evidence supports the view's placement (the
classical prior: the share of its pairs' inliers that agree with it, halved when a single pair places
it; see ``recon/priors/classical/verify.py``); readers that do not know it ignore it.

float32 values are written with Python's shortest round-tripping repr, so loading gives back the exact
float32 numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from recon.cameras import Cameras
from recon.errors import ReconError
from recon.io.atomic import atomic_write_json


def save_cameras_json(path: str | Path, cameras: Cameras, initial: Cameras | None = None,
                      confidence: dict[str, float] | None = None) -> None:
    """Write ``cameras`` (and the matching ``initial`` w2c, same names and order) atomically, with each
    view's ``confidence`` (by name) where given.

    Raises:
        ValueError: ``initial`` has different names from ``cameras``.
    """
    if initial is not None and list(initial.names) != list(cameras.names):
        raise ValueError("initial cameras must have the same names, in the same order, as the cameras")
    K = cameras.K.detach().cpu().tolist()
    w2c = cameras.w2c.detach().cpu().tolist()
    init = initial.w2c.detach().cpu().tolist() if initial is not None else [None] * len(cameras)
    sizes = cameras.sizes.cpu().tolist()
    entries = [
        {"name": name, "width": int(sizes[i][0]), "height": int(sizes[i][1]), "K": K[i], "w2c": w2c[i],
         "initial_w2c": init[i]}
        for i, name in enumerate(cameras.names)
    ]
    for e in entries:
        if confidence and e["name"] in confidence:
            e["confidence"] = float(confidence[e["name"]])
    atomic_write_json(path, {"cameras": entries})


def load_camera_confidence(path: str | Path) -> dict[str, float]:
    """View name -> placement confidence, for the views of a ``cameras.json`` that carry one."""
    try:
        entries = json.loads(Path(path).read_text())["cameras"]
        return {str(e["name"]): float(e["confidence"]) for e in entries if e.get("confidence") is not None}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ReconError(f"{path} is not a cameras.json: {e}") from None


def load_cameras_json(path: str | Path) -> tuple[Cameras, Cameras | None]:
    """Read a ``cameras.json``: (cameras, initial cameras or None when no entry has ``initial_w2c``).

    The initial cameras share K, sizes and names with the cameras. Values come back as float32.

    Raises:
        ReconError: a missing or malformed file, or ``initial_w2c`` given for only some views.
    """
    path = Path(path)
    if not path.is_file():
        raise ReconError(f"cameras file {path} does not exist")
    try:
        entries = json.loads(path.read_text())["cameras"]
        names = [str(e["name"]) for e in entries]
        K = torch.tensor(np.array([e["K"] for e in entries], dtype=np.float32).reshape(-1, 3, 3))
        w2c = torch.tensor(np.array([e["w2c"] for e in entries], dtype=np.float32).reshape(-1, 4, 4))
        sizes = torch.tensor([[int(e["width"]), int(e["height"])] for e in entries], dtype=torch.int64)
        init_raw = [e.get("initial_w2c") for e in entries]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        need = "cameras[].name/width/height/K/w2c"
        raise ReconError(f"{path} is not a cameras.json (need {need}): {e}") from None
    if not entries:
        raise ReconError(f"{path} lists no cameras")
    cameras = Cameras(K, w2c, sizes.reshape(-1, 2), names)
    have = [x is not None for x in init_raw]
    if not any(have):
        return cameras, None
    if not all(have):
        raise ReconError(f"{path}: initial_w2c is given for only {sum(have)} of {len(have)} cameras")
    init_w2c = torch.tensor(np.array(init_raw, dtype=np.float32).reshape(-1, 4, 4))
    return cameras, cameras.with_w2c(init_w2c)
