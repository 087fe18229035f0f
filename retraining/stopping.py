"""How a run is stopped from outside its own work: by a signal.

The main thread raises a `Stopped` where it is, and unwinding through the program's own
`with` blocks marks its MLflow runs FAILED and releases its locks; what a kill -9 at that
point would leave, the next run finishes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from retraining.errors import Interrupted


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """SIGTERM and SIGINT raise Interrupted where the program is, for the block.

    Only in the main thread, where Python delivers signals (the tests call main() there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    interrupted = False

    def interrupt(number, frame):
        # Once: a second signal while the first unwinds would cut the unwinding itself
        # (a run then left for MLflow's exit hook to mark FINISHED). A scheduler that
        # insists sends SIGKILL, which every step already survives.
        nonlocal interrupted
        interrupted = True
        for each in (signal.SIGTERM, signal.SIGINT):
            signal.signal(each, signal.SIG_IGN)
        raise Interrupted(signal.Signals(number).name, number)

    previous = {number: signal.signal(number, interrupt)
                for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        # After an interrupt the process is ending with its code: one more signal before
        # the exit would end it by the signal instead, after its line was already printed.
        if not interrupted:
            for number, handler in previous.items():
                signal.signal(number, handler)

