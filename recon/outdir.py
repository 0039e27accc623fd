"""What a run writes into its output folder, and the checks made on that folder before any work.

Torch-free (pathlib only), so that ``recon run`` refuses an unusable ``--out`` within a second, before
it imports the pipeline; :func:`recon.pipeline.run` makes the same checks for the Python API.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from recon.errors import ReconError

STATE_ENTRIES = ("cache", "checkpoints")
"""Resumable state of the current run: the cached prior and the trainer's checkpoint."""
OUTPUT_ENTRIES = ("point_cloud.ply", "cameras.json", "sparse", "images", "renders", "metrics.json",
                  "config.json")
"""What a finished run publishes (see :func:`recon.outputs.write_outputs`)."""
STAGING_PREFIX = ".incoming-"
"""Name prefix of the hidden folder a run writes its outputs into before publishing them."""


def input_folder(path: Path) -> Path:
    """The folder an input path stands for (a dataset's marker file stands for its folder)."""
    path = Path(path).expanduser().resolve()
    return path.parent if path.is_file() else path


def check_output_folder(out: Path, input_path: Path | None) -> None:
    """Refuse an input that does not exist or an output folder that cannot work, before anything runs
    (nothing is created).

    Raises:
        ReconError: the input does not exist; OUT is a file, lies under a file, is not writable, is the
            input folder or inside it (recon's COLMAP model in ``OUT/sparse`` would be read as the
            dataset's own poses by the next run, ``--poses dataset`` and ``recon eval``), or holds the
            input inside a folder that the run replaces (``OUT/images``, ...).
    """
    out_abs = Path(out).expanduser().resolve()
    if input_path is not None and not Path(input_path).exists():
        raise ReconError(f"input {input_path} does not exist")
    if out_abs.exists() and not out_abs.is_dir():
        raise ReconError(f"--out {out} is a file; pass a folder (it is created when missing)")
    if input_path is not None:
        inp = input_folder(input_path)
        if out_abs == inp or inp in out_abs.parents:
            where = "the input folder" if out_abs == inp else f"inside the input folder {inp}"
            raise ReconError(
                f"--out {out} is {where}; recon's outputs there (a COLMAP model in sparse/, images/) would "
                "be read as input by the next run, --poses dataset and recon eval: choose a folder outside it"
            )
        if out_abs in inp.parents:
            top = inp.relative_to(out_abs).parts[0]
            if top in STATE_ENTRIES + OUTPUT_ENTRIES or top.startswith(STAGING_PREFIX):
                raise ReconError(f"the input {inp} is inside {out_abs / top}, which this run replaces; "
                                 "copy the photos elsewhere or choose another --out")
    probe = out_abs
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ReconError(f"cannot create --out {out}: {probe} is a file")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".recon-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ReconError(f"--out {out} is not writable ({probe}: {e.strerror or e}); choose another folder") \
            from None
