"""Every run ends in one line on stderr, the right exit code and, with --json, one object."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

import pipeline_orchestrator
from tests.conftest import (
    PROJECT_DIR,
    changed_concept_files,
    cycle,
    cycle_killed_at,
    machine_files,
    new_concept_files,
    promote_new_concept,
    run_script,
    script_environment,
    snapshot,
    start_cycle_waiting_in_training,
    write_csvs,
)


def _one_object(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


@pytest.mark.parametrize("script, argv, code", [
    ("pipeline_orchestrator.py", ["--min-new-files", "many"], 2),
    ("pipeline_orchestrator.py", ["--no-such-flag"], 2),
    ("registry_tool.py", ["status", "--tracking-uri", "sqlite:////nonexistent/mlflow.db"], 1),
    ("register_first_model.py", ["--model-file", "/nonexistent/model.pkl"], 2),
])
def test_json_failure_is_one_object_with_outcome_code_and_reason(script, argv, code):
    done = run_script(script, [*argv, "--json"])

    assert done.returncode == code
    failure = _one_object(done.stdout)
    last_line = done.stderr.strip().splitlines()[-1]
    assert failure == {"outcome": "failed", "exit_code": code,
                       "reason": last_line.split(": error: ", 1)[1]}
    assert "Fix:" in failure["reason"]


def test_json_from_the_environment_covers_failures_too(workspace):
    done = run_script("pipeline_orchestrator.py", [*workspace.flags, "--min-new-files", "x"],
                      env_extra={"RETRAIN_JSON": "1"})

    assert done.returncode == 2 and _one_object(done.stdout)["outcome"] == "failed"


@pytest.mark.parametrize("sent, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_training_ends_in_one_line_and_the_rerun_converges(production, sent,
                                                                        code):
    write_csvs(production.new_dir, "batch", changed_concept_files(10, seed=81))
    every_file = sorted([*snapshot(production.used_dir).values(),
                         *snapshot(production.new_dir).values()])
    process, go = start_cycle_waiting_in_training(production)

    process.send_signal(sent)
    # A scheduler that insists, until the process is gone: neither the unwinding nor the
    # moments after its last line may be cut short, or the exit code is the signal's.
    while process.poll() is None:
        process.send_signal(sent)
        time.sleep(0.005)
    out, err = process.communicate(timeout=120)

    assert process.returncode == code, err[-3000:]
    last_line = err.strip().splitlines()[-1]
    assert f"interrupted by {sent.name}" in last_line and "Fix: nothing is lost" in last_line
    assert "Traceback" not in err
    assert _one_object(out) == {"outcome": "failed", "exit_code": code,
                                "reason": last_line.split(": error: ", 1)[1]}
    client = production.client()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "RUNNING" not in {run.info.status for run in runs}

    go.write_text("go")
    rerun = run_script("pipeline_orchestrator.py",
                       [*production.flags, "--min-new-files", "5", "--json"])

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _one_object(rerun.stdout)["outcome"] == "promoted"
    assert snapshot(production.new_dir) == {}
    assert sorted(snapshot(production.used_dir).values()) == every_file


def test_help_with_json_is_one_object_too():
    done = run_script("pipeline_orchestrator.py", ["--help", "--json"])

    assert done.returncode == 0
    shown = _one_object(done.stdout)
    assert shown["outcome"] == "help" and "--min-new-files" in shown["help"]


def test_a_summary_that_cannot_be_written_ends_in_one_line(production):
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, str(PROJECT_DIR / "registry_tool.py"),
                               "versions", "--json", "--tracking-uri", production.tracking_uri],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
                              env=script_environment({}))

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "summary could not be written to stdout (No space left on device)" in \
        done.stderr.strip().splitlines()[-1]


def test_a_library_exiting_mid_cycle_is_a_failure_and_archives_nothing(production, tmp_path,
                                                                      capsys):
    # Such a library exists: pyspark's connect utilities call sys.exit(0) when they take the
    # process for a doctest run. The run did not complete; exit 0 would say it had.
    domain = tmp_path / "domain.py"
    domain.write_text("import sys\n"
                      "from train_classification_model import error_metric\n"
                      "def train_model(features, labels):\n"
                      "    sys.exit(0)\n")
    write_csvs(production.new_dir, "batch", changed_concept_files(6, seed=7))
    before = snapshot(production.new_dir)

    code = pipeline_orchestrator.main([*production.flags, "--min-new-files", "5",
                                       "--domain-file", str(domain)])

    assert code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "a library called sys.exit(0) during the run" in line
    assert snapshot(production.new_dir) == before and production.alias_version() == "1"


@pytest.mark.parametrize("scored, nth", [
    # Monitoring: production on the new files, where a file it raises on is quarantined.
    ("production", 1),
    # The first cycle after version 2's promotion: production on the new files, then
    # version 1, which it replaced, on the same files (version 2's probation).
    ("the replaced version, on probation", 2),
    # The returning concept: production on the new files, the challenger on the held-out
    # ones, then version 1 as an earlier version.
    ("an earlier version", 3),
])
def test_sigterm_while_a_version_is_scored_ends_the_cycle_whatever_fails_after(
        production, capsys, scored, nth):
    """A version that cannot predict is no candidate, and a file production cannot predict
    on is quarantined, and the cycle goes on without them; but a scoring that a signal cut,
    with a library's cleanup failing on the way out, did not fail: the cycle must end, not
    carry on with the signal spent."""
    if scored == "production":
        write_csvs(production.new_dir, "changed", new_concept_files(15, seed=51))
    elif scored == "an earlier version":
        promote_new_concept(production, capsys)  # its probation passed
        write_csvs(production.new_dir, "old_again", machine_files(10, drift=0.0, seed=53))
    else:
        write_csvs(production.new_dir, "changed", new_concept_files(15, seed=51))
        code, summary = cycle(production, capsys)
        assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
        write_csvs(production.new_dir, "changed_again", new_concept_files(10, seed=52))
    before = snapshot(production.new_dir)

    finished = cycle_killed_at(production, "retraining.evaluation.predict_files", "sigterm",
                               nth, "--training-windows", "all", "--json")

    assert finished.returncode == 128 + signal.SIGTERM, finished.stderr[-3000:]
    last_line = finished.stderr.strip().splitlines()[-1]
    assert "interrupted by SIGTERM" in last_line, last_line
    assert "cannot predict" not in finished.stderr
    assert snapshot(production.new_dir) == before
    assert production.alias_version() == ("1" if scored == "production" else "2")
