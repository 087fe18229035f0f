"""The nightly cycle as a Prefect flow: one task, retried when the cycle says "try later".

    python integrations/prefect/retraining_flow.py             # one run now: its summary
    prefect deploy ... integrations/prefect/retraining_flow.py:retraining_cycle

Exit 75 (the store or a lock busy or unreachable) raises TryLater, which the task retries;
any other failure (1: needs a person, 2: a bad setting) ends the flow failed, with the
cycle's own line, without a retry. The cycle's JSON summary is the flow's result.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from prefect import flow, task

sys.path.insert(0, str(Path(os.environ.get("RETRAINING_PROJECT")
                            or Path(__file__).resolve().parents[2]) / "integrations"))
from cycle_task import CycleResult, run_cycle  # noqa: E402


class TryLater(RuntimeError):
    """Exit 75: the same cycle may succeed later."""


class CycleFailed(RuntimeError):
    """Any other failure: it needs a person, and retrying cannot help."""


def _retry_only_try_later(task, task_run, state) -> bool:
    return isinstance(state.result(raise_on_failure=False), TryLater)


@task(retries=int(os.environ.get("RETRAINING_RETRIES", "3")),
      retry_delay_seconds=float(os.environ.get("RETRAINING_RETRY_DELAY_SECONDS", "600")),
      retry_condition_fn=_retry_only_try_later)
def cycle(extra_args: tuple[str, ...] = ()) -> dict:
    result: CycleResult = run_cycle(extra_args)
    if result.should_retry:
        raise TryLater(result.message())
    if result.failed:
        raise CycleFailed(result.message())
    return result.summary


@flow(name="retraining-cycle")
def retraining_cycle(extra_args: tuple[str, ...] = ()) -> dict:
    return cycle(extra_args)


if __name__ == "__main__":
    import json

    print(json.dumps(retraining_cycle(), sort_keys=True))
