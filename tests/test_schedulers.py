"""The cycle as an Airflow task and as a Prefect task, each run for real in its own
environment: a promotion's summary comes back as the task's result, exit 75 is retried,
and exit 1 fails at once."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_DIR, changed_concept_files, script_environment, write_csvs

AIRFLOW = Path(os.environ.get("AIRFLOW_VENV", PROJECT_DIR / ".venv-airflow")) / "bin"
PREFECT = Path(os.environ.get("PREFECT_VENV", PROJECT_DIR / ".venv-prefect")) / "bin"


def _needs(folder: Path, what: str, requirements: str):
    if (folder / "python").exists():
        return
    message = (f"{what} is not installed in {folder.parent}: python3 -m venv "
               f"{folder.parent} && {folder}/python -m pip install -r {requirements}")
    if os.environ.get("TESTS_REQUIRE_SCHEDULERS"):
        pytest.fail(message)
    pytest.skip(message)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the probe is


def _cycle_environment(workspace, **extra: str) -> dict[str, str]:
    """The cycle's settings as the variables a scheduler's deployment would set."""
    return script_environment({
        "RETRAINING_PROJECT": str(PROJECT_DIR), "RETRAINING_PYTHON": sys.executable,
        "RETRAIN_NEW_DIR": str(workspace.new_dir), "RETRAIN_USED_DIR": str(workspace.used_dir),
        "RETRAIN_SETTLE_SECONDS": "0", "RETRAIN_MIN_NEW_FILES": "5",
        "MLFLOW_TRACKING_URI": workspace.tracking_uri,
        "RETRAINING_RETRIES": "1", "RETRAINING_RETRY_DELAY_SECONDS": "0", **extra})


def _unreachable(workspace) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}",
            "RETRAIN_STORE_TIMEOUT": "2"}


def _no_store(workspace) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": "sqlite:///" + str(workspace.root / "missing" / "x.db"),
            "RETRAINING_RETRIES": "3"}


# --- Airflow ------------------------------------------------------------------------------

def _airflow_dag_test(workspace, env: dict[str, str]):
    _needs(AIRFLOW, "Airflow", "requirements-airflow.txt")
    home = workspace.root / "airflow_home"
    env = env | {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                 "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_DIR / "integrations" / "airflow")}
    migrated = subprocess.run([str(AIRFLOW / "airflow"), "db", "migrate"], env=env,
                              capture_output=True, text=True, timeout=600)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    done = subprocess.run([str(AIRFLOW / "airflow"), "dags", "test", "retraining_cycle"],
                          env=env, capture_output=True, text=True, timeout=900)
    with sqlite3.connect(home / "airflow.db") as db:
        tries = db.execute("select state, try_number from task_instance "
                           "where dag_id = 'retraining_cycle'").fetchall()
        pushed = [json.loads(value) for (value,) in db.execute(
            "select value from xcom where dag_id = 'retraining_cycle' "
            "and key = 'return_value'")]
    return done, tries, pushed


def test_airflow_task_returns_the_promotion_summary_as_its_xcom(production):
    write_csvs(production.new_dir, "batch", changed_concept_files(6, seed=95))

    done, tries, pushed = _airflow_dag_test(production, _cycle_environment(production))

    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert tries == [("success", 1)]
    [summary] = pushed
    assert summary["outcome"] == "promoted" and summary["production_version_after"] == "2"
    assert production.alias_version() == "2"


def test_airflow_retries_exit_75_and_fails_exit_1_at_once(production):
    write_csvs(production.new_dir, "batch", changed_concept_files(6, seed=96))

    done, tries, _ = _airflow_dag_test(
        production, _cycle_environment(production, **_unreachable(production)))

    assert done.returncode != 0
    assert tries == [("failed", 2)]  # one retry, as RETRAINING_RETRIES says
    assert "the cycle ended with exit 75: cannot reach the MLflow tracking server" in \
        done.stdout + done.stderr

    (production.root / "airflow_home" / "airflow.db").unlink()
    done, tries, _ = _airflow_dag_test(
        production, _cycle_environment(production, **_no_store(production)))

    assert done.returncode != 0
    assert tries == [("failed", 1)]  # retries 3, none used: a person must act
    assert "the cycle ended with exit 1: " in done.stdout + done.stderr


# --- Prefect ------------------------------------------------------------------------------

def _prefect_run(workspace, env: dict[str, str]) -> dict:
    _needs(PREFECT, "Prefect", "requirements-prefect.txt")
    done = subprocess.run([str(PREFECT / "python"),
                           str(PROJECT_DIR / "tests" / "schedulers" / "run_prefect_flow.py")],
                          env=env | {"PREFECT_HOME": str(workspace.root / "prefect_home")},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_prefect_flow_returns_the_promotion_summary_as_its_result(production):
    write_csvs(production.new_dir, "batch", changed_concept_files(6, seed=97))

    ended = _prefect_run(production, _cycle_environment(production))

    assert ended["state"] == "COMPLETED", ended
    assert ended["result"]["outcome"] == "promoted" and ended["task_runs"] == [1]
    assert production.alias_version() == "2"


def test_prefect_retries_exit_75_and_fails_exit_1_at_once(production):
    write_csvs(production.new_dir, "batch", changed_concept_files(6, seed=98))

    ended = _prefect_run(production, _cycle_environment(production, **_unreachable(production)))

    assert ended["state"] == "FAILED" and ended["task_runs"] == [2], ended
    assert ended["error"].startswith("the cycle ended with exit 75: cannot reach the MLflow")

    ended = _prefect_run(production, _cycle_environment(production, **_no_store(production)))

    assert ended["state"] == "FAILED" and ended["task_runs"] == [1], ended
    assert ended["error"].startswith("the cycle ended with exit 1: ")
