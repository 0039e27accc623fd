"""Atomic file writes (CONVENTIONS "Files"): write a temporary file in the target's folder, then rename.

``os.replace`` within one folder (one file system) is atomic on POSIX and Windows, so a reader sees either
the old file or the complete new one, never a half-written file, even if the process is killed mid-write.
Every writer in the project goes through these helpers.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _temp_sibling(path: Path) -> Path:
    """A unique hidden temporary path next to ``path`` that keeps its suffix.

    Keeping the suffix matters: several writers (``np.save``, ``cv2.imwrite``, imageio) choose or append a
    format from the extension.
    """
    return path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:12]}{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it onto ``path`` when the block succeeds.

    The parent folder is created if needed. If the block raises, the temporary file is removed, ``path``
    is left untouched, and the exception propagates. The block must create the temporary file.

    Example::

        with atomic_path(out / "model.safetensors") as tmp:
            save_file(tensors, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


REPLACED_PREFIX = ".replaced-"
"""Name prefix of an entry moved aside by :func:`replace_entries` just before it is deleted."""


def replace_entries(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move every entry of folder ``src`` into folder ``dest`` (same file system), replacing the entries
    of the same names whole, then remove ``src``.

    A file replaces a file with one ``os.replace`` (atomic). A folder cannot be renamed over a non-empty
    one, so the old entry is first renamed aside (``.replaced-*``), the new one renamed into place and
    the old one deleted: a reader sees the old or the new folder, never a mix of both, and at worst (a
    kill between the two renames) no folder of that name, with the new one still in ``src``.
    """
    src, dest = Path(src), Path(dest)
    for entry in sorted(src.iterdir()):
        target = dest / entry.name
        if entry.is_dir() or target.is_dir():
            aside = None
            if target.exists():
                aside = dest / f"{REPLACED_PREFIX}{uuid.uuid4().hex[:12]}-{entry.name}"
                os.replace(target, aside)
            os.replace(entry, target)
            if aside is not None:
                if aside.is_dir():
                    shutil.rmtree(aside)
                else:
                    aside.unlink()
        else:
            os.replace(entry, target)
    src.rmdir()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed and fsynced before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def to_json_default(obj: Any) -> Any:
    """``json`` fallback: numpy/torch scalars become Python numbers, arrays/tensors nested lists, paths str.

    Raises TypeError for anything else, as ``json`` expects of a ``default`` hook.
    """
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return t.item() if t.dim() == 0 else t.tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON (indent 2, trailing newline) atomically; numpy/torch values are converted."""
    text = json.dumps(obj, indent=2, default=to_json_default)
    atomic_write_text(path, text + "\n")
