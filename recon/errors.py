"""Errors that the CLI turns into one-line messages.

``ReconError`` is a user error (bad input, missing file, unusable views): the CLI prints its message
and exits with code 2. ``Interrupted`` is a run stopped by Ctrl-C (SIGINT) or SIGTERM after saving what
it could: the CLI prints its message (what ``--resume`` continues from) and exits with 128 + the signal
number (130 for Ctrl-C). Anything else is an internal error (exit 1).
"""

from __future__ import annotations

import signal


class ReconError(Exception):
    """A problem with the user's input that they can fix; the message is one actionable line."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; the message says what was kept and what ``--resume`` continues from.

    Attributes:
        signum: the signal (``signal.SIGINT`` for Ctrl-C, ``signal.SIGTERM``).
        step: the training step reached, when training was interrupted (its checkpoint holds that step).
        total: the training steps asked for.
        checkpoint: True when the trainer wrote a checkpoint at ``step`` before stopping.
    """

    def __init__(self, message: str, signum: int = signal.SIGINT, *, step: int | None = None,
                 total: int | None = None, checkpoint: bool = False) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.step = step
        self.total = total
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name
