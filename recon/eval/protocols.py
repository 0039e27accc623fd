"""Train/test splits of the standard sparse-view protocols.

- LLFF: every 8th image (index 0, 8, 16, ...) is a test view; N training views are spaced evenly over
  the rest.
- DTU (the RegNeRF/PixelNeRF split used by sparse-view papers): training ids 25, 22, 28, 40, 44, 48, 0, 8,
  13 (the first N), fixed test ids.
- Otherwise: N training views spaced evenly over the sorted images, the others are test views.
- A JSON file ``{"train": [names], "test": [names]}`` overrides all of these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.errors import ReconError

DTU_TRAIN_IDS = [25, 22, 28, 40, 44, 48, 0, 8, 13]
DTU_TEST_IDS = [
    1, 2, 9, 10, 11, 12, 14, 15, 23, 24, 26, 27, 29, 30, 31, 32, 33, 34, 35, 41, 42, 43, 45, 46, 47
]
LLFF_HOLD = 8


@dataclass
class Split:
    train: list[str]
    test: list[str]
    protocol: str


def evenly_spaced(items: list, n: int) -> list:
    """``n`` items spaced evenly from the first to the last (all of them when n >= len)."""
    if n >= len(items):
        return list(items)
    idx = np.round(np.linspace(0, len(items) - 1, n)).astype(int)
    return [items[i] for i in idx]


def make_split(names: list[str], source: str, n_train: int, split_file: Path | None = None) -> Split:
    """The protocol's split of ``names`` (in the dataset's order) for ``n_train`` training views."""
    if split_file is not None:
        try:
            spec = json.loads(Path(split_file).read_text())
            train, test = list(spec["train"]), list(spec.get("test", []))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ReconError(f"cannot read split file {split_file}: expected JSON with 'train' and 'test' "
                             f"lists of image names ({e})") from None
        missing = [n for n in train + test if n not in names]
        if missing:
            raise ReconError(f"split file {split_file} names images that are not in the scene: {missing[:3]}")
        return Split(train, test, "file")
    if n_train < 2:
        raise ReconError(f"--views must be at least 2, got {n_train}")
    if source == "llff":
        test = names[::LLFF_HOLD]
        rest = [n for n in names if n not in test]
        return Split(evenly_spaced(rest, n_train), test, "llff")
    if source == "dtu" and len(names) == 49:
        if n_train > len(DTU_TRAIN_IDS):
            raise ReconError(f"the DTU protocol defines at most {len(DTU_TRAIN_IDS)} training views")
        return Split([names[i] for i in DTU_TRAIN_IDS[:n_train]], [names[i] for i in DTU_TEST_IDS], "dtu")
    ordered = sorted(names)
    train = evenly_spaced(ordered, n_train)
    return Split(train, [n for n in ordered if n not in train], "even")
