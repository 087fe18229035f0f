"""register_first_model.py and train_classification_model.py as a user runs them."""

from __future__ import annotations

import json
import pickle
import warnings

import mlflow
import pytest

import register_first_model
from tests.conftest import (machine_files, register_pickle, run_json, run_script, train_on_folder,
                            write_csvs)


@pytest.fixture
def history(workspace):
    write_csvs(workspace.used_dir, "history", machine_files(6, drift=0.0, seed=1))
    return workspace


def test_standalone_training_writes_a_model_the_registration_accepts(history, capsys):
    output = history.model_dir / "initial_model.pkl"

    trained = run_script("train_classification_model.py",
                         [str(history.used_dir), "--output", str(output)], cwd=history.root)
    assert trained.returncode == 0, trained.stderr
    registered = run_script("register_first_model.py",
                            ["--used-dir", str(history.used_dir), "--model-dir",
                             str(history.model_dir), "--tracking-uri", history.tracking_uri,
                             "--json"], cwd=history.root)

    assert registered.returncode == 0, registered.stderr
    summary = json.loads(registered.stdout)
    assert summary["version"] == "1" and summary["alias"] == "production"
    assert summary["history_error"] < 0.10 and summary["history_files"] == 6
    assert history.alias_version() == "1"


def test_registration_logs_run_signature_and_a_model_that_loads_without_warnings(history,
                                                                                 capsys):
    summary = register_pickle(history, train_on_folder(history.used_dir), capsys)

    client = history.client()
    version = client.get_model_version("classifier", "1")
    run = client.get_run(version.run_id)
    assert run.info.run_name == "FirstModelRegistration"
    assert run.data.metrics["history_error"] == pytest.approx(summary["history_error"])
    assert version.tags["decision"] == "registered_first"
    info = mlflow.models.get_model_info("models:/classifier@production")
    assert info.signature is not None and info.saved_input_example_info is not None
    assert info.flavors["sklearn"]["serialization_format"] == "skops"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an untrusted-type warning would fail here
        mlflow.sklearn.load_model("models:/classifier@production")


def test_second_registration_refuses_unless_forced(history, capsys):
    model = train_on_folder(history.used_dir)
    register_pickle(history, model, capsys)
    path = history.model_dir / "initial.pkl"
    argv = ["--used-dir", str(history.used_dir), "--model-file", str(path),
            "--tracking-uri", history.tracking_uri]

    refused = run_script("register_first_model.py", argv)
    assert refused.returncode == 2
    assert "already has alias 'production'" in refused.stderr and "--force" in refused.stderr
    assert [str(v.version) for v in history.client().search_model_versions("")] == ["1"]

    code, forced = run_json(register_first_model, [*argv, "--force"], capsys)
    assert code == 0 and forced["version"] == "2" and forced["previous_production_version"] == "1"
    assert history.alias_version() == "2"


def test_no_alias_registers_a_version_without_production(history, capsys):
    summary = register_pickle(history, train_on_folder(history.used_dir), capsys,
                              extra=["--no-alias"])
    assert summary["alias"] is None
    client = history.client()
    assert [str(v.version) for v in client.search_model_versions("")] == ["1"]
    assert client.get_model_version("classifier", "1").aliases == []


def test_registration_without_history_says_what_to_do(workspace, capsys):
    path = workspace.model_dir / "initial.pkl"
    path.write_bytes(pickle.dumps(object()))
    done = run_script("register_first_model.py", ["--used-dir", str(workspace.used_dir),
                                                  "--model-dir", str(workspace.model_dir),
                                                  "--tracking-uri", workspace.tracking_uri])
    assert done.returncode == 2
    assert "no CSV files" in done.stderr and "used_gts" in done.stderr


def test_missing_pickle_and_unknown_flag_are_one_line_usage_errors(history):
    missing = run_script("register_first_model.py",
                         ["--used-dir", str(history.used_dir), "--model-file",
                          str(history.model_dir / "absent.pkl"),
                          "--tracking-uri", history.tracking_uri])
    unknown = run_script("pipeline_orchestrator.py", ["--bogus"])
    for done in (missing, unknown):
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1 and "Fix:" in done.stderr
    assert "absent.pkl does not exist" in missing.stderr
