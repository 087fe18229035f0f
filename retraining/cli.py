"""The edge shared by the three scripts: settings in, summary out, errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NoReturn, Sequence

from retraining.config import Settings, build_settings
from retraining.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    RetrainingError,
    Stopped,
    UsageError,
    stop_behind,
)
from retraining.stopping import signals_as_exceptions

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
    lines. Every failure ends as one line on stderr naming the cause and the fix, and, with
    --json, as one object on stdout too (outcome `failed`, the exit code, the reason), so a
    log of one JSON line per run never misses one.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    wants_json = "--json" in argv or _flag_set(os.environ.get("RETRAIN_JSON", ""))
    settings = None
    try:
        with signals_as_exceptions():
            args = _parse(parser, argv, wants_json)
            logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                                format="%(asctime)s %(levelname)s %(message)s")
            settings = build_settings(PROJECT_DIR, args, os.environ)
            wants_json = bool(getattr(settings, "json", False))
            # stdout carries the summary alone; libraries that print (MLflow prints run
            # links when talking to a server) are sent to stderr with the rest of the log.
            with mlflow_environment(settings), contextlib.redirect_stdout(sys.stderr):
                try:
                    summary = action(settings, args)
                except SystemExit as exit_request:
                    # A library's sys.exit, not ours: the work did not complete, whatever
                    # code it gave.
                    raise RuntimeError(f"a library called sys.exit({exit_request.code!r}) "
                                       "during the run") from exit_request
    except SystemExit as exit_request:  # --help (argparse printed it)
        return EXIT_OK if exit_request.code == 0 else EXIT_USAGE
    except (RetrainingError, Stopped) as error:
        error = stop_behind(error) or error
        return _failed(parser.prog, error.exit_code, error.one_line(), wants_json)
    except Exception as error:  # a bug or an unforeseen fault: keep the trace, end in one line
        stopped = stop_behind(error)
        if stopped is not None:
            return _failed(parser.prog, stopped.exit_code, stopped.one_line(), wants_json)
        log.exception("unexpected failure")
        text = " ".join(str(error).split())
        return _failed(parser.prog, EXIT_FAILURE,
                       f"unexpected {type(error).__name__}: {text}. Fix: read the trace "
                       "above; files not yet archived are still in their folder", wants_json)
    try:
        if wants_json:
            print(json.dumps(summary, sort_keys=True))
        elif render is not None:
            print(render(summary))
        else:
            for key, value in summary.items():
                print(f"{key}: {value}")
        sys.stdout.flush()
    except OSError as error:  # stdout is a full disk or a closed pipe: say so on stderr
        print(f"{parser.prog}: error: the run completed but its summary could not be written "
              f"to stdout ({os.strerror(error.errno) if error.errno else error}). Fix: make "
              "room where stdout goes, or redirect it elsewhere", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _parse(parser: argparse.ArgumentParser, argv: list[str], wants_json: bool):
    """parse_args; with --json, even --help answers with one JSON object on stdout."""
    if not wants_json:
        return parser.parse_args(argv)
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            return parser.parse_args(argv)
    except SystemExit:
        print(json.dumps({"outcome": "help", "exit_code": 0, "help": text.getvalue()}))
        raise


def _failed(prog: str, code: int, line: str, wants_json: bool) -> int:
    print(f"{prog}: error: {line}", file=sys.stderr)
    if wants_json:
        try:
            print(json.dumps({"outcome": "failed", "exit_code": code, "reason": line},
                             sort_keys=True))
            sys.stdout.flush()
        except OSError:  # stdout unwritable: the line on stderr above is all there can be
            return code
    return code


def _flag_set(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


# How one HTTP call to a tracking server is bounded (see http_request_variables).
_RETRIES_AT_MOST = 3
_BACKOFF_FACTOR = 1
# A shorter wait per attempt would fail a server that is merely slow: fewer retries instead.
_SHORTEST_ATTEMPT = 5


def backoff_seconds(retries: int, factor: int) -> int:
    """Sleeps between `retries + 1` attempts, as urllib3's Retry computes them without jitter.

    urllib3 sleeps nothing after the first failure and `factor * 2 ** (n - 1)` after the nth
    consecutive one (n >= 2); after the last attempt it raises instead of sleeping.
    """
    return sum(factor * 2 ** (failure - 1) for failure in range(2, retries + 1))


def http_request_variables(budget: float) -> dict[str, str]:
    """MLflow's HTTP variables under which one store call gives up within `budget` seconds.

    Worst case of a call: `retries + 1` attempts, each waiting up to `timeout` seconds to
    connect and as long again for the answer (requests applies the one timeout to both),
    plus `backoff_seconds` between them. As many retries as fit (at most 3) while `timeout`
    stays at least 5 s; below that, one attempt gets the budget. Jitter is off and a server's
    Retry-After header is not obeyed: either could exceed the budget. Not bounded: a server
    that trickles its answer a byte at a time, since the timeout is between bytes.
    """
    for retries in range(_RETRIES_AT_MOST, 0, -1):
        timeout = int((budget - backoff_seconds(retries, _BACKOFF_FACTOR))
                      // (2 * (retries + 1)))
        if timeout >= _SHORTEST_ATTEMPT:
            break
    else:
        retries, timeout = 0, int(budget // 2)
    return {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(_BACKOFF_FACTOR),
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
            "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false"}


def mlflow_variables(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment MLflow must see for this run; a variable the user set is left alone.

    Telemetry is off: on an offline cron host its thread once died reading its session id,
    and a nightly job has no business phoning home.
    """
    wanted = http_request_variables(settings.store_timeout) | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    return {name: value for name, value in wanted.items() if name not in environ}


@contextlib.contextmanager
def mlflow_environment(settings: Settings) -> Iterator[None]:
    """Set `mlflow_variables` for the block, then take them away again.

    MLflow reads them when imported (telemetry) and at each call (HTTP), so the block must
    come before the first `import mlflow` of a process. Taken away afterwards so that an
    in-process caller (the tests) does not pass them on as if a user had set them.
    """
    added = mlflow_variables(settings, os.environ)
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def exit_process(code: int) -> NoReturn:
    """End the process with `code`, sparing it a last sweep of every object it created.

    MLflow, pandas and scikit-learn leave about a million objects that the collector would
    walk once more at interpreter exit, for nothing (measured ~1.2 s a cycle). Frozen objects
    are skipped. Only for a process that is about to end: an in-process caller (the tests)
    calls `main()` and keeps collecting.
    """
    gc.freeze()
    sys.exit(code)
