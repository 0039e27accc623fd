"""Process memory readings for the benchmark scripts (Linux /proc; None / False elsewhere).

Peak resident memory is measured by resetting the kernel's high-water mark (VmHWM) before a stage and
reading it after, so each stage's peak is its own.
"""

from __future__ import annotations


def mem_kib(field: str) -> int | None:
    """A /proc/self/status field in KiB (e.g. "VmRSS", "VmHWM"), or None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
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
