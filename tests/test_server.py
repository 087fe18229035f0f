"""A full cycle through a real `mlflow server` process on 127.0.0.1, as a shared setup runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from tests.conftest import (
    PROJECT_DIR,
    machine_files,
    run_script,
    snapshot,
    wait_until_answering,
    write_csvs,
)

pytestmark = pytest.mark.server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_script(workspace, env: dict[str, str], *args: str) -> tuple[subprocess.Popen, str]:
    """The project's own start script, from a copy of the project's layout, with `env`."""
    port = free_port()
    server_dir = workspace.root / "mlflow_server"
    server_dir.mkdir(exist_ok=True)
    script = server_dir / "start_server.sh"
    script.write_text((PROJECT_DIR / "mlflow_server" / "start_server.sh").read_text())
    script.chmod(0o755)
    venv_mlflow = os.path.join(os.path.dirname(os.sys.executable), "mlflow")
    process = subprocess.Popen([str(script), *args], env={**os.environ, "PORT": str(port),
                                                   "MLFLOW": venv_mlflow, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture
def server(workspace):
    """The start script on its default store, the embedded one in the project's layout."""
    process, url = start_script(workspace, {})
    wait_until_answering(process, url + "/health", 120)
    yield url, process
    if process.poll() is None:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def test_register_and_promote_through_a_tracking_server(workspace, server):
    server, _ = server
    write_csvs(workspace.used_dir, "history", machine_files(6, drift=0.0, seed=1))
    write_csvs(workspace.new_dir, "batch", machine_files(6, drift=1.0, seed=2))
    model = workspace.model_dir / "initial.pkl"
    remote = ["--tracking-uri", server]

    trained = run_script("train_classification_model.py",
                         [str(workspace.used_dir), "--output", str(model)])
    assert trained.returncode == 0, trained.stderr
    registered = run_script("register_first_model.py",
                            ["--used-dir", str(workspace.used_dir), "--model-file", str(model),
                             *remote])
    assert registered.returncode == 0, registered.stderr
    done = run_script("pipeline_orchestrator.py",
                      ["--new-dir", str(workspace.new_dir), "--used-dir", str(workspace.used_dir),
                       "--settle-seconds", "0", "--min-new-files", "5", "--json"],
                      env_extra={"MLFLOW_TRACKING_URI": server})

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["outcome"] == "promoted", summary["reason"]
    # What the UI shows comes from the server: the alias moved and the runs are there.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server)
    assert str(client.get_model_version_by_alias("classifier", "production").version) == "2"
    runs = client.search_runs([client.get_experiment_by_name("classifier-retraining")
                               .experiment_id])
    assert {run.info.run_name for run in runs} == {"FirstModelRegistration", "ModelMonitoring",
                                                   "ModelRetraining"}
    assert "data_manifest.json" in [f.path for f in
                                    client.list_artifacts(summary["retraining_run_id"])]
    # The same store stays usable without the server: the nightly cycle on the embedded
    # SQLite file loads what was registered through HTTP.
    embedded = "sqlite:///" + str(workspace.root / "mlflow_server" / "mlflow.db")
    write_csvs(workspace.new_dir, "later", machine_files(5, drift=1.0, seed=3))
    offline = run_script("pipeline_orchestrator.py",
                         ["--new-dir", str(workspace.new_dir), "--used-dir",
                          str(workspace.used_dir), "--settle-seconds", "0",
                          "--min-new-files", "5", "--dry-run",
                          "--json", "--tracking-uri", embedded])
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["production_version_before"] == "2"


# A domain whose prepare_file stops the tracking server while the cycle is reading new
# files: after the store was opened and production loaded, before anything was logged.
STOPPING_DOMAIN = """
import os, signal, time
from train_classification_model import train_model, error_metric, ERROR_METRIC_NAME

def prepare_file(frame, path):
    if "new_gts" in str(path):
        server = int(os.environ["SERVER_PGID"])
        try:
            os.killpg(server, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(1)
    return frame
"""


def test_server_going_away_mid_cycle_exits_75_and_moves_nothing(workspace, server):
    url, process = server
    write_csvs(workspace.used_dir, "history", machine_files(5, drift=0.0, seed=1))
    model = workspace.model_dir / "initial.pkl"
    assert run_script("train_classification_model.py",
                      [str(workspace.used_dir), "--output", str(model)]).returncode == 0
    assert run_script("register_first_model.py",
                      ["--used-dir", str(workspace.used_dir), "--model-file", str(model),
                       "--tracking-uri", url]).returncode == 0
    write_csvs(workspace.new_dir, "batch", machine_files(5, drift=1.0, seed=2))
    domain = workspace.root / "stopping_domain.py"
    domain.write_text(STOPPING_DOMAIN)
    before = snapshot(workspace.new_dir), snapshot(workspace.used_dir)

    done = run_script("pipeline_orchestrator.py",
                      [*workspace.flags[:-2], "--tracking-uri", url, "--min-new-files", "5",
                       "--domain-file", str(domain)],
                      env_extra={"SERVER_PGID": str(process.pid),
                                 "RETRAIN_STORE_TIMEOUT": "10",
                                 "PYTHONPATH": str(PROJECT_DIR)})

    assert process.wait(timeout=30) is not None  # the server really went away
    assert done.returncode == 75, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert f"cannot reach the MLflow tracking server at {url}" in last and "Fix:" in last
    assert (snapshot(workspace.new_dir), snapshot(workspace.used_dir)) == before


ADMIN = ("admin", "admin-password-1234")
READER = ("reader", "reader-password-1234")
CRON = ("cron", "cron-password-12345")


@pytest.fixture
def auth_server(workspace):
    """`mlflow server --app-name basic-auth` whose users default to READ; one reader added.

    Needs Flask-WTF (requirements-server.txt): skipped where it is not installed.
    """
    pytest.importorskip("flask_wtf", reason="pip install -r requirements-server.txt")
    import requests

    config = workspace.root / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = sqlite:///{workspace.root / 'basic_auth.db'}\n"
                      f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
                      "auth_cache_ttl_seconds = 60\n"
                      "authorization_function = "
                      "mlflow.server.auth:authenticate_request_basic_auth\n")
    # As the README starts it: the project's script, the app named, the settings in the
    # environment.
    process, url = start_script(workspace, {
        "MLFLOW_BACKEND_STORE_URI": "sqlite:///" + str(workspace.root / "server.db"),
        "MLFLOW_DEFAULT_ARTIFACT_ROOT": str(workspace.root / "server_artifacts"),
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-test-secret"}, "--app-name", "basic-auth")
    wait_until_answering(process, url + "/health", 120)
    created = requests.post(url + "/api/2.0/mlflow/users/create", auth=ADMIN, timeout=30,
                            json={"username": READER[0], "password": READER[1]})
    assert created.status_code == 200, created.text
    yield url
    os.killpg(process.pid, 15)
    process.wait(timeout=30)


def _credentials(user):
    return {"MLFLOW_TRACKING_USERNAME": user[0], "MLFLOW_TRACKING_PASSWORD": user[1]}


def _register_as_admin(workspace, url):
    write_csvs(workspace.used_dir, "history", machine_files(5, drift=0.0, seed=1))
    model = workspace.model_dir / "initial.pkl"
    assert run_script("train_classification_model.py",
                      [str(workspace.used_dir), "--output", str(model)]).returncode == 0
    registered = run_script("register_first_model.py",
                            ["--used-dir", str(workspace.used_dir), "--model-file", str(model),
                             "--tracking-uri", url], env_extra=_credentials(ADMIN))
    assert registered.returncode == 0, registered.stderr[-2000:]
    write_csvs(workspace.new_dir, "batch", machine_files(5, drift=1.0, seed=2))
    return snapshot(workspace.new_dir), snapshot(workspace.used_dir)


def test_server_refusing_credentials_names_the_variables_to_set(workspace, auth_server):
    before = _register_as_admin(workspace, auth_server)

    for credentials in ({}, _credentials((ADMIN[0], "not-the-password"))):
        done = run_script("pipeline_orchestrator.py",
                          [*workspace.flags[:-2], "--tracking-uri", auth_server,
                           "--min-new-files", "5"], env_extra=credentials)

        assert done.returncode == 1, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert f"the tracking server at {auth_server} refused the credentials (HTTP 401)" in last
        assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in last
        assert "MLFLOW_TRACKING_TOKEN" in last and "unexpected" not in last
        assert (snapshot(workspace.new_dir), snapshot(workspace.used_dir)) == before


def test_a_cron_user_with_edit_on_the_experiment_and_the_model_promotes(workspace,
                                                                        auth_server):
    """What the README tells a team to set up: a user of its own for cron, granted EDIT on
    the experiment and on the registered model, its credentials in the environment."""
    from mlflow.server import get_app_client

    _register_as_admin(workspace, auth_server)
    os.environ.update(_credentials(ADMIN))
    try:
        admin = get_app_client("basic-auth", tracking_uri=auth_server)
        admin.create_user(CRON[0], CRON[1])
        import mlflow

        experiment = mlflow.MlflowClient(auth_server).get_experiment_by_name(
            "classifier-retraining")
        admin.grant_user_permission(CRON[0], "experiment", experiment.experiment_id, "EDIT")
        admin.grant_user_permission(CRON[0], "registered_model", "classifier", "EDIT")
    finally:
        for name in _credentials(ADMIN):
            os.environ.pop(name)

    done = run_script("pipeline_orchestrator.py",
                      [*workspace.flags[:-2], "--tracking-uri", auth_server,
                       "--min-new-files", "5", "--json"], env_extra=_credentials(CRON))

    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["outcome"] == "promoted", summary["reason"]
    rolled = run_script("registry_tool.py", ["rollback", "--reason", "checking", "--by", "ann",
                                             "--tracking-uri", auth_server, "--json"],
                        env_extra=_credentials(CRON))
    assert rolled.returncode == 0, rolled.stderr[-2000:]


def test_user_without_permission_is_told_which_call_was_denied(workspace, auth_server):
    before = _register_as_admin(workspace, auth_server)

    # The reader may read the admin's experiment and model (default READ) but not write.
    done = run_script("pipeline_orchestrator.py",
                      [*workspace.flags[:-2], "--tracking-uri", auth_server,
                       "--min-new-files", "5"], env_extra=_credentials(READER))

    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert f"the tracking server at {auth_server} denied permission to" in last
    assert "(HTTP 403)" in last and "/api/2.0/mlflow/" in last
    assert "experiment 'classifier-retraining'" in last and "EDIT" in last
    assert "unexpected" not in last
    assert (snapshot(workspace.new_dir), snapshot(workspace.used_dir)) == before


def test_a_server_that_refuses_the_host_header_is_named_as_such(workspace):
    # Started for other machines' clients: the address this client uses is not allowed.
    process, url = start_script(workspace, {}, "--allowed-hosts", "mlflow.example:5000")
    try:
        wait_until_answering(process, url + "/health", 120, refusal_counts=True)
        done = run_script("registry_tool.py", ["status", "--tracking-uri", url])

        assert done.returncode == 1, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert "refused the Host header" in last and "--allowed-hosts" in last
        assert "denied permission" not in last and "MLFLOW_TRACKING_USERNAME" not in last
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)

