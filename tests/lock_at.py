"""Run the orchestrator and lock its SQLite store from another process at one step boundary.

usage: python tests/lock_at.py TARGET DATABASE -- ORCHESTRATOR-ARGUMENTS...

TARGET is `module.function`, a real step of the cycle: as its first call returns, another
process takes `BEGIN EXCLUSIVE` on DATABASE and holds it until this process ends. Nothing
is replaced but the moment of the fault: the cycle does its real work up to it and after.
"""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Holds the lock until its stdin closes, which happens when the process that started it ends.
_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def locked_by_another_process(database: Path):
    """Hold an exclusive lock on `database` from a separate process for the block."""
    holder = start_holder(database)
    try:
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def start_holder(database: Path) -> subprocess.Popen:
    """A process that holds `BEGIN EXCLUSIVE` on `database` once this returns."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(database)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if holder.stdout.readline().strip() != "locked":
        raise RuntimeError(f"could not lock {database}")
    return holder


def main() -> int:
    target, database = sys.argv[1], Path(sys.argv[2])
    arguments = sys.argv[sys.argv.index("--") + 1:]
    module_name, function_name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    original = getattr(module, function_name)
    holders = []

    def then_lock(*args, **kwargs):
        result = original(*args, **kwargs)
        if not holders:
            holders.append(start_holder(database))
        return result

    setattr(module, function_name, then_lock)
    import pipeline_orchestrator

    return pipeline_orchestrator.main(arguments)


if __name__ == "__main__":
    sys.exit(main())
