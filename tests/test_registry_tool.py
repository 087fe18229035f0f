"""registry_tool.py against a real SQLite store: what it reports, the moves it records."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

import pipeline_orchestrator
import register_first_model
import registry_tool
from retraining import operations
from retraining.config import build_settings
from tests.conftest import (
    Workspace,
    cycle,
    machine_files,
    new_workspace,
    register_pickle,
    train_on_folder,
    wait_until_answering,
    write_csvs,
)


def tool(argv, capsys=None) -> tuple[int, str]:
    """Run registry_tool.py in-process; return its exit code and stdout."""
    if capsys is not None:
        code = registry_tool.main(list(argv))
        return code, capsys.readouterr().out
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = registry_tool.main(list(argv))
    return code, out.getvalue()


def tool_failure(argv, capsys) -> tuple[int, list[str]]:
    """Run registry_tool.py in-process; return its exit code and stderr lines."""
    code = registry_tool.main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def tool_json(argv, capsys=None) -> tuple[int, dict]:
    code, out = tool([*argv, "--json"], capsys)
    return code, (json.loads(out) if code == 0 else {})


def store_flags(workspace: Workspace) -> list[str]:
    return ["--tracking-uri", workspace.tracking_uri]


@pytest.fixture(scope="module")
def promoted(tmp_path_factory) -> Workspace:
    """Version 1 registered, then a cycle on a drifted batch promoted version 2.

    Shared by the tests that only read it; the ones that move the alias build their own.
    """
    root = tmp_path_factory.mktemp("promoted")
    space = new_workspace(root)
    write_csvs(space.used_dir, "history", machine_files(8, drift=0.0, seed=1))
    model_file = space.model_dir / "initial.pkl"
    model_file.write_bytes(pickle.dumps(train_on_folder(space.used_dir)))
    with contextlib.redirect_stdout(io.StringIO()):
        assert register_first_model.main(["--used-dir", str(space.used_dir), "--model-file",
                                          str(model_file), *store_flags(space)]) == 0
    write_csvs(space.new_dir, "batch", machine_files(10, drift=1.0, seed=6))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert pipeline_orchestrator.main([*space.flags, "--min-new-files", "5", "--json"]) == 0
    summary = json.loads(out.getvalue())
    assert summary["outcome"] == "promoted", summary["reason"]
    # A file waiting for the next cycle, for status to count.
    write_csvs(space.new_dir, "waiting", machine_files(1, drift=0.0, seed=9))
    return space


def test_status_shows_the_promoted_version_why_and_the_last_cycle(promoted):
    code, status = tool_json(["status", *promoted.flags[:2], *store_flags(promoted),
                              "--settle-seconds", "0"])

    assert code == 0
    production = status["production"]
    assert production["version"] == "2" and production["moved_by"] == "promoted"
    assert production["why"].startswith("challenger is better")
    assert production["rollback_target"] == "1"
    [last] = status["cycles"]
    assert last["outcome"] == "promoted" and last["production_version"] == "1"
    assert last["monitoring_error"] > last["threshold"] == 0.1
    assert last["drift_share"] > 0
    assert status["new_files_waiting"] == 1 and status["waiting_files"] == ["waiting_000.csv"]

    code, text = tool(["status", *promoted.flags[:2], *store_flags(promoted),
                       "--settle-seconds", "0"])
    assert code == 0
    assert text.startswith("classifier@production: version 2\n")
    assert "  moved_by: promoted" in text and "  rollback_target: 1" in text
    header = next(line for line in text.splitlines() if line.startswith("started"))
    assert header.split() == ["started", "outcome", "production_version", "monitoring_error",
                              "threshold", "drift_share"]
    assert f"new files waiting in {promoted.new_dir}: 1" in text


def test_versions_lists_each_version_with_aliases_errors_and_decision(promoted):
    code, listing = tool_json(["versions", *store_flags(promoted)])

    assert code == 0
    by_version = {row["version"]: row for row in listing["versions"]}
    assert list(by_version) == ["2", "1"]
    assert by_version["2"]["aliases"] == ["production"] and by_version["1"]["aliases"] == []
    assert by_version["2"]["decision"] == "promoted" and by_version["1"]["decision"] == "replaced"
    assert by_version["2"]["challenger_error"] < by_version["2"]["production_error"]

    code, text = tool(["versions", *store_flags(promoted)])
    lines = text.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["version", "aliases", "decision"]
    assert lines[1].split()[:3] == ["2", "production", "promoted"]
    assert lines[2].split()[:3] == ["1", "-", "replaced"]


def test_history_writes_a_png_and_logs_it_with_the_error_over_time(promoted):
    plot = promoted.root / "history.png"

    code, history = tool_json(["history", *store_flags(promoted), "--output", str(plot)])

    assert code == 0 and history["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [measured] = history["cycles"]
    assert measured["decision"] == "retrain" and measured["monitoring_error"] > 0.1
    assert [(move["version"], move["action"]) for move in history["alias_moves"]] == [
        ("1", "registered_first"), ("2", "promoted")]
    client = mlflow.MlflowClient(promoted.tracking_uri)
    run = client.get_run(history["history_run_id"])
    assert run.info.run_name == "RegistryHistory"
    assert {item.path for item in client.list_artifacts(run.info.run_id)} >= {
        "history.png", "history.json"}

    code, text = tool(["history", *store_flags(promoted), "--output", str(plot)])
    assert code == 0 and "registered_first" in text and f"plot: {plot}" in text


def test_predict_writes_the_production_models_own_predictions_and_probabilities(promoted):
    inputs = promoted.root / "to_score"
    inputs.mkdir()
    frames = machine_files(2, drift=0.5, seed=11, rows=40)
    write_csvs(inputs, "labelled", frames[:1])
    write_csvs(inputs, "unlabelled", [frames[1].drop(columns=["label"])])
    output = promoted.root / "predictions.csv"

    code, summary = tool_json(["predict", *store_flags(promoted), "--input-dir", str(inputs),
                               "--output", str(output), "--low-confidence", "0.9"])

    assert code == 0 and summary["rows"] == 80 and summary["production_version"] == "2"
    written = pd.read_csv(output)
    mlflow.set_tracking_uri(promoted.tracking_uri)
    model = mlflow.sklearn.load_model("models:/classifier/2")
    expected_rows = pd.concat(
        [pd.read_csv(path).drop(columns=["label"], errors="ignore")
         for path in sorted(inputs.iterdir())], ignore_index=True)
    # The reader turns TRUE/FALSE into 1.0/0.0; the model was trained on that.
    expected_rows["serviced"] = expected_rows["serviced"].astype(float)
    assert list(written["source_file"]) == ["labelled_000.csv"] * 40 + ["unlabelled_000.csv"] * 40
    assert list(written["row"]) == list(range(40)) * 2
    assert list(written["predicted_class"]) == list(model.predict(expected_rows))
    probabilities = model.predict_proba(expected_rows)
    for index, label in enumerate(model.classes_):
        np.testing.assert_allclose(written[f"proba_{label}"], probabilities[:, index])
    assert summary["low_confidence_share"] == pytest.approx(
        float(np.mean(probabilities.max(axis=1) < 0.9)))
    run = mlflow.MlflowClient(promoted.tracking_uri).get_run(summary["run_id"])
    assert run.info.run_name == "BatchPredictions"
    assert run.data.metrics["rows"] == 80
    shares = {key: value for key, value in run.data.metrics.items()
              if key.startswith("predicted_share_")}
    assert sum(shares.values()) == pytest.approx(1.0)


def test_predict_never_writes_over_an_existing_file(promoted):
    inputs = promoted.root / "to_score_again"
    inputs.mkdir()
    write_csvs(inputs, "batch", machine_files(1, drift=0.0, seed=12, rows=10))
    output = promoted.root / "kept.csv"
    output.write_text("precious\n")

    code, _ = tool(["predict", *store_flags(promoted), "--input-dir", str(inputs),
                    "--output", str(output)])

    assert code == 2 and output.read_text() == "precious\n"
    assert [path.name for path in promoted.root.iterdir() if ".part" in path.name] == []


def alias_change_runs(workspace: Workspace) -> list:
    client = mlflow.MlflowClient(workspace.tracking_uri)
    experiment = client.get_experiment_by_name("classifier-retraining")
    return client.search_runs([experiment.experiment_id], "attributes.run_name = 'AliasChange'",
                              order_by=["attributes.start_time ASC"])


def test_rollback_restores_the_previous_version_and_records_who_and_why(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(10, drift=1.0, seed=6))
    code, summary = cycle(production, capsys)
    assert code == 0 and summary["outcome"] == "promoted" and production.alias_version() == "2"

    code, moved = tool_json(["rollback", *store_flags(production), "--reason",
                             "v2 flags every hot machine", "--by", "alice"], capsys)

    assert code == 0 and moved["from_version"] == "2" and moved["to_version"] == "1"
    assert production.alias_version() == "1"
    [run] = alias_change_runs(production)
    assert run.info.status == "FINISHED"
    assert {key: run.data.tags[key] for key in ("action", "from_version", "to_version",
                                                "changed_by", "reason")} == {
        "action": "rollback", "from_version": "2", "to_version": "1", "changed_by": "alice",
        "reason": "v2 flags every hot machine"}
    client = production.client()
    restored, left = client.get_model_version("classifier", "1"), \
        client.get_model_version("classifier", "2")
    assert restored.tags["decision"] == "restored"
    assert restored.tags["previous_production_version"] == "2"
    assert restored.tags["alias_changed_by"] == "alice"
    assert "rollback by alice: v2 flags every hot machine" in restored.description
    assert left.tags["decision"] == "rolled_back"

    # Rolling back again goes further back, not forth to v2: nothing came before v1.
    code, error = tool_failure(["rollback", *store_flags(production), "--reason", "again"],
                               capsys)
    assert code == 1 and production.alias_version() == "1"
    assert "no production version before version 1" in error[-1]

    # A manual move is a move like any other: rolling it back returns to v1.
    assert tool_json(["set-alias", "production", "2", *store_flags(production),
                      "--reason", "fixed upstream"], capsys)[0] == 0
    assert production.alias_version() == "2"
    code, moved = tool_json(["rollback", *store_flags(production), "--reason", "not fixed"],
                            capsys)
    assert code == 0 and moved["to_version"] == "1" and production.alias_version() == "1"
    assert [run.data.tags["action"] for run in alias_change_runs(production)] == [
        "rollback", "set-alias", "rollback"]
    code, status = tool_json(["status", *production.flags[:2], *store_flags(production)],
                             capsys)
    assert status["production"]["moved_by"] == "rollback"
    assert status["production"]["why"] == "not fixed"


def test_set_alias_refuses_a_version_that_does_not_exist(production, capsys):
    code, error = tool_failure(["set-alias", "production", "7", *store_flags(production),
                                "--reason", "typo"], capsys)

    assert code == 2 and len(error) == 1
    assert "version 7 of 'classifier' does not exist" in error[0] and "Fix:" in error[0]
    assert production.alias_version() == "1" and alias_change_runs(production) == []


def test_set_alias_refuses_a_version_whose_model_cannot_be_loaded(production, capsys):
    register_pickle(production, train_on_folder(production.used_dir), capsys,
                    extra=["--no-alias"])
    location = production.client().get_model_version_download_uri("classifier", "2")
    artifacts = Path(location.removeprefix("file://"))
    # The version's model file is lost from the artifact store.
    [model_file] = [path for path in artifacts.rglob("model.skops")]
    model_file.unlink()

    code, error = tool_failure(["set-alias", "production", "2", *store_flags(production),
                                "--reason", "try it"], capsys)

    assert code == 1 and "version 2 of 'classifier' cannot be loaded" in error[-1]
    assert production.alias_version() == "1" and alias_change_runs(production) == []


# --- serving ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.server
def test_mlflow_models_serve_answers_with_the_promoted_models_predictions(promoted):
    port = free_port()
    venv_bin = os.path.dirname(sys.executable)
    server = subprocess.Popen(
        [os.path.join(venv_bin, "mlflow"), "models", "serve", "-m",
         "models:/classifier@production", "--env-manager", "local", "-h", "127.0.0.1",
         "-p", str(port), "-w", "1"],
        # MLflow starts `uvicorn` by name: the environment's bin folder must be on PATH.
        env={**os.environ, "MLFLOW_TRACKING_URI": promoted.tracking_uri,
             "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(server, url + "/ping", 240)
        rows = machine_files(1, drift=1.0, seed=13, rows=30)[0].drop(columns=["label"]).dropna()
        rows["serviced"] = (rows["serviced"] == "TRUE").astype(float)
        body = json.dumps({"dataframe_split": rows.to_dict(orient="split")}).encode()
        request = urllib.request.Request(url + "/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            served = json.loads(answer.read())["predictions"]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)

    mlflow.set_tracking_uri(promoted.tracking_uri)
    model = mlflow.sklearn.load_model("models:/classifier@production")
    assert promoted.alias_version() == "2"
    assert served == list(model.predict(rows))


def test_status_on_a_missing_store_says_so_and_creates_nothing(workspace, capsys):
    code, error = tool_failure(["status", *store_flags(workspace)], capsys)

    assert code == 1 and len(error) == 1
    assert f"no MLflow store at {workspace.database}" in error[0] and "Fix:" in error[0]
    assert not workspace.database.exists()


def test_alias_moves_say_what_they_do_and_a_dry_run_what_it_would_do(production, capsys):
    # Version 2 replaces version 1 as production: a rollback would go back to 1.
    register_pickle(production, train_on_folder(production.used_dir), capsys,
                    extra=["--force"])
    assert production.alias_version() == "2"
    [forced] = alias_change_runs(production)  # replacing production is a recorded move

    code, text = tool(["rollback", *store_flags(production), "--dry-run", "--reason", "check",
                       "--by", "alice"], capsys)
    assert code == 0 and text.strip() == ("dry run: alias 'production' would move from "
                                          "version 2 to 1 (rollback by alice: check); "
                                          "nothing was changed")
    code, text = tool(["set-alias", "production", "1", *store_flags(production), "--dry-run",
                       "--reason", "check", "--by", "alice"], capsys)
    assert code == 0 and text.startswith("dry run: alias 'production' would move from "
                                         "version 2 to 1 (set-alias by alice")
    code, text = tool(["set-alias", "staging", "1", *store_flags(production), "--dry-run",
                       "--reason", "try", "--by", "bob"], capsys)
    assert code == 0 and text.startswith("dry run: alias 'staging' would be set to version 1 "
                                         "(it points at no version)")
    assert production.alias_version() == "2"
    assert [run.info.run_id for run in alias_change_runs(production)] == [forced.info.run_id]

    code, text = tool(["set-alias", "staging", "1", *store_flags(production), "--reason",
                       "try", "--by", "bob"], capsys)
    assert code == 0 and text.startswith("alias 'staging' set to version 1 (it pointed at no "
                                         "version) (set-alias by bob: try); run ")
    assert production.alias_version("staging") == "1"
    code, text = tool(["set-alias", "staging", "1", *store_flags(production), "--reason",
                       "again", "--by", "bob"], capsys)
    assert code == 0 and text.strip() == "alias 'staging' already points at version 1"
    code, text = tool(["rollback", *store_flags(production), "--reason", "v2 is worse",
                       "--by", "alice"], capsys)
    assert code == 0 and text.startswith("alias 'production' moved from version 2 to 1 "
                                         "(rollback by alice: v2 is worse); run ")
    description = production.client().get_model_version("classifier", "1").description
    assert "(alias 'production' moved from version 2 to 1)" in description


def history_cycle(when_ms: int, error: float, version: str) -> dict:
    """One monitoring cycle as history() reads it from a ModelMonitoring run."""
    return {"time": when_ms, "started": None, "production_version": version,
            "monitoring_error": error, "threshold": 0.1, "drift_share": 0.0,
            "decision": "retrain" if error > 0.1 else "healthy"}


def history_move(version: str, action: str, when_ms: int) -> "operations.AliasMove":
    return operations.AliasMove(version, None, action, when_ms, "", "tester", "run")


def assert_labels_apart(layout: dict) -> None:
    for row in {label["row"] for label in layout["move_labels"]}:
        spans = sorted((label["x0"], label["x1"]) for label in layout["move_labels"]
                       if label["row"] == row)
        assert all(left[1] <= right[0]
                   for left, right in zip(spans, spans[1:], strict=False)), spans


def test_history_plot_of_one_cycle_spans_minutes_with_labels_apart(tmp_path):
    settings = build_settings(tmp_path, argparse.Namespace(), {})
    start = 1_780_000_000_000
    cycles = [history_cycle(start + 30_000, 0.31, "1")]
    moves = [history_move("1", "registered_first", start), history_move("2", "promoted",
                                                                        start + 70_000)]

    layout = operations._plot_history(tmp_path / "one.png", cycles, moves, settings)

    # Not the hour a fixed padding gave it: the 70 s of events, padded a minute each side.
    assert 70 <= layout["span_seconds"] <= 70 + 2 * 61
    assert [label["text"] for label in layout["move_labels"]] == ["v1 registered_first",
                                                                  "v2 promoted"]
    assert_labels_apart(layout)
    assert (tmp_path / "one.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_plot_of_many_cycles_keeps_close_moves_labels_apart(tmp_path):
    settings = build_settings(tmp_path, argparse.Namespace(), {})
    day, start = 86_400_000, 1_780_000_000_000
    cycles = [history_cycle(start + index * day, 0.05 + 0.004 * index, str(1 + index // 15))
              for index in range(60)]
    moves = [history_move("1", "registered_first", start - day),
             *[history_move(str(k + 2), "promoted", start + (15 * k + 14) * day)
               for k in range(3)],
             # A rollback and a move by hand three hours apart: one spot at this scale.
             history_move("3", "rollback", start + 58 * day),
             history_move("4", "set-alias", start + 58 * day + 3 * 3_600_000)]

    layout = operations._plot_history(tmp_path / "many.png", cycles, moves, settings)

    assert 60 * day / 1000 <= layout["span_seconds"] <= 60 * day / 1000 * 1.2
    rows = {label["text"]: label["row"] for label in layout["move_labels"]}
    assert rows["v3 rollback"] != rows["v4 set-alias"]
    assert_labels_apart(layout)
