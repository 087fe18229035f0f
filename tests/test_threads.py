"""On a shared machine the fits get the cores other processes leave free, with no setting;
a person's own choice (--threads, OMP_NUM_THREADS) is obeyed. Each a real cycle, as its own
process, beside real CPU-bound processes; the threads are what OpenMP reports inside the fit."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from retraining.threads import usable_cores
from tests.conftest import PROJECT_DIR, machine_files, script_environment, write_csvs

# The default domain, recording what the OpenMP pools hold at each fit.
COUNTING_DOMAIN = """
import json, os
from threadpoolctl import threadpool_info
from train_classification_model import ERROR_METRIC_NAME, error_metric
from train_classification_model import train_model as _train_model

def train_model(features, labels, random_state=0, sample_weight=None):
    pools = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp"]
    with open(os.environ["THREADS_SEEN"], "a") as seen:
        seen.write(json.dumps(pools) + "\\n")
    return _train_model(features, labels, random_state, sample_weight)
"""


@pytest.fixture
def counting(production, tmp_path):
    """A batch that retrains, and a domain that writes down its fits' OpenMP threads."""
    write_csvs(production.new_dir, "drifted", machine_files(10, drift=1.0, seed=6))
    domain = production.root / "counting_domain.py"
    domain.write_text(COUNTING_DOMAIN)
    return production, domain, tmp_path / "threads_seen.jsonl"


def _cycle(workspace, domain, seen, env: dict, *extra: str) -> list[list[int]]:
    environment = script_environment({"THREADS_SEEN": str(seen)} | env)
    if "OMP_NUM_THREADS" not in env:
        environment.pop("OMP_NUM_THREADS", None)  # as cron starts it: nothing set
    done = subprocess.run([sys.executable, str(PROJECT_DIR / "pipeline_orchestrator.py"),
                           *workspace.flags,
                           "--min-new-files", "5", "--domain-file", str(domain), "--json",
                           *extra],
                          cwd=workspace.root.parent, env=environment, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["outcome"] in ("promoted", "rejected")
    fits = [json.loads(line) for line in seen.read_text().splitlines()]
    assert fits and all(pools for pools in fits), fits  # scikit-learn's OpenMP is loaded
    return fits


def test_beside_busy_processes_the_fits_take_one_thread_with_no_setting(counting):
    workspace, domain, seen = counting
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(usable_cores())]
    try:
        time.sleep(1.0)
        fits = _cycle(workspace, domain, seen, {})
    finally:
        for process in spinning:
            process.kill()
            process.wait()
    assert all(pools == [1] * len(pools) for pools in fits), fits


# Counts above the cores: auto could never give them, so only obeying the person can.
ABOVE = usable_cores() + 1


@pytest.mark.parametrize("env, extra, expected", [
    ({"OMP_NUM_THREADS": str(ABOVE)}, (), ABOVE),  # the person's environment: left to OpenMP
    ({}, ("--threads", str(ABOVE + 1)), ABOVE + 1),
])
def test_a_persons_choice_of_threads_is_obeyed(counting, env, extra, expected):
    workspace, domain, seen = counting
    fits = _cycle(workspace, domain, seen, env, *extra)
    assert all(pools == [expected] * len(pools) for pools in fits), fits
