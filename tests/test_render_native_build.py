"""Kernel build housekeeping: a lock left by a killed build must not hang later processes."""

import os
import time

from recon.render.native import STALE_LOCK_SECONDS, _remove_stale_lock


def test_stale_build_lock_is_removed_fresh_one_kept(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text("")
    _remove_stale_lock(lock)
    assert lock.exists()  # another process may be compiling right now
    old = time.time() - STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    _remove_stale_lock(lock)
    assert not lock.exists()
    _remove_stale_lock(lock)  # absent: nothing to do, no error
