"""register_first_model.py and train_classification_model.py as a user runs them."""

from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path

import joblib
import mlflow
import pandas as pd
import pytest
import sklearn
from hypothesis import given, settings
from hypothesis import strategies as st

import register_first_model
from tests.conftest import (
    machine_files,
    register_pickle,
    run_json,
    run_script,
    train_on_folder,
    write_csvs,
)
from train_classification_model import train_model


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
    # Replacing production is a person's move, recorded as one: the alias history shows it,
    # and version 1 is tagged as replaced, so no cycle promotes it again on its own.
    client = history.client()
    [move] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                "attributes.run_name = 'AliasChange'")
    assert move.info.status == "FINISHED"
    assert (move.data.tags["from_version"], move.data.tags["to_version"]) == ("1", "2")
    assert move.data.tags["changed_by"] == "register_first_model.py --force"
    assert client.get_model_version("classifier", "1").tags["decision"] == "replaced_by_hand"
    status = json.loads(run_script("registry_tool.py", [
        "status", "--tracking-uri", history.tracking_uri, "--json"]).stdout)
    assert status["production"]["version"] == "2"
    assert status["production"]["moved_by"] == "set-alias"


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


# --- the model file: formats, the scikit-learn it was saved with, its answers on history ---

# Saved by scikit-learn 1.3.2 (tests/data/README.md says how): real old models, not ones
# whose recorded version was rewritten, so the failures below are those a user meets.
OLD_MODELS = Path(__file__).parent / "data"


def register_file(workspace, path, capsys, *extra) -> tuple[int, str]:
    """Run register_first_model.py in-process on a model file; return its code and stderr."""
    code = register_first_model.main(["--used-dir", str(workspace.used_dir), "--model-file",
                                      str(path), "--tracking-uri", workspace.tracking_uri,
                                      *extra])
    return code, capsys.readouterr().err


def failure_line(stderr: str) -> str:
    """The one line a failure ends with (the log lines before it are the run's progress)."""
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("register_first_model.py: error: ") and ". Fix: " in line, stderr
    return line


def registered_versions(workspace) -> list[str]:
    if not workspace.database.exists():
        return []
    return [str(v.version) for v in workspace.client().search_model_versions("")]


def test_a_joblib_dumped_model_in_the_model_folder_registers(history, capsys):
    joblib.dump(train_on_folder(history.used_dir), history.model_dir / "initial.joblib")

    code, summary = run_json(register_first_model,
                             ["--used-dir", str(history.used_dir), "--model-dir",
                              str(history.model_dir), "--tracking-uri", history.tracking_uri],
                             capsys)

    assert code == 0 and summary["version"] == "1" and summary["history_error"] < 0.10
    assert summary["saved_with_other_sklearn"] is None
    assert history.alias_version() == "1"


def test_joblib_load_reads_a_plain_pickle_too(history, capsys):
    model = train_on_folder(history.used_dir)
    path = history.model_dir / "initial.pickle"
    path.write_bytes(pickle.dumps(model))

    code, summary = run_json(register_first_model,
                             ["--used-dir", str(history.used_dir), "--model-dir",
                              str(history.model_dir), "--tracking-uri", history.tracking_uri],
                             capsys)

    assert code == 0 and summary["version"] == "1"


def test_two_model_files_in_the_model_folder_are_refused_naming_both(history, capsys):
    model = train_on_folder(history.used_dir)
    joblib.dump(model, history.model_dir / "a.joblib")
    (history.model_dir / "b.pkl").write_bytes(pickle.dumps(model))

    code = register_first_model.main(["--used-dir", str(history.used_dir), "--model-dir",
                                      str(history.model_dir), "--tracking-uri",
                                      history.tracking_uri])

    line = failure_line(capsys.readouterr().err)
    assert code == 2 and "found a.joblib, b.pkl" in line and "--model-file" in line


def test_a_model_saved_by_another_scikit_learn_is_refused_naming_both_versions(history,
                                                                               capsys):
    code, error = register_file(history, OLD_MODELS / "old_sklearn_logistic.joblib", capsys)

    line = failure_line(error)
    assert code == 1
    assert f"saved with scikit-learn 1.3.2, while {sklearn.__version__} is installed" in line
    assert "LogisticRegression" in line and "--allow-version-mismatch" in line
    assert registered_versions(history) == []

    code, summary = run_json(register_first_model,
                             ["--used-dir", str(history.used_dir), "--model-file",
                              str(OLD_MODELS / "old_sklearn_logistic.joblib"), "--tracking-uri",
                              history.tracking_uri, "--allow-version-mismatch"], capsys)
    assert code == 0 and summary["version"] == "1" and summary["history_error"] < 0.10
    assert "1.3.2" in summary["saved_with_other_sklearn"]
    run = history.client().get_run(history.client().get_model_version("classifier",
                                                                      "1").run_id)
    assert "1.3.2" in run.data.params["saved_with_other_sklearn"]


def test_an_old_tree_whose_probabilities_are_leaf_counts_is_refused_with_the_figures(history,
                                                                                  capsys):
    # Allowed past the version check, it loads and predicts the right classes; only its
    # probabilities show that 1.9 reads its saved leaves differently.
    code, error = register_file(history, OLD_MODELS / "old_sklearn_tree.joblib", capsys,
                                "--allow-version-mismatch")

    line = failure_line(error)
    assert code == 1 and "Fix:" in line
    figures = re.search(r"rows that sum to between ([0-9.]+) and ([0-9.]+), not 1", line)
    assert figures and float(figures[2]) > 100, line
    assert "outside [0, 1]" in line and "saved with scikit-learn 1.3.2" in line
    assert registered_versions(history) == []


def test_an_old_model_that_fails_to_predict_is_refused_in_one_line(history, capsys):
    code, error = register_file(history, OLD_MODELS / "old_sklearn_default.joblib", capsys,
                                "--allow-version-mismatch")

    line = failure_line(error)
    assert code == 1 and "predict fails (AttributeError" in line and "1.3.2" in line
    assert registered_versions(history) == []


def test_a_model_trained_on_label_codes_is_refused_for_text_labels(history, capsys):
    from retraining.datafiles import concat_files, list_data_files, load_files

    files = load_files(list_data_files(history.used_dir), "label", lambda frame, path: frame)
    features, labels = concat_files(files)
    codes = labels.astype("category").cat.codes  # the history says 'ok', the model says 0
    joblib.dump(train_model(features, codes), history.model_dir / "coded.joblib")

    code, error = register_file(history, history.model_dir / "coded.joblib", capsys)

    line = failure_line(error)
    assert code == 1
    assert "the history's labels are text ('" in line
    assert "the model's classes are integer (0, 1, 2)" in line
    assert registered_versions(history) == []


def test_a_file_that_is_not_a_model_is_refused_in_one_line(history, capsys):
    path = history.model_dir / "notes.pkl"
    path.write_text("not a pickle\n")

    code, error = register_file(history, path, capsys)

    line = failure_line(error)
    assert code == 1 and "notes.pkl cannot be loaded as a joblib or pickle file" in line
    assert "Fix: save the model with joblib.dump" in line


def test_history_predicted_a_file_at_a_time_gives_the_same_refusal_figures(history, capsys,
                                                                           monkeypatch):
    # Years of history are predicted in chunks of rows, never stacked whole; the figures
    # of a refusal are still those of all the rows.
    _, whole = register_file(history, OLD_MODELS / "old_sklearn_tree.joblib", capsys,
                             "--allow-version-mismatch")
    monkeypatch.setattr("retraining.evaluation.PREDICT_ROWS", 1)
    _, by_file = register_file(history, OLD_MODELS / "old_sklearn_tree.joblib", capsys,
                               "--allow-version-mismatch")

    assert failure_line(by_file) == failure_line(whole)
    assert "of 1,800 history rows" in failure_line(whole)


def test_history_predicted_in_chunks_registers_the_same_error_and_signature(history, capsys,
                                                                            monkeypatch):
    # A gap in one later file only: the signature must still mark that column optional.
    late = sorted(history.used_dir.glob("*.csv"))[-1]
    frame = pd.read_csv(late)
    frame.loc[3, "vibration"] = None
    frame.to_csv(late, index=False)
    model_file = history.model_dir / "model.joblib"
    joblib.dump(train_on_folder(history.used_dir), model_file)
    arguments = ["--used-dir", str(history.used_dir), "--model-file", str(model_file),
                 "--tracking-uri", history.tracking_uri]

    monkeypatch.setattr("retraining.evaluation.PREDICT_ROWS", 1)
    code, chunked = run_json(register_first_model, arguments, capsys)
    monkeypatch.undo()
    assert code == 0
    code, whole = run_json(register_first_model, [*arguments, "--no-alias"], capsys)
    assert code == 0

    assert chunked["history_error"] == whole["history_error"]
    mlflow.set_tracking_uri(history.tracking_uri)
    signatures = [mlflow.models.get_model_info(f"models:/classifier/{summary['version']}"
                                               ).signature.to_dict()
                  for summary in (chunked, whole)]
    assert signatures[0] == signatures[1]
    inputs = {column["name"]: column for column in json.loads(signatures[0]["inputs"])}
    assert inputs["vibration"]["required"] is False


_cells = {"number": st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
          "integer": st.integers(-1000, 1000),
          "text": st.one_of(st.none(), st.sampled_from(["a", "b", "press"]))}


@st.composite
def _file_frames(draw):
    """Feature frames of several files, as a person's history could hold them: a column
    integer in one file and float in another, gaps in any file or none."""
    kinds = draw(st.lists(st.sampled_from(sorted(_cells)), min_size=1, max_size=4))
    frames = []
    for _ in range(draw(st.integers(1, 5))):
        rows = draw(st.integers(1, 30))
        frames.append(pd.DataFrame({
            f"c{index}": draw(st.lists(_cells[kind] if draw(st.booleans()) or kind != "number"
                                       else _cells["integer"], min_size=rows, max_size=rows))
            for index, kind in enumerate(kinds)}))
    return frames


@settings(max_examples=60, deadline=None)
@given(frames=_file_frames(), head=st.integers(1, 40))
def test_the_signature_of_a_sample_of_files_is_that_of_all_their_rows(frames, head):
    from mlflow.models import infer_signature

    from retraining.registry import signature_sample

    whole = pd.concat(frames, ignore_index=True)
    assert (infer_signature(signature_sample(frames, head)).to_dict()
            == infer_signature(whole).to_dict())
