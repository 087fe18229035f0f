"""One nightly cycle as a scheduler's task: run it, read its JSON summary, classify its end.

Standard library only: Airflow and Prefect import this from their own environments, and the
cycle runs as a process of the project's, so neither scheduler needs MLflow or
scikit-learn installed beside it.

    RETRAINING_PROJECT  the project folder (default: the folder above this file's)
    RETRAINING_PYTHON   the project's python (default: <project>/.venv/bin/python)

Other settings reach the cycle as its usual RETRAIN_* and MLFLOW_* variables, or as
`extra_args`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

# The cycle's exit codes (README: What it prints, and exit codes).
EXIT_OK = 0
EXIT_TRY_LATER = 75  # the store or a lock is busy or unreachable: the same run may succeed later


@dataclasses.dataclass(frozen=True)
class CycleResult:
    exit_code: int
    summary: dict[str, Any]  # the cycle's one JSON object: outcome, reason, versions, ...
    stderr_tail: str

    @property
    def should_retry(self) -> bool:
        return self.exit_code == EXIT_TRY_LATER

    @property
    def failed(self) -> bool:
        return self.exit_code != EXIT_OK

    def message(self) -> str:
        """The cycle's own one line: its reason, with the exit code."""
        return f"the cycle ended with exit {self.exit_code}: {self.summary['reason']}"


def project_dir(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("RETRAINING_PROJECT") or Path(__file__).resolve().parent.parent)


def run_cycle(extra_args: Sequence[str] = (), environ: Mapping[str, str] | None = None,
              timeout: float | None = None) -> CycleResult:
    """Run pipeline_orchestrator.py --json once and return how it ended.

    A cycle killed by `timeout` is safe to run again (every step survives a kill), so the
    timeout is the scheduler's to set; by default there is none.
    """
    environ = dict(os.environ if environ is None else environ)
    project = project_dir(environ)
    python = environ.get("RETRAINING_PYTHON") or str(project / ".venv" / "bin" / "python")
    done = subprocess.run([python, str(project / "pipeline_orchestrator.py"), "--json",
                           *extra_args], cwd=project, env=environ, capture_output=True,
                          text=True, timeout=timeout)
    lines = done.stdout.strip().splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        summary = {}
    if "reason" not in summary:  # no JSON at all (a crash before the edge): its last line
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        summary = {"outcome": "failed", "exit_code": done.returncode, "reason": tail[0]}
    return CycleResult(done.returncode, summary, done.stderr[-4000:])
