"""Run the Prefect flow once under Prefect's test harness, in Prefect's own environment, and
print how it ended as one JSON object: the flow's state, its result or error, and how many
times the task ran. Used by tests/test_schedulers.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integrations" / "prefect"))

from prefect import get_client  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402
from retraining_flow import retraining_cycle  # noqa: E402


def main() -> None:
    with prefect_test_harness():
        state = retraining_cycle(return_state=True)
        result = state.result(raise_on_failure=False)
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        print(json.dumps({"state": state.type.value,
                          "result": result if isinstance(result, dict) else None,
                          "error": None if isinstance(result, dict) else str(result),
                          "task_runs": [run.run_count for run in runs]}))


if __name__ == "__main__":
    main()
