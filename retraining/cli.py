"""The edge shared by the three scripts: settings in, summary out, errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn, Sequence

from retraining.config import Settings, build_settings
from retraining.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, RetrainingError, UsageError

PROJECT_DIR = Path(__file__).resolve().parent.parent

log = logging.getLogger("retraining")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line ends as one line with the fix, like every failure."""

    def error(self, message):
        raise UsageError(message, fix=f"see {self.prog} --help")


def run_entry_point(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                    action: Callable[[Settings, argparse.Namespace], Mapping[str, Any]],
                    render: Callable[[Mapping[str, Any]], str] | None = None) -> int:
    """Run `action`; print its summary (JSON with --json); return the exit code.

    Without --json the summary is printed by `render` when given, else as `key: value`
    lines. Every failure ends as one line on stderr naming the cause and the fix.
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help
        return EXIT_OK if exit_request.code == 0 else EXIT_USAGE
    except UsageError as error:
        print(f"{parser.prog}: error: {error.one_line()}", file=sys.stderr)
        return error.exit_code
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = build_settings(PROJECT_DIR, args, os.environ)
        # stdout carries the summary alone; libraries that print (MLflow prints run links
        # when talking to a server) are sent to stderr with the rest of the log.
        with contextlib.redirect_stdout(sys.stderr):
            summary = action(settings, args)
    except RetrainingError as error:
        print(f"{parser.prog}: error: {error.one_line()}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{parser.prog}: error: interrupted. Fix: run it again", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # a bug or an unforeseen fault: keep the trace, end in one line
        log.exception("unexpected failure")
        text = " ".join(str(error).split())
        print(f"{parser.prog}: error: unexpected {type(error).__name__}: {text}. "
              "Fix: read the trace above; files not yet archived are still in their folder",
              file=sys.stderr)
        return EXIT_FAILURE
    if getattr(settings, "json", False):
        print(json.dumps(summary, sort_keys=True))
    elif render is not None:
        print(render(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return EXIT_OK


def exit_process(code: int) -> NoReturn:
    """End the process with `code`, sparing it a last sweep of every object it created.

    MLflow, pandas and scikit-learn leave about a million objects that the collector would
    walk once more at interpreter exit, for nothing (measured ~1.2 s a cycle). Frozen objects
    are skipped. Only for a process that is about to end: an in-process caller (the tests)
    calls `main()` and keeps collecting.
    """
    gc.freeze()
    sys.exit(code)
