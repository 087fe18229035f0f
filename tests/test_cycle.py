"""One cycle end to end against a real SQLite MLflow store: every outcome and its traces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import mlflow
import numpy as np
import pandas as pd
import pytest

from tests.conftest import (
    PROJECT_DIR,
    cycle,
    machine_files,
    register_pickle,
    run_script,
    snapshot,
    write_csvs,
)

SUMMARY_KEYS = {"outcome", "new_files", "monitoring_error", "production_version_before",
                "production_version_after", "challenger_version", "production_error",
                "challenger_error", "archived_files"}


def test_too_few_files_skips_without_importing_mlflow_or_touching_the_store(workspace):
    write_csvs(workspace.new_dir, "batch", machine_files(2, drift=1.0, seed=3))
    probe = textwrap.dedent(f"""
        import json, sys
        import pipeline_orchestrator
        code = pipeline_orchestrator.main({workspace.flags + ['--json']!r})
        heavy = sorted(m for m in ("mlflow", "pandas", "sklearn", "pyarrow") if m in sys.modules)
        print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
    """)
    done = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=120)
    summary = json.loads(done.stdout)
    probe_result = json.loads(done.stderr.strip().splitlines()[-1])
    assert probe_result == {"code": 0, "heavy": []}
    assert summary["outcome"] == "skipped" and summary["new_files"] == 2
    assert summary["archived_files"] is None and summary["monitoring_error"] is None
    assert not workspace.database.exists()
    assert len(snapshot(workspace.new_dir)) == 2



def test_the_skip_reason_counts_files_still_settling_and_stays_light(workspace):
    settled = write_csvs(workspace.new_dir, "settled", machine_files(2, drift=0.0, seed=3))
    for path in settled:  # copied in a while ago
        os.utime(path, (time.time() - 600, time.time() - 600))
    write_csvs(workspace.new_dir, "just_copied", machine_files(3, drift=0.0, seed=4))
    probe = textwrap.dedent(f"""
        import json, sys
        import pipeline_orchestrator
        code = pipeline_orchestrator.main({workspace.flags + ['--settle-seconds', '60',
                                                             '--json']!r})
        heavy = sorted(m for m in ("mlflow", "pandas", "sklearn", "pyarrow") if m in sys.modules)
        print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
    """)
    done = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=120)

    summary = json.loads(done.stdout)
    assert json.loads(done.stderr.strip().splitlines()[-1]) == {"code": 0, "heavy": []}
    assert summary["outcome"] == "skipped" and summary["new_files"] == 2
    assert summary["reason"] == ("2 new files, 15 needed; 3 more are still settling "
                                 "(modified in the last 60 s)")

def test_healthy_production_archives_batch_and_keeps_alias(production, capsys):
    batch = write_csvs(production.new_dir, "batch", machine_files(6, drift=0.0, seed=5))
    before = {path.name: path.read_bytes() for path in batch}

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "healthy"
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["monitoring_error"] <= 0.10
    assert summary["production_version_before"] == summary["production_version_after"] == "1"
    assert summary["challenger_version"] is None and summary["challenger_error"] is None
    # The batch moves to history byte for byte, so it is not monitored again tomorrow.
    assert snapshot(production.new_dir) == {}
    assert {name: snapshot(production.used_dir)[name] for name in before} == before
    assert sorted(summary["archived_files"]) == sorted(before)
    run = mlflow.MlflowClient(production.tracking_uri).get_run(summary["monitoring_run_id"])
    assert run.info.run_name == "ModelMonitoring" and run.info.status == "FINISHED"
    assert run.data.tags["decision"] == "healthy"
    assert run.data.metrics["monitoring_error"] == pytest.approx(summary["monitoring_error"])
    assert run.data.metrics["new_files"] == 6 and run.data.params["threshold"] == "0.1"


def test_drifted_batch_trains_challenger_and_promotes_it(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(10, drift=1.0, seed=6))

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    assert summary["monitoring_error"] > 0.10
    assert summary["challenger_error"] < summary["production_error"]
    assert summary["challenger_version"] == summary["production_version_after"] == "2"
    assert summary["production_version_before"] == "1"
    client = production.client()
    assert production.alias_version() == "2"
    assert len(summary["archived_files"]) == 10 and snapshot(production.new_dir) == {}
    timings = summary["timings"]
    assert set(timings) == {"trigger", "open", "monitor", "drift", "history", "train",
                            "log_register", "compare", "report", "promote", "archive"}
    assert 0 < timings["drift"] <= timings["monitor"]
    assert 0 < timings["report"] <= timings["compare"]

    # Both versions say what was decided and on which figures.
    replaced, promoted = (client.get_model_version("classifier", v).tags for v in "12")
    assert promoted["decision"] == "promoted" and promoted["previous_production_version"] == "1"
    assert float(promoted["challenger_error"]) == pytest.approx(summary["challenger_error"])
    assert float(promoted["production_error"]) == pytest.approx(summary["production_error"])
    # Version 1 came first: its predecessor stays "none", never itself; the figures of the
    # challenge that replaced it are the challenger's, in its tag challenge.v2.
    assert replaced["decision"] == "replaced" and replaced["replaced_by"] == "2"
    assert replaced["previous_production_version"] == "none"
    assert "challenger_error" not in replaced
    assert replaced["challenge.v2"].startswith("replaced: challenger is better")
    assert "promoted" in client.get_model_version("classifier", "2").description

    # The retraining run holds its lineage: manifest, datasets, signature, input example.
    run = client.get_run(summary["retraining_run_id"])
    assert run.info.run_name == "ModelRetraining" and run.info.status == "FINISHED"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "classifier-retraining"
    manifest = json.loads(open(client.download_artifacts(
        run.info.run_id, "data_manifest.json", str(production.root))).read())["files"]
    roles = {entry["name"]: entry["role"] for entry in manifest}
    assert sorted(name for name, role in roles.items() if role == "heldout") == \
        summary["heldout_files"]
    assert sum(role == "history" for role in roles.values()) == 8
    assert all(len(entry["sha256"]) == 64 and entry["rows"] == 300 for entry in manifest)
    # The chosen training window's files, never a held-out one (see test_windows.py).
    trained = [entry for entry in manifest if entry.get("in_window")]
    assert trained and all(entry["role"] != "heldout" for entry in trained)
    assert run.data.metrics["training_rows"] == 300 * len(trained)
    contexts = sorted(i.tags[0].value for i in run.inputs.dataset_inputs)
    history_trained = any(roles[entry["name"]] == "history" for entry in trained)
    assert contexts == ["evaluation", "training"] + ["training"] * history_trained
    info = mlflow.models.get_model_info("models:/classifier/2")
    assert info.signature is not None
    assert set(info.signature.inputs.input_names()) == {
        "temperature", "vibration", "operating_hours", "pressure", "machine_type", "serviced"}
    assert info.saved_input_example_info is not None


def test_rejected_challenger_keeps_production_and_still_archives_batch(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(6, drift=1.0, seed=7))

    # No challenger can be better by a whole misclassification rate of 1.
    code, summary = cycle(production, capsys, "--min-improvement", "1.0")

    assert code == 0 and summary["outcome"] == "rejected"
    assert summary["challenger_version"] == "2"
    assert summary["production_version_after"] == "1"
    client = production.client()
    assert production.alias_version() == "1"
    assert client.get_model_version("classifier", "2").tags["decision"] == "rejected"
    assert "not better enough" in client.get_model_version("classifier", "2").description
    # Archived anyway: otherwise the same rejected batch is retrained every night.
    assert snapshot(production.new_dir) == {} and len(summary["archived_files"]) == 6


MEMORISING_DOMAIN = '''
import numpy as np
from sklearn.tree import DecisionTreeClassifier
ERROR_METRIC_NAME = "misclassification_rate"

def train_model(features, labels, random_state=0):
    # Unlimited depth: it reproduces every training label, noise included.
    return DecisionTreeClassifier(random_state=random_state).fit(features, labels)

def error_metric(labels, predictions):
    return float(np.mean(np.asarray(labels) != np.asarray(predictions)))
'''


def noise_files(count, seed, rows=120):
    # Labels carry no signal: the best any model can do is predict the majority class.
    generator = np.random.default_rng(seed)
    return [pd.DataFrame({"x1": generator.normal(size=rows), "x2": generator.normal(size=rows),
                          "label": np.where(generator.random(rows) < 0.7, "common", "rare")})
            for _ in range(count)]


@pytest.fixture
def memorising_domain(workspace, capsys):
    """Noise history, a majority-class production model, and a domain that memorises."""
    from sklearn.dummy import DummyClassifier

    domain = workspace.root / "memorising_domain.py"
    domain.write_text(MEMORISING_DOMAIN)
    history = noise_files(6, seed=10)
    write_csvs(workspace.used_dir, "history", history)
    frame = pd.concat(history, ignore_index=True)
    register_pickle(workspace, DummyClassifier(strategy="most_frequent").fit(
        frame[["x1", "x2"]], frame["label"]), capsys, extra=["--domain-file", str(domain)])
    return domain


def test_challenger_that_only_memorised_its_training_data_is_not_promoted(
        workspace, memorising_domain, capsys):
    domain = memorising_domain
    write_csvs(workspace.new_dir, "batch", noise_files(10, seed=11))

    code, summary = cycle(workspace, capsys, "--domain-file", str(domain),
                          "--error-threshold", "0", "--holdout-fraction", "0.3")

    assert code == 0 and summary["outcome"] == "rejected", summary["reason"]
    # On its own training rows this tree has error 0; scored where it was not trained it is
    # worse than always answering "common".
    assert summary["challenger_error"] > summary["production_error"] > 0.15
    assert workspace.alias_version() == "1"


def test_dry_run_decides_and_changes_nothing(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(6, drift=1.0, seed=8))
    files_before = snapshot(production.new_dir), snapshot(production.used_dir)
    client = production.client()
    runs_before = len(mlflow.search_runs(search_all_experiments=True))

    code, summary = cycle(production, capsys, "--dry-run")

    assert code == 0 and summary["dry_run"] is True
    assert summary["outcome"] == "promoted"  # what would happen
    assert summary["challenger_version"] is None and summary["archived_files"] is None
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == files_before
    assert [str(v.version) for v in client.search_model_versions("name='classifier'")] == ["1"]
    assert production.alias_version() == "1"
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before


def test_same_name_in_history_is_never_overwritten(production, capsys):
    old = production.used_dir / "history_000.csv"
    old_bytes = old.read_bytes()
    batch = machine_files(6, drift=0.0, seed=9)
    write_csvs(production.new_dir, "history", batch)  # history_000.csv ... clash with used_gts/
    new_bytes = (production.new_dir / "history_000.csv").read_bytes()

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "healthy"
    assert old.read_bytes() == old_bytes
    renamed = [name for name in summary["archived_files"] if name.startswith("history_000.")]
    assert len(renamed) == 1 and renamed[0] != "history_000.csv"
    assert (production.used_dir / renamed[0]).read_bytes() == new_bytes


def test_no_production_alias_fails_with_the_fix(workspace):
    write_csvs(workspace.used_dir, "history", machine_files(2, drift=0.0, seed=1))
    write_csvs(workspace.new_dir, "batch", machine_files(5, drift=0.0, seed=2))
    # A store that exists but holds no model: a cycle never creates one (test_store_faults).
    workspace.client().search_experiments()

    done = run_script("pipeline_orchestrator.py", [*workspace.flags, "--min-new-files", "5"])

    assert done.returncode == 1
    last_line = done.stderr.strip().splitlines()[-1]
    assert "no alias 'production'" in last_line and "register_first_model.py" in last_line
    assert len(snapshot(workspace.new_dir)) == 5


def test_bad_setting_is_a_usage_error(workspace):
    done = run_script("pipeline_orchestrator.py", [*workspace.flags],
                      env_extra={"RETRAIN_HOLDOUT_FRACTION": "1.5"})
    assert done.returncode == 2
    assert "RETRAIN_HOLDOUT_FRACTION" in done.stderr and "Fix:" in done.stderr


def test_second_run_while_one_holds_the_lock_exits_75(production):
    from retraining.runlock import exclusive_run

    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=4))
    with exclusive_run(production.new_dir):
        done = run_script("pipeline_orchestrator.py",
                          [*production.flags, "--min-new-files", "5"])
    assert done.returncode == 75
    assert "another cycle" in done.stderr and "pid" in done.stderr
    assert len(snapshot(production.new_dir)) == 5


def test_per_file_error_is_averaged_over_files(production, capsys):
    domain = production.root / "per_file_domain.py"
    source = (PROJECT_DIR / "train_classification_model.py").read_text()
    domain.write_text(source.replace("ERROR_PER_FILE = False", "ERROR_PER_FILE = True"))
    # Files of different sizes: a pooled rate and a mean of per-file rates differ.
    files = machine_files(3, drift=1.0, seed=12, rows=40) + machine_files(3, drift=0.0, seed=13,
                                                                             rows=400)
    write_csvs(production.new_dir, "batch", files)
    from retraining.datafiles import list_data_files, load_files

    production.client()  # the store is ready before loading from it
    loaded_model = mlflow.sklearn.load_model("models:/classifier/1")
    read = load_files(list_data_files(production.new_dir), "label", lambda frame, path: frame)
    per_file = [np.mean(loaded_model.predict(f.features) != f.labels) for f in read]
    expected = np.mean(per_file)
    pooled = np.mean(np.concatenate([loaded_model.predict(f.features) != f.labels for f in read]))
    assert abs(expected - pooled) > 0.01  # the test can tell the two apart

    code, summary = cycle(production, capsys, "--domain-file", str(domain), "--dry-run")

    assert code == 0
    assert summary["monitoring_error"] == pytest.approx(expected)


def test_redelivered_history_is_quarantined_never_scored_as_unseen(workspace, memorising_domain,
                                                                   capsys):
    domain = memorising_domain
    # The same history again under new names, plus genuinely new files.
    for path in sorted(workspace.used_dir.glob("*.csv")):
        (workspace.new_dir / ("redelivered_" + path.name)).write_bytes(path.read_bytes())
    write_csvs(workspace.new_dir, "fresh", noise_files(5, seed=12))

    code, summary = cycle(workspace, capsys, "--domain-file", str(domain),
                          "--error-threshold", "0", "--holdout-fraction", "0.3")

    assert code == 0 and summary["outcome"] == "rejected", summary["reason"]
    redelivered = {entry["file"]: entry["reason"] for entry in summary["quarantined_files"]}
    assert len(redelivered) == len(list(workspace.used_dir.glob("history_*.csv")))
    for name, reason in redelivered.items():
        original = name[len("redelivered_"):]
        assert f"same content as {original} in used_gts/" in reason
    assert all(name.startswith("fresh_") for name in summary["heldout_files"])
    assert summary["challenger_error"] > 0.15


def test_batch_of_only_redelivered_files_is_quarantined_and_history_untouched(production,
                                                                              capsys):
    for path in sorted(production.used_dir.glob("*.csv"))[:5]:
        (production.new_dir / ("again_" + path.name)).write_bytes(path.read_bytes())
    batch, history = snapshot(production.new_dir), snapshot(production.used_dir)

    # Production has error 0 on its own training data: a negative threshold forces retraining.
    code, summary = cycle(production, capsys, "--error-threshold=-1")

    assert code == 0 and summary["outcome"] == "skipped", summary["reason"]
    assert len(summary["quarantined_files"]) == 5 and snapshot(production.new_dir) == {}
    assert snapshot(production.used_dir) == history
    quarantined = snapshot(production.quarantine_dir)
    assert {name: quarantined[name] for name in batch} == batch


def test_same_content_twice_in_one_batch_keeps_the_first(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(6, drift=0.0, seed=16))
    copy = production.new_dir / "batch_005.csv"
    copy.write_bytes((production.new_dir / "batch_001.csv").read_bytes())

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "healthy"
    [entry] = summary["quarantined_files"]
    assert entry["file"] == "batch_005.csv"
    assert "same content as batch_001.csv in this batch" in entry["reason"]
    assert "batch_001.csv" in summary["archived_files"]


def test_dry_run_reports_the_alias_as_it_still_is(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(6, drift=1.0, seed=8))
    code, summary = cycle(production, capsys, "--dry-run")
    assert summary["outcome"] == "promoted"
    assert summary["production_version_before"] == summary["production_version_after"] == "1"


def test_file_with_labels_of_another_kind_is_named_and_set_aside(production, capsys):
    files = machine_files(6, drift=0.0, seed=14)
    files[2]["label"] = files[2]["label"].map({"ok": 0, "worn": 1, "fault": 2})
    write_csvs(production.new_dir, "batch", files)

    code, summary = cycle(production, capsys)

    # The model's classes are text; the integer file would otherwise score as all wrong.
    assert code == 0 and summary["outcome"] == "healthy"
    [entry] = summary["quarantined_files"]
    assert entry["file"] == "batch_002.csv" and "integer labels" in entry["reason"]
    assert "batch_002.csv" not in summary["archived_files"]
    assert len(summary["archived_files"]) == 5


def test_lock_of_a_killed_run_never_blocks_the_next(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=15))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from retraining.runlock import exclusive_run\n"
         "with exclusive_run(Path(sys.argv[1])):\n    print('held', flush=True)\n"
         "    time.sleep(600)\n", str(production.new_dir)],
        cwd=PROJECT_DIR, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    blocked = run_script("pipeline_orchestrator.py", [*production.flags, "--min-new-files", "5"])
    assert blocked.returncode == 75 and str(holder.pid) in blocked.stderr

    holder.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
    holder.wait()
    assert (production.new_dir / ".retraining.lock").exists()
    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "healthy"


def test_a_train_model_that_raises_is_one_line_naming_it_and_moves_nothing(production,
                                                                          tmp_path):
    domain = tmp_path / "domain.py"
    domain.write_text("from train_classification_model import error_metric\n"
                      "def train_model(features, labels):\n"
                      "    raise ValueError('no column called wear_index')\n")
    write_csvs(production.new_dir, "batch", machine_files(6, drift=1.0, seed=7))
    before = snapshot(production.new_dir)

    finished = run_script("pipeline_orchestrator.py", [*production.flags, "--min-new-files", "5",
                                                       "--domain-file", str(domain)])

    assert finished.returncode == 1
    stderr = finished.stderr
    line = stderr.strip().splitlines()[-1]
    assert "train_model in domain.py raised ValueError: no column called wear_index" in line
    assert "Fix: correct train_model where the trace above points" in line
    assert "Traceback" in stderr and "unexpected" not in line
    assert snapshot(production.new_dir) == before and production.alias_version() == "1"

