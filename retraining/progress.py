"""Progress lines while a long step runs: a fit, or reading years of history.

A fit is one call to the user's `train_model`, which reports nothing while it runs, so the
only honest progress is time: a heartbeat thread logs what is being done and for how long,
every HEARTBEAT_SECONDS, until the block ends. A step that counts its work (files read) gives
a callable, so each line says how far it is. Lines go to the log (stderr); stdout keeps the
summary alone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, Iterator

# Often enough that a person watching sees the cycle is alive, rarely enough that a night's
# log of a fit of an hour stays a few hundred lines.
HEARTBEAT_SECONDS = 15.0


@contextlib.contextmanager
def heartbeat(log: logging.Logger, doing: str | Callable[[], str],
              interval: float | None = None) -> Iterator[None]:
    """While the block runs, log '<doing>, <N> s so far' every `interval` seconds.

    `doing` is the text, or a callable giving it at each line (read from another thread,
    so it must only read). `interval` defaults to HEARTBEAT_SECONDS, read when the block
    starts. Nothing is logged for a block shorter than the interval; the thread ends with
    the block, however the block ends.
    """
    every = HEARTBEAT_SECONDS if interval is None else interval
    started = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every):
            text = doing() if callable(doing) else doing
            log.info("%s, %.0f s so far", text, time.monotonic() - started)

    # A daemon: a process ended by a signal does not wait for it.
    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
