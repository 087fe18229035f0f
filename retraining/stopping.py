"""How a run is stopped from outside its own work: by a signal, or by a watchdog thread.

Either way the main thread raises a `Stopped` where it is, and unwinding through the
program's own `with` blocks marks its MLflow runs FAILED and releases its locks; what a
kill -9 at that point would leave, the next run finishes. A watchdog goes through the same
path as SIGTERM (stop_from_thread), so whatever SIGTERM cancels on its way (the Spark
engine's jobs) is cancelled for it too.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import threading
from typing import Iterator

from retraining.errors import Interrupted, Stopped

# What a watchdog asked the run to stop with, raised by the SIGTERM handler instead of
# Interrupted; cleared with each block, since the tests run many in one process.
_asked: list[Stopped] = []


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """SIGTERM and SIGINT raise Interrupted where the program is, for the block; a
    watchdog's stop_from_thread raises its Stopped there.

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
        raise _asked[0] if _asked else Interrupted(signal.Signals(number).name, number)

    _asked.clear()
    previous = {number: signal.signal(number, interrupt)
                for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        _asked.clear()
        # After an interrupt the process is ending with its code: one more signal before
        # the exit would end it by the signal instead, after its line was already printed.
        if not interrupted:
            for number, handler in previous.items():
                signal.signal(number, handler)


def stop_from_thread(reason: Stopped) -> bool:
    """From another thread: end the run with `reason`, raised in the main thread as SIGTERM's
    Interrupted would be. False where nothing would raise it (no run's handler, or one
    already stopping), and the caller must end the work some other way.

    The main thread raises it the next time it runs Python: at once if it is running
    Python, after the call it waits in returns if it waits in one (so a watchdog ends that
    call first: Spark's jobs cancelled).
    """
    if not callable(signal.getsignal(signal.SIGTERM)):
        return False
    _asked.append(reason)
    _thread.interrupt_main(signal.SIGTERM)
    return True
