"""The few failures a person must act on. Only entry points turn them into exit codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TEMPORARY = 75  # EX_TEMPFAIL: cron may simply try again later


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
    """A data file cannot be used as it is."""
