"""The nightly cycle as an Airflow DAG: one task, retried when the cycle says "try later".

Put this folder in Airflow's dags_folder (or copy the file and set RETRAINING_PROJECT). Exit
75 (the store or a lock busy or unreachable) raises an error Airflow retries; any other
failure (1: needs a person, 2: a bad setting) fails the task at once, with the cycle's own
line. The cycle's JSON summary is the task's return value, so it is the XCom
`return_value`.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException

# cycle_task.py lives one folder up, in the project's integrations/.
sys.path.insert(0, str(Path(os.environ.get("RETRAINING_PROJECT")
                            or Path(__file__).resolve().parents[2]) / "integrations"))
from cycle_task import run_cycle  # noqa: E402


@dag(dag_id="retraining_cycle", schedule=os.environ.get("RETRAINING_SCHEDULE", "15 2 * * *"),
     start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,
     default_args={"retries": int(os.environ.get("RETRAINING_RETRIES", "3")),
                   "retry_delay": timedelta(seconds=float(
                       os.environ.get("RETRAINING_RETRY_DELAY_SECONDS", "600")))},
     tags=["mlflow", "retraining"])
def retraining_cycle():
    @task(task_id="cycle")
    def cycle() -> dict:
        result = run_cycle()
        if result.should_retry:
            raise AirflowException(result.message())
        if result.failed:
            raise AirflowFailException(result.message())
        return result.summary

    cycle()


retraining_cycle()
