"""A team's shared setup: `mlflow server` on a real PostgreSQL, started by the project's own
script, with a promoted cycle and a person's rollback through it."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import machine_files, run_script, wait_until_answering, write_csvs
from tests.test_server import free_port, start_script

pytestmark = pytest.mark.server


def _postgres_bin() -> Path | None:
    """Debian's PostgreSQL binaries (not on PATH there), else the ones on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _as_cluster_owner(argv: list[str], owner: str | None, **kwargs):
    """PostgreSQL refuses to run as root: under root, run as the package's `postgres` user."""
    command = ["runuser", "-u", owner, "--", *argv] if owner else argv
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120,
                          **kwargs)


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1: its URI for mlflow, and psql for checks."""
    binaries = _postgres_bin()
    missing = ("PostgreSQL's server binaries are not installed (Debian: postgresql)"
               if binaries is None else
               "the PostgreSQL driver is not installed: pip install -r requirements-server.txt"
               if importlib.util.find_spec("psycopg") is None else None)
    if missing:
        if os.environ.get("TESTS_REQUIRE_POSTGRES"):
            pytest.fail(missing)
        pytest.skip(missing)
    owner = "postgres" if os.geteuid() == 0 else None
    # Not under pytest's tmp_path: its folders are private to root, and the cluster's owner
    # must reach its own data folder.
    root = Path(tempfile.mkdtemp(prefix="retraining-pg-"))
    if owner:
        account = pwd.getpwnam(owner)
        os.chown(root, account.pw_uid, account.pw_gid)
    data, port = root / "data", free_port()
    _as_cluster_owner([str(binaries / "initdb"), "-D", str(data), "-U", "mlflow",
                       "--auth=trust", "-E", "UTF8"], owner)
    _as_cluster_owner([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
                       "-w", "-o", f"-h 127.0.0.1 -p {port} -k {root}", "start"], owner)
    try:
        _as_cluster_owner([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                           "-U", "mlflow", "mlflow"], owner)

        def psql(query: str) -> str:
            return _as_cluster_owner(["psql", "-h", "127.0.0.1", "-p", str(port), "-U",
                                      "mlflow", "-d", "mlflow", "-At", "-c", query],
                                     owner).stdout.strip()

        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow", psql
    finally:
        _as_cluster_owner([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate",
                           "stop"], owner)
        shutil.rmtree(root, ignore_errors=True)


def test_a_cycle_and_a_rollback_through_a_server_on_postgresql(workspace, postgres):
    uri, psql = postgres
    artifacts = workspace.root / "shared_artifacts"
    process, url = start_script(workspace, {"MLFLOW_BACKEND_STORE_URI": uri,
                                            "MLFLOW_DEFAULT_ARTIFACT_ROOT": str(artifacts)})
    try:
        # Creating MLflow's tables on a new database takes a while.
        wait_until_answering(process, url + "/health", 180)
        # The password of a store URI is not on any command line that `ps` shows.
        commands = subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                  text=True).stdout
        assert uri not in commands
        write_csvs(workspace.used_dir, "history", machine_files(6, drift=0.0, seed=1))
        write_csvs(workspace.new_dir, "batch", machine_files(6, drift=1.0, seed=2))
        model = workspace.model_dir / "initial.pkl"
        assert run_script("train_classification_model.py",
                          [str(workspace.used_dir), "--output", str(model)]).returncode == 0
        registered = run_script("register_first_model.py",
                                ["--used-dir", str(workspace.used_dir), "--model-file",
                                 str(model), "--tracking-uri", url])
        assert registered.returncode == 0, registered.stderr[-2000:]

        done = run_script("pipeline_orchestrator.py",
                          [*workspace.flags[:-2], "--tracking-uri", url, "--min-new-files", "5",
                           "--json"])

        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads(done.stdout)
        assert summary["outcome"] == "promoted", summary["reason"]
        # The database itself holds the alias and the runs, and the artifacts went where the
        # setting sent them.
        assert psql("select version from registered_model_aliases "
                    "where alias = 'production'") == "2"
        assert psql("select count(*) from runs where status = 'FINISHED'") == "3"
        assert list(artifacts.rglob("data_manifest.json"))

        rolled = run_script("registry_tool.py", ["rollback", "--reason", "sensors recalibrated",
                                                 "--by", "ann", "--tracking-uri", url, "--json"])

        assert rolled.returncode == 0, rolled.stderr[-2000:]
        assert psql("select version from registered_model_aliases "
                    "where alias = 'production'") == "1"
        # And the next cycle, through the same server, keeps the person's decision.
        write_csvs(workspace.new_dir, "later", machine_files(5, drift=1.0, seed=3))
        again = run_script("pipeline_orchestrator.py",
                           [*workspace.flags[:-2], "--tracking-uri", url, "--min-new-files",
                            "5", "--json"])
        assert again.returncode == 0, again.stderr[-2000:]
        after = json.loads(again.stdout)
        assert after["production_version_before"] == "1"
        assert psql("select version from registered_model_aliases "
                    "where alias = 'production'") != "2", after["reason"]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            process.wait(timeout=30)


def test_a_postgresql_store_without_its_driver_is_one_line_with_the_fix(workspace, tmp_path):
    # A python beside the mlflow command that has no psycopg2: a bare virtual environment.
    bare = tmp_path / "bare"
    subprocess.run([shutil.which("python3") or "python3", "-m", "venv", "--without-pip",
                    str(bare)], check=True, timeout=120)
    fake_mlflow = bare / "bin" / "mlflow"
    fake_mlflow.write_text("#!/bin/sh\necho should not start >&2\nexit 9\n")
    fake_mlflow.chmod(0o755)

    process, _ = start_script(workspace, {
        "MLFLOW": str(fake_mlflow),
        "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:secret@127.0.0.1:1/mlflow"})
    _, err = process.communicate(timeout=60)

    assert process.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "cannot import its driver psycopg. Fix: " in lines[0]
    assert "requirements-server.txt" in lines[0] and "secret" not in lines[0]
