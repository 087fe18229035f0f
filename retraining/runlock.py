"""Exclusive locks: one cycle at a time per data folder, one alias move at a time per store.

flock is released by the kernel when the holder dies, so a killed run never blocks the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from retraining.errors import TryLater, UsageError
from retraining.statefiles import open_own_file

LOCK_NAME = ".retraining.lock"  # hidden, so never mistaken for a data file


@contextlib.contextmanager
def exclusive_run(folder: Path) -> Iterator[None]:
    """Hold the folder's lock for the block; raise TryLater if another run holds it."""
    if not folder.is_dir():
        raise UsageError(f"data folder {folder} does not exist",
                         fix=f"create it (mkdir -p {folder}) or point the flag at the right one")
    with held_lock(folder / LOCK_NAME, wait_seconds=0.0) as holder:
        if holder is not None:
            raise TryLater(f"another cycle (pid {holder}) is already running on {folder}",
                           fix="wait for it to finish; cron will try again")
        yield


@contextlib.contextmanager
def alias_lock(path: Path, wait_seconds: float = 60.0) -> Iterator[None]:
    """Hold the lock under which the alias is read, checked and moved (see Registry)."""
    with held_lock(path, wait_seconds) as holder:
        if holder is not None:
            raise TryLater(f"another process (pid {holder}) has been moving the alias for "
                           f"{wait_seconds:.0f} s (lock {path})",
                           fix="run again once it has finished")
        yield


@contextlib.contextmanager
def held_lock(path: Path, wait_seconds: float) -> Iterator[str | None]:
    """Take the exclusive lock at `path`, waiting up to `wait_seconds`.

    Yields None once held (the file then names this process), or the holder's pid when
    another process kept it for the whole wait; the caller decides what that means.
    """
    # Never through a link, nor into a folder or a FIFO planted under the lock's name.
    try:
        descriptor, writable = open_own_file(path, os.O_RDWR | os.O_CREAT, 0o664), True
    except PermissionError:
        # Made by another user (the root cron job, say): flock needs no write access, so a
        # person may still take it; only the holder's pid is not written.
        descriptor, writable = open_own_file(path, os.O_RDONLY), False
    handle = os.fdopen(descriptor, "r+" if writable else "r", encoding="utf-8")
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    yield handle.read().strip() or "unknown"
                    return
                time.sleep(0.1)
        if writable:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        yield None
    finally:
        handle.close()
