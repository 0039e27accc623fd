"""Configuration of ``recon eval`` (torch-free: the CLI builds its parser from it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recon.config import ReconConfig


@dataclass(kw_only=True)
class EvalConfig(ReconConfig):
    """The pipeline's configuration plus the evaluation protocol's settings."""

    max_side: int = 1024
    """Images are loaded with their long side at most this (Strecha's protocol uses 1024)."""
    views: int = 3
    """Number of training views per scene."""
    split: Path | None = None
    """JSON file with {"train": [...], "test": [...]} image names, overriding the protocol."""
    ray: bool = False
    """Run scenes in parallel with Ray (the 'dist' extra); otherwise one after another."""
    refine_effect: bool = False
    """Also score each scene as it was before each refinement stage that ran (pose correction; diffusion
    with --diffusion-model), i.e. the run without that stage, and report the differences."""
