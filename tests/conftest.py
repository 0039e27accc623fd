"""Shared test fixtures: paths to ../shared data and fixtures (tests skip cleanly when absent)."""

from __future__ import annotations

import os

# Before torch loads OpenMP: sleeping (not spinning) OpenMP waiters, see recon/__init__.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
SHARED_FIXTURES = SHARED / "fixtures"


def shared_scene(name: str) -> Path:
    """Path of a scene in ../shared/data, or skip the test when it is not there."""
    p = SHARED_DATA / name
    if not p.is_dir():
        pytest.skip(f"../shared/data/{name} is not available on this machine")
    return p


def shared_fixture(*parts: str) -> Path:
    p = SHARED_FIXTURES.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"../shared/fixtures/{'/'.join(parts)} is not available on this machine")
    return p


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def single_thread():
    """Run a test on one CPU thread: the native rasteriser's multi-threaded backward sums in a varying
    order (bitwise-reproducible training needs one thread), and on a small shared CPU one thread is also
    much faster than oversubscribed OpenMP. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
