"""The tuned-threshold example domain: calibrated probabilities, an F1-optimal threshold
chosen inside the training rows, reported on the retraining run."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import (
    PROJECT_DIR,
    changed_concept_files,
    machine_files,
    run_script,
    train_and_register_first,
    write_csvs,
)

EXAMPLE = PROJECT_DIR / "examples" / "tuned_threshold" / "train_classification_model.py"


def test_a_retrained_tuned_model_reports_its_threshold_and_was_never_tuned_on_heldout(
        workspace):
    domain = ["--domain-file", str(EXAMPLE), "--quarantine-dir", str(workspace.quarantine_dir)]
    write_csvs(workspace.used_dir, "history", machine_files(10, drift=0.0, seed=1))
    train_and_register_first(workspace, domain)
    # Hot machines fault by a rule history never reached: production misses those faults.
    write_csvs(workspace.new_dir, "hot", changed_concept_files(15, seed=2))

    done = run_script("pipeline_orchestrator.py",
                      [*workspace.flags, *domain, "--min-new-files", "15", "--json"])

    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["outcome"] == "promoted", summary["reason"]
    run = workspace.client().get_run(summary["retraining_run_id"])
    threshold = run.data.metrics["decision_threshold"]
    assert 0.0 < threshold < 1.0 and threshold != 0.5
    assert 0.5 < run.data.metrics["decision_threshold_score"] <= 1.0
    assert run.data.params["model_class"] == "TunedThresholdClassifierCV"
    # The threshold is the model's own: what it predicts follows it, as loaded from MLflow.
    model = workspace.load_version(summary["challenger_version"])
    assert np.isclose(model.best_threshold_, threshold)
    # Chosen inside the training rows: the held-out files are not among them.
    manifest = workspace.client().download_artifacts(run.info.run_id, "data_manifest.json",
                                                     str(workspace.root))
    roles = {entry["name"]: entry["role"] for entry in json.load(open(manifest))["files"]}
    assert all(roles[name] == "heldout" for name in summary["heldout_files"])
