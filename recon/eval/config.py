"""Configuration of ``recon eval`` (torch-free: the CLI builds its parser from it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recon.config import ReconConfig
from recon.options import PositiveFloat, ranged


@dataclass(kw_only=True)
class EvalConfig(ReconConfig):
    """The pipeline's configuration plus the evaluation protocol's settings."""

    max_side: ranged(int, 64) = 1024
    """Images are loaded with their long side at most this (Strecha's protocol uses 1024)."""
    views: ranged(int, 2) = 3
    """Number of training views per scene."""
    split: Path | None = None
    """JSON file with {"train": [...], "test": [...]} image names, overriding the protocol."""
    ray: bool = False
    """Run each scene as one task on a Ray cluster (the 'dist' extra), results gathered as they finish;
    otherwise one scene after another."""
    ray_address: str | None = None
    """With --ray, the cluster to attach to (its GCS address, e.g. 'head-node:6379'); default: $RAY_ADDRESS,
    else the cluster started last on this machine, else a new local one ('local' always starts a new one).
    The workers need recon installed and the scene folders at the same paths; a cluster with Ray's token
    authentication also needs RAY_AUTH_MODE=token here."""
    ray_cpus: PositiveFloat = 1.0
    """With --ray, CPUs reserved for each scene's task (torch uses that many threads in it)."""
    force: bool = False
    """Redo every scene; by default a scene whose OUT/<scene>/result.json holds a result of the same
    configuration without an error is not run again (an interrupted batch resumes)."""
    refine_effect: bool = False
    """Also score each scene as it was before each refinement stage that ran (pose correction; diffusion
    with --diffusion-model), i.e. the run without that stage, and report the differences."""
