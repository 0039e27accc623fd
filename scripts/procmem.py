"""Process memory readings for the benchmark scripts: re-exported from :mod:`recon.progress` (their one
home), so that scripts run from a checkout keep their short import."""

from __future__ import annotations

from recon.progress import mem_kib, reset_peak

__all__ = ["mem_kib", "reset_peak"]
