"""Ctrl-C (SIGINT) and SIGTERM during a long run: stop cleanly, keep the work.

Two context managers, both active only in the main thread (Python delivers signals there; elsewhere
they do nothing):

- :func:`terminate_as_interrupt`: SIGTERM raises :class:`~recon.errors.Interrupted` wherever the run is,
  as Ctrl-C raises ``KeyboardInterrupt``, so that ``finally`` blocks and atomic writes clean up and the
  caller can say what was kept (by default SIGTERM ends the process on the spot).
- :func:`deferred_interrupts`: SIGINT and SIGTERM are only recorded; the loop inside checks
  ``pending`` at a point where its state is consistent (the trainer: between two steps), saves it and
  stops. A second signal raises at once, for a user who does not want to wait.

Torch-free.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from recon.errors import Interrupted


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM raises ``Interrupted(signum=SIGTERM)`` (SIGINT keeps raising
    ``KeyboardInterrupt``)."""
    if not _in_main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted("terminated (SIGTERM)", signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class PendingSignal:
    """The first SIGINT/SIGTERM received inside :func:`deferred_interrupts` (None: none yet)."""

    signum: int | None = None


@contextmanager
def deferred_interrupts() -> Iterator[PendingSignal]:
    """While active, the first SIGINT or SIGTERM sets ``pending.signum`` instead of raising; a second one
    raises :class:`Interrupted` at once. The previous handlers come back on exit."""
    pending = PendingSignal()
    if not _in_main_thread():
        yield pending
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if pending.signum is not None:
            raise Interrupted("interrupted twice: stopped without waiting for the current step", signum)
        pending.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield pending
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
