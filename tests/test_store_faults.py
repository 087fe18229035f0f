"""A store that is corrupt, old, locked, gone, full or hanging: one line with the fix."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import machine_files, run_script, snapshot, write_csvs
from tests.lock_at import locked_by_another_process


def _batch(workspace):
    write_csvs(workspace.new_dir, "batch", machine_files(5, drift=1.0, seed=51))
    return snapshot(workspace.new_dir), snapshot(workspace.used_dir)


def _last_line(done) -> str:
    return done.stderr.strip().splitlines()[-1]


def test_store_that_is_not_a_database_needs_a_person(production):
    before = _batch(production)
    production.database.write_bytes(b"this is not what sqlite wrote\n" * 200)

    done = run_script("pipeline_orchestrator.py", [*production.flags, "--min-new-files", "5"])

    assert done.returncode == 1
    assert "cannot be used (file is not a database)" in _last_line(done)
    assert "restore the database from a backup" in _last_line(done)
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


def test_store_with_an_older_schema_names_the_upgrade_command(production):
    before = _batch(production)
    with sqlite3.connect(production.database) as database:
        # The first revision MLflow ever shipped: a store left behind by an old version.
        database.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")

    done = run_script("pipeline_orchestrator.py", [*production.flags, "--min-new-files", "5"])

    assert done.returncode == 1
    assert f"mlflow db upgrade {production.tracking_uri}" in _last_line(done)
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Far below what MLflow's own retries take (about 4 minutes refused, 20 hanging), and enough
# above the budget for a loaded 2-core machine to start Python and import MLflow.
BUDGET = 10


def _timed_cycle(workspace, uri):
    started = time.monotonic()
    done = run_script("pipeline_orchestrator.py",
                      [*workspace.flags, "--min-new-files", "5", "--tracking-uri", uri,
                       "--store-timeout", str(BUDGET)])
    return done, time.monotonic() - started


def test_server_that_accepts_but_never_answers_gives_up_within_the_store_timeout(production):
    before = _batch(production)
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept_and_hang():
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept_and_hang, daemon=True).start()
    uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        done, seconds = _timed_cycle(production, uri)
    finally:
        listener.close()
        for connection in accepted:
            connection.close()

    assert accepted, "the cycle never reached the server"
    assert done.returncode == 75, done.stderr[-2000:]
    assert f"cannot reach the MLflow tracking server at {uri}" in _last_line(done)
    assert "start the tracking server" in _last_line(done)
    assert seconds < 3 * BUDGET, f"took {seconds:.0f} s on a budget of {BUDGET} s"
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


def test_port_where_nothing_listens_gives_up_within_the_store_timeout(production):
    before = _batch(production)
    uri = f"http://127.0.0.1:{_free_port()}"

    done, seconds = _timed_cycle(production, uri)

    assert done.returncode == 75, done.stderr[-2000:]
    assert f"cannot reach the MLflow tracking server at {uri}" in _last_line(done)
    assert "ConnectionError" in _last_line(done)
    assert seconds < 3 * BUDGET, f"took {seconds:.0f} s on a budget of {BUDGET} s"
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


def test_sqlite_store_locked_at_the_start_is_temporary_and_names_the_lock(production):
    before = _batch(production)

    with locked_by_another_process(production.database):
        done = run_script("pipeline_orchestrator.py",
                          [*production.flags, "--min-new-files", "5"])

    assert done.returncode == 75, done.stderr[-2000:]
    last = _last_line(done)
    assert f"the SQLite store at {production.database} is locked by another process" in last
    assert "cron will try again" in last and "start the tracking server" not in last
    assert "SELECT" not in last
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


def test_sqlite_store_locked_mid_cycle_is_temporary_and_names_the_lock(production):
    before = _batch(production)

    # Locked once monitoring has logged its run: the next store call is the retrain step's.
    done = run_script("tests/lock_at.py", ["pipeline_orchestrator.monitor",
                                           str(production.database), "--",
                                           *production.flags, "--min-new-files", "5"])

    assert done.returncode == 75, done.stderr[-2000:]
    last = _last_line(done)
    assert last.startswith("pipeline_orchestrator.py: error: the SQLite store at "
                           f"{production.database} is locked by another process"), last
    assert "cron will try again" in last and "start the tracking server" not in last
    assert "SELECT" not in last and len(last) < 400
    assert "ModelMonitoring" in {run.info.run_name for run in production.client().search_runs(
        [production.client().get_experiment_by_name("classifier-retraining").experiment_id])}
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


def test_deleted_store_is_not_created_again_by_a_cycle(production):
    before = _batch(production)
    production.database.unlink()

    done = run_script("pipeline_orchestrator.py", [*production.flags, "--min-new-files", "5"])

    assert done.returncode == 1, done.stderr[-2000:]
    assert _last_line(done) == (
        f"pipeline_orchestrator.py: error: no MLflow store at {production.database}. "
        "Fix: restore it from a backup, or check --tracking-uri; register_first_model.py "
        "starts a new store only for a new project")
    assert not production.database.exists()
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


def test_deleted_store_does_not_matter_to_a_cycle_that_is_not_triggered(production):
    production.database.unlink()

    done = run_script("pipeline_orchestrator.py", [*production.flags, "--min-new-files", "5"])

    assert done.returncode == 0, done.stderr[-2000:]
    assert not production.database.exists()


def test_deleted_production_artifacts_name_the_version_and_the_folder(production):
    before = _batch(production)
    client = production.client()
    source = client.get_model_version("classifier", "1").source  # models:/m-<id>
    folder = Path(client.get_logged_model(source.split("/")[-1]).artifact_location
                  .removeprefix("file://"))
    shutil.rmtree(folder)

    done = run_script("pipeline_orchestrator.py", [*production.flags, "--min-new-files", "5"])

    assert done.returncode == 1, done.stderr[-2000:]
    last = _last_line(done)
    assert "the files of 'classifier' version 1 are missing" in last
    assert str(folder) in last and "restore that folder from a backup" in last
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


def test_deleted_experiment_names_it_and_the_command_that_restores_it(production):
    before = _batch(production)
    client = production.client()
    experiment_id = client.get_experiment_by_name("classifier-retraining").experiment_id
    client.delete_experiment(experiment_id)

    done = run_script("pipeline_orchestrator.py", [*production.flags, "--min-new-files", "5"])

    assert done.returncode == 1, done.stderr[-2000:]
    last = _last_line(done)
    assert f"experiment 'classifier-retraining' (id {experiment_id}) is deleted" in last
    command = (f"mlflow experiments restore --experiment-id {experiment_id}")
    assert command in last and "another --experiment" in last
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before
    # The fix it names works: after it, the same cycle runs.
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    restored = subprocess.run([mlflow, *command.split()[1:]], capture_output=True, text=True,
                              env={**os.environ, "MLFLOW_TRACKING_URI": production.tracking_uri})
    assert restored.returncode == 0, restored.stderr
    again = run_script("pipeline_orchestrator.py", [*production.flags, "--min-new-files", "5"])
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.fixture
def small_filesystem(tmp_path):
    """A 4 MiB tmpfs mounted in the test's folder; skipped where mounting is not allowed."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def _fill(folder: Path) -> None:
    """Write into `folder` until its filesystem refuses: the disk is then really full."""
    with open(folder / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_full_disk_under_the_store_names_where_and_needs_a_person(production, small_filesystem):
    before = _batch(production)
    store = small_filesystem / "store"
    shutil.copytree(production.database.parent, store)
    # Artifacts of the experiment stay where it was created; only the database moves here.
    uri = "sqlite:///" + str(store / "mlflow.db")
    _fill(small_filesystem)

    done = run_script("pipeline_orchestrator.py",
                      [*production.flags, "--min-new-files", "5", "--tracking-uri", uri])

    assert done.returncode == 1, done.stderr[-2000:]
    last = _last_line(done)
    assert f"no space left on the filesystem holding {store}" in last, last
    assert f"df {store}" in last
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


def test_quarantine_on_another_filesystem_is_refused_before_any_move(production, tmp_path):
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to put the quarantine folder on")
    before = _batch(production)
    (production.new_dir / "empty.csv").write_bytes(b"")
    quarantine = other / f"quarantine-{os.getpid()}-{tmp_path.name}"

    done = run_script("pipeline_orchestrator.py", [*production.flags, "--min-new-files", "5",
                                                   "--quarantine-dir", str(quarantine)])

    assert done.returncode == 2
    assert f"{quarantine} is on another filesystem" in _last_line(done)
    assert snapshot(production.used_dir) == before[1] and not quarantine.exists()
    assert snapshot(production.new_dir) == {**before[0], "empty.csv": b""}
