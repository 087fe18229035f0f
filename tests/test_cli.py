"""The edge: how --store-timeout becomes MLflow's HTTP settings, and MLflow's telemetry off."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from retraining.cli import PROJECT_DIR, backoff_seconds, http_request_variables, mlflow_variables
from retraining.config import build_settings
from tests.conftest import machine_files, write_csvs


def worst_case_seconds(variables: dict[str, str]) -> float:
    """One store call at its slowest under these variables, as urllib3 and requests spend it.

    Every attempt waits the timeout to connect and again for the answer; between attempts
    urllib3 sleeps factor * 2**(n-1) after the nth consecutive failure (n >= 2), plus up to
    the jitter; no sleep after the last attempt.
    """
    timeout = int(variables["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    retries = int(variables["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor = int(variables["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    jitter = float(variables["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"])
    sleeps = [min(120, factor * 2 ** (failure - 1) + jitter) for failure in range(2, retries + 1)]
    return (retries + 1) * 2 * timeout + sum(sleeps)


@pytest.mark.parametrize("budget", [2, 3, 5, 9.5, 10, 19, 20, 30, 45, 60, 119, 120, 600, 3600])
def test_one_store_call_at_its_slowest_fits_the_store_timeout(budget):
    variables = http_request_variables(budget)

    assert worst_case_seconds(variables) <= budget
    assert int(variables["MLFLOW_HTTP_REQUEST_TIMEOUT"]) >= 1
    # A server's Retry-After could make urllib3 sleep as long as the server likes.
    assert variables["MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER"] == "false"


def test_a_generous_store_timeout_keeps_retries_for_a_passing_fault():
    variables = http_request_variables(120)

    assert int(variables["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) == 3
    assert int(variables["MLFLOW_HTTP_REQUEST_TIMEOUT"]) >= 10


def test_backoff_matches_urllib3s_own_sleeps():
    from urllib3.util import Retry

    retry, slept = Retry(total=3, backoff_factor=1, backoff_jitter=0.0), 0.0
    for _ in range(3):  # three failures that are retried; the fourth raises
        retry = retry.increment(method="GET", url="/", error=ConnectionError())
        slept += retry.get_backoff_time()

    assert slept == backoff_seconds(3, 1)


def _settings(argv=(), environ=None):
    import argparse

    from retraining.config import add_options

    parser = argparse.ArgumentParser()
    add_options(parser, ["store_timeout"])
    return build_settings(PROJECT_DIR, parser.parse_args(list(argv)), environ or {})


def test_store_timeout_comes_from_the_flag_or_the_environment():
    assert _settings().store_timeout == 120
    assert _settings(environ={"RETRAIN_STORE_TIMEOUT": "30"}).store_timeout == 30
    assert _settings(["--store-timeout", "15"], {"RETRAIN_STORE_TIMEOUT": "30"}).store_timeout == 15


def test_a_store_timeout_under_two_seconds_is_refused():
    from retraining.errors import UsageError

    with pytest.raises(UsageError, match="--store-timeout='1' must be a number of seconds"):
        _settings(["--store-timeout", "1"])


def test_mlflow_variables_the_user_set_win():
    environ = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7", "MLFLOW_DISABLE_TELEMETRY": "false"}

    variables = mlflow_variables(_settings(), environ)

    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in variables
    assert "MLFLOW_DISABLE_TELEMETRY" not in variables
    assert variables["MLFLOW_HTTP_REQUEST_TIMEOUT"] == http_request_variables(120)[
        "MLFLOW_HTTP_REQUEST_TIMEOUT"]


# Runs a real cycle in this process, as the entry point does, then reports what MLflow's
# telemetry became when the cycle imported it.
# Offline, a client that was started drops itself once it fails to fetch its config, but
# stays alive, held by the exit handler it registered: so the objects are counted too.
_PROBE = """
import gc, json, sys, threading
sys.path.insert(0, sys.argv[1])
import pipeline_orchestrator
code = pipeline_orchestrator.main(sys.argv[2:])
from mlflow.telemetry.client import TelemetryClient, get_telemetry_client
print(json.dumps({"code": code, "telemetry_client": repr(get_telemetry_client()),
                  "clients": sum(isinstance(o, TelemetryClient) for o in gc.get_objects()),
                  "threads": sorted(thread.name for thread in threading.enumerate())}))
"""


def test_a_cycle_starts_no_mlflow_telemetry(production):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=61))
    # What cron gives a job: no CI or pytest variables, which would turn telemetry off anyway.
    cron_like = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
                 "OMP_NUM_THREADS": "1"}
    control = subprocess.run(
        [sys.executable, "-c", "import mlflow.telemetry.client as t; "
                               "print(t.get_telemetry_client() is not None)"],
        env=cron_like, capture_output=True, text=True, timeout=120)
    assert control.stdout.strip() == "True", "telemetry would be off here anyway"

    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(PROJECT_DIR), *production.flags,
         "--min-new-files", "5", "--dry-run"],
        env=cron_like, capture_output=True, text=True, timeout=600)

    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, probe.stderr[-2000:]
    assert report["telemetry_client"] == "None" and report["clients"] == 0
    assert not [name for name in report["threads"] if "elemetry" in name]
