"""The few failures a person must act on. Only entry points turn them into exit codes."""

from __future__ import annotations

from typing import Iterator

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TEMPORARY = 75  # EX_TEMPFAIL: cron may simply try again later


def quoted(error: BaseException, limit: int = 300) -> str:
    """An exception as a line of evidence: its kind and its message on one line, cut at
    `limit` (a JVM's error carries its whole stack in the message)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:limit]}" if text else type(error).__name__


class RetrainingError(Exception):
    """A failure with the fix a person should apply; `exit_code` is decided by the kind."""

    exit_code = EXIT_FAILURE

    def __init__(self, cause: str, fix: str):
        super().__init__(cause)
        self.cause = cause
        self.fix = fix

    def one_line(self) -> str:
        return f"{self.cause}. Fix: {self.fix}"


class UsageError(RetrainingError):
    """A flag, environment variable or folder is wrong."""

    exit_code = EXIT_USAGE


class NeedsAttention(RetrainingError):
    """Something a person must fix before the next cycle can run (exit 1)."""


class TryLater(RetrainingError):
    """Something that may pass by itself: another run, a store not reachable now (exit 75)."""

    exit_code = EXIT_TEMPORARY


class DataError(NeedsAttention):
    """A data file cannot be used as it is.

    `kind` names the check it failed, with what a setting could make every file fail
    identically (the missing label column, the same column difference): when every file of
    a batch fails with the same kind, the cause is a setting, not the files.
    """

    def __init__(self, cause: str, fix: str, kind: str = "data"):
        super().__init__(cause, fix)
        self.kind = kind


class Stopped(BaseException):
    """The run was ended from outside its own line of work: by a signal (Interrupted), or by
    a watchdog thread that found it cannot finish (retraining/stopping.py).

    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way (the user's
    hooks are wrapped in some) mistakes it for a fault of the file or model at hand. The
    work is safe to repeat: every step can be cut at any point, as by kill -9, and the next
    run converges.
    """

    def __init__(self, cause: str, fix: str, exit_code: int):
        super().__init__(cause)
        self.cause = cause
        self.fix = fix
        self.exit_code = exit_code

    def one_line(self) -> str:
        return f"{self.cause}. Fix: {self.fix}"


class Interrupted(Stopped):
    """A signal ended the run (SIGTERM from a timeout or shutdown, SIGINT from Ctrl-C).

    The exit code is the shell's for death by that signal, 128 + its number, which cron mail,
    systemd and schedulers read as "interrupted".
    """

    def __init__(self, signal_name: str, signal_number: int):
        super().__init__(
            f"interrupted by {signal_name}" + (" (a time limit or a shutdown)"
                                               if signal_name == "SIGTERM" else ""),
            "nothing is lost: run it again, and the next run finishes what this one started"
            + ("; if a time limit sent it, give the job more time"
               if signal_name == "SIGTERM" else ""),
            128 + signal_number)
        self.signal_name = signal_name


def causes(error: BaseException) -> Iterator[BaseException]:
    """The error, then what it was raised from or during, innermost last.

    MLflow wraps what went wrong (sqlalchemy's OperationalError, requests' ConnectionError)
    in an MlflowException whose message is the whole SQL or URL: the cause is in the chain.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def stop_behind(error: BaseException) -> Stopped | None:
    """What stopped the run, if `error` was raised while that unwound. A library's cleanup
    on the way out (pyspark's, after its job was cancelled) fails in words of its own,
    which are not what happened."""
    return next((cause for cause in causes(error) if isinstance(cause, Stopped)), None)


def raise_if_stopped(error: BaseException) -> None:
    """Raise what stopped the run, if `error` came of it: for every `except Exception` that
    would otherwise take it for a fault of the model or file at hand, and go on."""
    stopped = stop_behind(error)
    if stopped is not None:
        raise stopped from None
