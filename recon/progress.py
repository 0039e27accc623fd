"""What a long run shows and records: per-stage wall/CPU time and peak memory, and progress.

A :class:`StageLog` times named stages (``with log.stage("prior"): ...``) and keeps the numbers for
``metrics.json`` and ``recon eval``'s results. What the user sees depends on where stderr goes:

- a terminal: rich progress bars (the trainer's steps) and a line per finished stage;
- anything else (a log file, CI): one plain line per finished stage with its time, and for the trainer a
  line every ``TrainConfig.log_every``-ish steps (at most ~10 per run) with the step, loss and PSNR,
  flushed at once, so a log shows where a run is while it runs.

Peak memory is the process's resident high-water mark (Linux ``VmHWM``), reset at the start of each
stage so that each stage's peak is its own (where the kernel allows the reset; else the process peak so
far). Torch-free (the CLI imports it before anything heavy).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO


def mem_kib(name: str) -> int | None:
    """A /proc/self/status field in KiB (e.g. "VmRSS", "VmHWM"), or None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), or None where unknown: the cost of interpreter
    start-up and imports when read just after them."""
    try:
        import os

        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@dataclass
class StageLog:
    """Times stages and reports them.

    Attributes:
        stages: stage name -> {"wall_s", "cpu_s", "peak_mib"} in the order they ran (a stage run twice
            accumulates its times and keeps the larger peak).
        verbose: print a line per finished stage (to ``stream``, stderr by default).
        prefix: put before every line (e.g. the scene's name in ``recon eval``).
    """

    stages: dict[str, dict[str, float | None]] = field(default_factory=dict)
    verbose: bool = True
    prefix: str = ""
    stream: TextIO | None = None
    current: str | None = None
    """The stage running now; after a stage raised, the stage it raised in (what an interrupt stopped)."""

    @property
    def terminal(self) -> bool:
        """Whether the output goes to a terminal (rich bars) or not (plain lines)."""
        return is_terminal(self.stream)

    def say(self, text: str) -> None:
        """One line to the user (flushed: a log file shows it at once)."""
        if self.verbose:
            print(f"recon: {self.prefix}{text}", file=self.stream or sys.stderr, flush=True)

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        """Time the block as stage ``name``; print "<name> done in X s" when it ends."""
        reset_peak()
        t0, c0 = time.perf_counter(), time.process_time()
        outer, self.current = self.current, name
        yield  # a stage that raises is neither recorded nor reported as done, and stays ``current``
        self.current = outer
        self.add(name, time.perf_counter() - t0, time.process_time() - c0, mem_kib("VmHWM"))
        extra = f" ({detail})" if detail else ""
        self.say(f"{name}{extra} done in {time.perf_counter() - t0:.1f} s")

    def add(self, name: str, wall_s: float, cpu_s: float | None, peak_kib: int | None = None) -> None:
        """Record a stage timed elsewhere (e.g. sub-stages the prior measured itself; None: not measured)."""
        new: dict[str, float | None] = {
            "wall_s": wall_s, "cpu_s": cpu_s, "peak_mib": None if peak_kib is None else peak_kib / 1024.0
        }
        old = self.stages.get(name)
        if old is not None:
            for k in ("wall_s", "cpu_s"):
                new[k] = None if new[k] is None or old[k] is None else new[k] + old[k]
            peaks = [p for p in (new["peak_mib"], old["peak_mib"]) if p is not None]
            new["peak_mib"] = max(peaks) if peaks else None
        self.stages[name] = new

    def add_startup(self) -> None:
        """Record "start and imports": the process's age and CPU time so far (call it first)."""
        age = process_age_s()
        if age is not None:
            self.add("start and imports", age, time.process_time(), mem_kib("VmHWM"))

    def as_dict(self) -> dict[str, dict[str, float | None]]:
        return {k: dict(v) for k, v in self.stages.items()}


class StepReporter:
    """Progress of a loop of ``total`` steps: a rich bar on a terminal, else a plain line every
    ``every`` steps (default: about ten lines per run) and at the end."""

    def __init__(self, label: str, total: int, enabled: bool = True, stream: TextIO | None = None,
                 every: int = 0, start: int = 0) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = stream or sys.stderr
        self.every = every if every > 0 else max(total // 10, 1)
        self.t0 = time.perf_counter()
        self.start = start
        self._bar = None
        if enabled and is_terminal(self.stream):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(), transient=True,
            )
            self._task = self._bar.add_task(label, total=total, completed=start, info="")

    def __enter__(self) -> StepReporter:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, info: str = "") -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total:
            rate = (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)
            print(f"recon: {self.label} {step}/{self.total}  {info}  ({rate:.1f} steps/s)", file=self.stream,
                  flush=True)
