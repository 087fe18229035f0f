"""Run the orchestrator and SIGKILL it at one step boundary: the fault the crash tests inject.

usage: python tests/kill_at.py TARGET WHEN N -- ORCHESTRATOR-ARGUMENTS...

TARGET is `module.function`, a real step or file move of the cycle. WHEN is
  before   die as its Nth call starts;
  after    die as its Nth call returns;
  linked   (for move_without_overwrite) die on its Nth move once the file has its new name
           and still has its old one: the instant between the link and the unlink.
  sigterm  receive SIGTERM as its Nth call starts, and fail on the signal's way out as a
           library's cleanup does (pyspark's, once the signal cancelled its job, raises a
           Py4JError of its own): an Exception raised while the signal unwinds.
Nothing is replaced but the moment of death: the cycle does its real work up to it.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    target, when, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    arguments = sys.argv[sys.argv.index("--") + 1:]
    module_name, function_name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    original = getattr(module, function_name)
    calls = 0

    def dying(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == nth and when == "before":
            die()
        if calls == nth and when == "sigterm":
            try:
                os.kill(os.getpid(), signal.SIGTERM)  # the cycle's handler raises here
                time.sleep(60)
            finally:
                raise RuntimeError("a library's cleanup failed as the signal unwound")
        if calls == nth and when == "linked":
            os.link(args[0], args[1])
            die()
        result = original(*args, **kwargs)
        if calls == nth and when == "after":
            die()
        return result

    setattr(module, function_name, dying)
    import pipeline_orchestrator

    return pipeline_orchestrator.main(arguments)


if __name__ == "__main__":
    sys.exit(main())
