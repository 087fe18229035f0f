"""Data drift in the monitoring run: the statistics, and the trigger that retrains on them."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from retraining.drift import measure_drift
from tests.conftest import cycle, machine_files, write_csvs


def test_tiny_shift_on_many_rows_is_significant_but_below_the_effect_floor():
    generator = np.random.default_rng(0)
    reference = pd.DataFrame({"x": generator.normal(0, 1, 20_000)})
    new = pd.DataFrame({"x": generator.normal(0.08, 1, 20_000)})

    [feature] = measure_drift(reference, new, ["x"], p_value=0.01, min_effect=0.1)

    # Significance alone would flag it; the effect floor keeps it from counting as drift.
    assert feature.p_value < 0.01 and feature.effect < 0.1 and not feature.drifted
    [strict] = measure_drift(reference, new, ["x"], p_value=0.01, min_effect=0.0)
    assert strict.drifted


@pytest.mark.parametrize("rows", [(120, 9_000), (1_001, 1_000), (2_000, 3_000)])
def test_large_samples_get_the_limit_p_value_and_the_same_verdict_as_the_exact_one(rows):
    from scipy import stats

    from retraining.drift import EXACT_KS_CELLS

    generator = np.random.default_rng(rows[0])
    assert rows[0] * rows[1] > EXACT_KS_CELLS
    for shift in np.linspace(0.0, 0.5, 21):
        reference = generator.normal(0, 1, rows[0])
        new = generator.normal(shift, 1, rows[1])
        [feature] = measure_drift(pd.DataFrame({"x": reference}), pd.DataFrame({"x": new}),
                                  ["x"], p_value=0.01, min_effect=0.1)
        exact = stats.ks_2samp(reference, new, method="exact")
        asymptotic = stats.ks_2samp(reference, new, method="asymp")

        assert feature.p_value == asymptotic.pvalue
        if 0.005 <= exact.pvalue <= 0.02:  # around the default p-value, 0.01
            assert feature.p_value == pytest.approx(exact.pvalue, rel=0.03)
        elif 0.001 <= exact.pvalue <= 0.1:
            assert feature.p_value == pytest.approx(exact.pvalue, rel=0.08)
        if not 0.0098 < exact.pvalue < 0.0102:  # a verdict on the edge may go either way
            assert feature.drifted == (exact.pvalue < 0.01 and exact.statistic >= 0.1)
    # Small samples keep scipy's own choice, the exact p-value.
    reference, new = generator.normal(0, 1, 300), generator.normal(0.3, 1, 400)
    [small] = measure_drift(pd.DataFrame({"x": reference}), pd.DataFrame({"x": new}), ["x"],
                            p_value=0.01, min_effect=0.1)
    assert small.p_value == stats.ks_2samp(reference, new, method="exact").pvalue


def test_category_mix_change_is_drift_and_same_mix_is_not():
    generator = np.random.default_rng(1)
    reference = pd.DataFrame({"kind": generator.choice(["a", "b", "c"], 3000, p=[.6, .3, .1])})
    same = pd.DataFrame({"kind": generator.choice(["a", "b", "c"], 1000, p=[.6, .3, .1])})
    moved = pd.DataFrame({"kind": generator.choice(["a", "b", "c"], 1000, p=[.2, .3, .5])})

    [unchanged] = measure_drift(reference, same, ["kind"], p_value=0.01, min_effect=0.1)
    [changed] = measure_drift(reference, moved, ["kind"], p_value=0.01, min_effect=0.1)

    assert unchanged.test == "chi2" and not unchanged.drifted
    assert changed.drifted and changed.effect > 0.3


def monitoring_run(workspace, summary):
    return mlflow.MlflowClient(workspace.tracking_uri).get_run(summary["monitoring_run_id"])


def test_drift_trigger_retrains_a_shifted_batch_whose_error_is_within_threshold(
        production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(6, drift=1.0, seed=21))

    # A threshold the error cannot cross: only drift can start the retraining.
    code, summary = cycle(production, capsys, "--error-threshold", "0.99",
                          "--drift-trigger", "0.2")

    assert code == 0 and summary["outcome"] in ("promoted", "rejected"), summary["reason"]
    assert summary["challenger_version"] == "2"
    assert summary["drift_share"] > 0.2
    run = monitoring_run(production, summary)
    assert run.data.tags["decision"] == "retrain"
    # The monitoring run says why it retrained: drift, not the error.
    assert "within the threshold" in run.data.tags["reason"]
    assert "passed --drift-trigger 0.20" in run.data.tags["reason"]
    assert "temperature" in run.data.tags["reason"]
    assert run.data.metrics["drift_share"] == pytest.approx(summary["drift_share"])
    assert run.data.params["drift_trigger"] == "0.2"
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="drift.csv",
                                                tracking_uri=production.tracking_uri)
    table = pd.read_csv(local).set_index("feature")
    assert bool(table.loc["temperature", "drifted"]) and table.loc["temperature", "test"] == "ks"
    assert table.loc["machine_type", "test"] == "chi2"


def test_drift_trigger_stays_quiet_on_a_batch_like_history(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(6, drift=0.0, seed=22))

    code, summary = cycle(production, capsys, "--error-threshold", "0.99",
                          "--drift-trigger", "0.2")

    assert code == 0 and summary["outcome"] == "healthy", summary["reason"]
    assert summary["drift_share"] <= 0.2 and "drift" not in summary["reason"]
    run = monitoring_run(production, summary)
    assert run.data.metrics["drift_share"] == pytest.approx(summary["drift_share"])
    assert run.data.params["drift_trigger"] == "0.2"


def test_drift_is_measured_but_does_not_decide_when_the_trigger_is_off(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(6, drift=1.0, seed=23))

    code, summary = cycle(production, capsys, "--error-threshold", "0.99")

    assert code == 0 and summary["outcome"] == "healthy", summary["reason"]
    assert summary["drift_share"] > 0.2
    run = monitoring_run(production, summary)
    assert run.data.params["drift_trigger"] == "off"
    assert "drift.csv" in [item.path for item in
                           mlflow.MlflowClient(production.tracking_uri)
                           .list_artifacts(run.info.run_id)]


def test_an_unreadable_history_file_is_left_out_of_the_reference_not_fatal(production, capsys):
    (production.used_dir / "broken.csv").write_bytes(b"\x00\x01 not a csv")
    write_csvs(production.new_dir, "batch", machine_files(6, drift=0.0, seed=24))

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "healthy", summary
    run = monitoring_run(production, summary)
    assert run.data.metrics["drift_reference_files"] == 8
