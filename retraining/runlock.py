"""One cycle at a time per data folder: an exclusive, non-blocking lock.

flock is released by the kernel when the holder dies, so a killed run never blocks the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from retraining.errors import TryLater, UsageError

LOCK_NAME = ".retraining.lock"  # hidden, so never mistaken for a data file


@contextlib.contextmanager
def exclusive_run(folder: Path) -> Iterator[None]:
    """Hold the folder's lock for the block; raise TryLater if another run holds it."""
    if not folder.is_dir():
        raise UsageError(f"data folder {folder} does not exist",
                         fix=f"create it (mkdir -p {folder}) or point the flag at the right one")
    path = folder / LOCK_NAME
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise TryLater(f"another cycle (pid {holder}) is already running on {folder}",
                           fix="wait for it to finish; cron will try again") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()
