"""Train/test splits of the standard sparse-view protocols.

- LLFF: every 8th image (index 0, 8, 16, ...) is a test view; N training views are spaced evenly over
  the rest.
- DTU (the RegNeRF/PixelNeRF split used by sparse-view papers): training ids 25, 22, 28, 40, 44, 48, 0, 8,
  13 (the first N), fixed test ids.
- Otherwise: N training views spaced evenly over the sorted images, the others are test views.
- A JSON file ``{"train": [names], "test": [names]}`` overrides all of these.

Every split has at least 2 training and 1 test image, and no image in both; anything else is a user error
(:class:`~recon.errors.ReconError`) that names the images.
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


def _names(items: list[str], limit: int = 6) -> str:
    """``items`` for an error message: comma-separated, the first ``limit`` and how many more."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _parse_split_file(split_file: Path) -> tuple[list[str], list[str]]:
    try:
        spec = json.loads(Path(split_file).read_text())
        train, test = spec["train"], spec.get("test", [])
        if not isinstance(train, list) or not isinstance(test, list):
            raise TypeError("'train' and 'test' must be lists")
        return [str(n) for n in train], [str(n) for n in test]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ReconError(f"cannot read split file {split_file}: expected JSON with 'train' and 'test' "
                         f"lists of image names ({e})") from None


def check_split(train: list[str], test: list[str], what: str) -> None:
    """Raise a ReconError naming the images when ``train``/``test`` is not a usable split: fewer than 2
    training images, no test image, an image listed twice, or one in both lists. ``what`` names the split
    in the message (e.g. "split file s.json")."""
    for key, items in (("train", train), ("test", test)):
        twice = sorted({n for n in items if items.count(n) > 1})
        if twice:
            raise ReconError(f"{what} lists {_names(twice)} more than once in '{key}'")
    both = [n for n in train if n in set(test)]
    if both:
        raise ReconError(f"{what} uses {_names(both)} both for training and for testing; a test image "
                         "must not be seen in training")
    if len(train) < 2:
        raise ReconError(f"{what} has {len(train)} training image(s) ({_names(train) or 'none'}); "
                         "at least 2 are needed")
    if not test:
        raise ReconError(f"{what} has no test image (training: {_names(train)}); held-out views are "
                         "needed to score novel views: use fewer --views or a --split file with 'test'")


def read_split_file(split_file: Path) -> tuple[list[str], list[str]]:
    """(train, test) image names of a split file, checked with :func:`check_split` (before any scene is
    loaded, so that a bad file stops a batch at once)."""
    train, test = _parse_split_file(split_file)
    check_split(train, test, f"split file {split_file}")
    return train, test


def make_split(names: list[str], source: str, n_train: int, split_file: Path | None = None) -> Split:
    """The protocol's split of ``names`` (in the dataset's order) for ``n_train`` training views.

    Raises:
        ReconError: the split file is unreadable or names images that are not in the scene, or the split
            is unusable (see :func:`check_split`).
    """
    if split_file is not None:
        train, test = _parse_split_file(split_file)
        missing = [n for n in train + test if n not in names]
        if missing:
            raise ReconError(f"split file {split_file} names images that are not in the scene: "
                             f"{_names(missing, 3)}")
        check_split(train, test, f"split file {split_file}")
        return Split(train, test, "file")
    if n_train < 2:
        raise ReconError(f"--views must be at least 2, got {n_train}")
    if source == "llff":
        test = names[::LLFF_HOLD]
        rest = [n for n in names if n not in test]
        split = Split(evenly_spaced(rest, n_train), test, "llff")
    elif source == "dtu" and len(names) == 49:
        if n_train > len(DTU_TRAIN_IDS):
            raise ReconError(f"the DTU protocol defines at most {len(DTU_TRAIN_IDS)} training views")
        split = Split([names[i] for i in DTU_TRAIN_IDS[:n_train]], [names[i] for i in DTU_TEST_IDS], "dtu")
    else:
        ordered = sorted(names)
        train = evenly_spaced(ordered, n_train)
        split = Split(train, [n for n in ordered if n not in train], "even")
    check_split(split.train, split.test, f"the {split.protocol} split of {len(names)} images for --views "
                f"{n_train}")
    return split
