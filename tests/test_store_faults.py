"""A store that is corrupt, too old or hanging: one line naming cause and fix, no file moved."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from pathlib import Path

from tests.conftest import machine_files, run_script, snapshot, write_csvs


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


def test_server_that_accepts_but_never_answers_is_temporary(production):
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
        done = run_script("pipeline_orchestrator.py",
                          [*production.flags, "--min-new-files", "5", "--tracking-uri", uri],
                          env_extra={"MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
                                     "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    finally:
        listener.close()
        for connection in accepted:
            connection.close()

    assert accepted, "the cycle never reached the server"
    assert done.returncode == 75, done.stderr[-2000:]
    assert f"cannot reach the MLflow store at {uri}" in _last_line(done)
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


def test_quarantine_on_another_filesystem_is_refused_before_any_move(production, tmp_path):
    import pytest

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
