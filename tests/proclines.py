"""Follow a subprocess's output line by line from a background thread (the viewer tests wait for lines
such as the URL while the browser drives the page)."""

from __future__ import annotations

import re
import subprocess
import threading
import time


class ProcessLines:
    """Collects ``proc``'s stdout lines (text mode) as they come, in ``lines``."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, pattern: str, timeout: float) -> re.Match | None:
        """The first line matching ``pattern`` within ``timeout`` seconds; None if there is none by then
        or the process has exited without printing one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.proc.poll() is not None:
                self.thread.join(timeout=1.0)  # the last lines may still be in the pipe
                return next((m for line in self.lines if (m := re.search(pattern, line))), None)
            time.sleep(0.1)
        return None
