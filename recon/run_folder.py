"""The output folder of ``recon run``: checked before any work, described by a manifest, replaced whole.

- :func:`recon.outdir.check_output_folder` (torch-free, so the CLI runs it first): the folder must be
  writable, and neither the input folder nor inside it.
- The run manifest, ``OUT/manifest.json``, is the first file a run writes: the recon version, the input
  folder, every photo used (path, size in bytes, SHA-256 of its content), the reference cameras' hash
  when the input has them, every option that shapes the result, and the run's status ("running",
  "failed", "finished"). ``--resume`` continues a run only when :func:`resume_mismatch` finds nothing
  that differs, so a resumed run can never mix two inputs or two configurations.
- :func:`publish_outputs`: a run writes its outputs into a hidden staging folder inside OUT and then
  moves them over the previous run's (:func:`recon.io.atomic.replace_entries`), so OUT never mixes two
  runs' renders and never holds a half-written file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from recon import __version__
from recon.config import ReconConfig
from recon.errors import ReconError
from recon.io.atomic import REPLACED_PREFIX, atomic_write_json, replace_entries
from recon.options import option_values
from recon.outdir import OUTPUT_ENTRIES, STAGING_PREFIX, STATE_ENTRIES
from recon.views import Views

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
IGNORED_OPTIONS = frozenset({"--device", "--checkpoint-every", "--callback-every"})
"""Options that do not change a run's result, so ``--resume`` may differ in them."""


# --------------------------------------------------------------------------------------------------
# The folder itself
# --------------------------------------------------------------------------------------------------


def clear_state(out: Path) -> None:
    """Remove the previous run's resumable state (cached prior, checkpoint) and leftovers of an
    interrupted publish, before a new run starts in ``out``. Published outputs stay until replaced."""
    for name in STATE_ENTRIES:
        shutil.rmtree(out / name, ignore_errors=True)
    clear_leftovers(out)


def clear_leftovers(out: Path) -> None:
    """Remove staging folders and renamed-aside entries left by a run that was killed while publishing."""
    if not out.is_dir():
        return
    for p in out.iterdir():
        if not (p.name.startswith(STAGING_PREFIX) or p.name.startswith(REPLACED_PREFIX)):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def staging_folder(out: Path) -> Path:
    """A new hidden folder inside ``out`` for this run's outputs (same file system: renames are atomic)."""
    path = out / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    return path


def publish_outputs(staging: Path, out: Path) -> None:
    """Move the outputs in ``staging`` over the previous run's in ``out`` (each entry replaced whole:
    ``renders/`` of the new run never sits beside the old run's renders)."""
    replace_entries(staging, out)


def has_run_files(out: Path) -> bool:
    """Whether ``out`` holds anything a run writes (outputs or state)."""
    return out.is_dir() and any((out / n).exists() for n in STATE_ENTRIES + OUTPUT_ENTRIES)


# --------------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def photo_entries(views: Views) -> list[dict[str, Any]]:
    """Per view: its name and the SHA-256 of its file (with the file's path relative to the input folder
    and its size), or of its pixels for views not loaded from files."""
    root = Path(views.root).resolve() if views.root else None
    entries = []
    for i, name in enumerate(views.names):
        if views.files:
            path = Path(views.files[i]).resolve()
            rel = str(path.relative_to(root)) if root is not None and root in path.parents else str(path)
            entries.append({"name": name, "file": rel, "bytes": path.stat().st_size,
                            "sha256": _file_sha256(path)})
        else:
            pixels = np.ascontiguousarray(views.images[i].numpy()).tobytes()
            entries.append({"name": name, "pixels_sha256": hashlib.sha256(pixels).hexdigest()})
    return entries


def _cameras_sha256(views: Views) -> str | None:
    if views.cameras is None:
        return None
    h = hashlib.sha256()
    for t in (views.cameras.K, views.cameras.w2c, views.cameras.sizes):
        h.update(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes())
    return h.hexdigest()


def run_options(cfg: ReconConfig) -> dict[str, Any]:
    """Flag -> value of every :class:`ReconConfig` option (fields a CLI subclass adds, such as ``--out``,
    are left out)."""
    base = ReconConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(ReconConfig) if f.init})
    return option_values(base)


def build_manifest(views: Views, cfg: ReconConfig) -> dict[str, Any]:
    """The manifest of a run of ``cfg`` on ``views`` (every input view, held-out ones included)."""
    return {
        "format": MANIFEST_FORMAT,
        "recon_version": __version__,
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "input": {
            "path": str(Path(views.root).resolve()) if views.root else "",
            "format": views.source,
            "photos": photo_entries(views),
            "cameras_sha256": _cameras_sha256(views),
        },
        "options": run_options(cfg),
    }


def manifest_path(out: Path) -> Path:
    return Path(out) / MANIFEST_NAME


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest in ``out``, or None when there is none.

    Raises:
        ReconError: the file exists but is not a manifest this version of recon can read.
    """
    path = manifest_path(out)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReconError(f"cannot read {path} ({type(e).__name__}); run without --resume to start over") \
            from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ReconError(f"{path} is not a run manifest of this recon; run without --resume to start over")
    return manifest


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(manifest_path(out), manifest)


def set_status(out: Path, manifest: dict[str, Any], status: str, **extra: Any) -> None:
    """Record the run's status ("running", "failed", "finished") and details in its manifest."""
    manifest.update(status=status, **extra)
    write_manifest(out, manifest)


def _photo_key(entry: dict[str, Any]) -> str:
    return entry.get("file") or entry["name"]


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def resume_mismatch(previous: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why the run described by ``previous`` cannot be continued with ``current``'s input and options
    (one line naming the photos or options that differ), or None when it can."""
    if previous.get("recon_version") != current["recon_version"]:
        return (f"the run was made by recon {previous.get('recon_version')}, this is recon "
                f"{current['recon_version']}")
    old = {_photo_key(p): p for p in previous["input"]["photos"]}
    new = {_photo_key(p): p for p in current["input"]["photos"]}
    added = [k for k in new if k not in old]
    missing = [k for k in old if k not in new]
    changed = [k for k in new if k in old and _content(new[k]) != _content(old[k])]
    problems = []
    if changed:
        problems.append(f"{_names(changed)} {'has' if len(changed) == 1 else 'have'} changed")
    if added:
        problems.append(f"{_names(added)} {'was' if len(added) == 1 else 'were'} added")
    if missing:
        problems.append(f"{_names(missing)} {'is' if len(missing) == 1 else 'are'} missing")
    if problems:
        moved = previous["input"]["path"] != current["input"]["path"]
        src = f"it was made from {previous['input']['path']}" if moved else "since it started"
        return f"the photos differ from the run's ({'; '.join(problems)}; {src})"
    if previous["input"].get("cameras_sha256") != current["input"].get("cameras_sha256"):
        return "the input's reference cameras differ from the run's"
    old_opts, new_opts = previous.get("options", {}), current["options"]
    for flag in sorted(set(old_opts) | set(new_opts)):
        if flag in IGNORED_OPTIONS or old_opts.get(flag) == new_opts.get(flag):
            continue
        before = _shown(old_opts[flag]) if flag in old_opts else "(not an option then)"
        return f"{flag} is {_shown(new_opts.get(flag))} but the run used {before}"
    return None


def _content(entry: dict[str, Any]) -> tuple:
    return entry.get("sha256"), entry.get("bytes"), entry.get("pixels_sha256")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)
