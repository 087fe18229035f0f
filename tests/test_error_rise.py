"""A slow drift is seen before it crosses the threshold: production's error is compared with
its own error when it was judged, and a rise retrains (how sure: --rise-confidence)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retraining.baseline import parse_units, units_json
from retraining.gate import ErrorUnits
from tests.conftest import cycle, machine_files, write_csvs


@pytest.fixture
def baselined(production, capsys):
    """Version 1 with its first monitored batch, from the history's regime, as baseline."""
    write_csvs(production.new_dir, "calm", machine_files(15, drift=0.0, seed=61))
    code, summary = cycle(production, capsys, "--min-new-files", "15")
    assert code == 0 and summary["outcome"] == "healthy", summary["reason"]
    tags = production.client().get_model_version("classifier", "1").tags
    assert tags["baseline_from"] == "the first batch it monitored (15 files)"
    assert parse_units(tags["error_baseline"]).mean == pytest.approx(summary["monitoring_error"])
    return production


def test_a_significant_rise_under_the_threshold_retrains(baselined, capsys):
    # Half-way to the drifted regime: the error triples but stays under 0.10.
    write_csvs(baselined.new_dir, "drifting", machine_files(15, drift=0.5, seed=62))

    code, summary = cycle(baselined, capsys, "--min-new-files", "15",
                          "--rise-confidence", "0.95")

    assert code == 0 and summary["monitoring_error"] < 0.10
    monitoring = baselined.client().get_run(summary["monitoring_run_id"])
    reason = monitoring.data.tags["reason"]
    assert "within the threshold 0.1000; its misclassification_rate rose since " \
           "it was judged: 0.0" in reason
    rise = monitoring.data.metrics["error_rise"]
    assert f"then, up {rise:.4f}, at least {monitoring.data.metrics['error_rise_low']:.4f} " \
           "at 95% confidence (--rise-confidence)" in reason
    assert monitoring.data.tags["decision"] == "retrain"
    metrics = monitoring.data.metrics
    assert 0 < metrics["error_rise_low"] <= metrics["error_rise"] <= metrics["error_rise_high"]
    assert metrics["baseline_error"] + metrics["error_rise"] == pytest.approx(
        summary["monitoring_error"])
    assert summary["outcome"] == "promoted", summary["reason"]
    heldout = len(summary["heldout_files"])

    # The promoted version's baseline is its held-out files; its first batch as production,
    # of the same regime, joins it.
    write_csvs(baselined.new_dir, "drifting_on", machine_files(15, drift=0.5, seed=64))
    code, summary = cycle(baselined, capsys, "--min-new-files", "15")
    assert code == 0 and summary["outcome"] == "healthy", summary["reason"]
    tags = baselined.client().get_model_version("classifier", "2").tags
    assert tags["baseline_from"] == (f"its {heldout} held-out files when it was judged and the "
                                     "first batch it monitored (15 files)")
    pooled = parse_units(tags["error_baseline"])
    assert len(set(pooled.groups.tolist())) == heldout + 15
    classes = json.loads(tags["class_recall_baseline"])
    assert sum(rows for _, rows in classes.values()) == heldout * 300 + 15 * 300


def test_without_the_rise_trigger_only_the_threshold_retrains(baselined, capsys):
    write_csvs(baselined.new_dir, "drifting", machine_files(15, drift=0.5, seed=62))

    code, summary = cycle(baselined, capsys, "--min-new-files", "15", "--no-rise-trigger")

    assert code == 0 and summary["outcome"] == "healthy", summary["reason"]
    # Measured and recorded all the same.
    monitoring = baselined.client().get_run(summary["monitoring_run_id"])
    assert monitoring.data.metrics["error_rise_low"] > 0


def test_by_default_any_rise_retrains_though_too_small_to_be_significant(baselined, capsys):
    # In a slow drift the error grows by less each night than one batch can show at 95%: by
    # default a rise the bootstrap's median sees retrains, and the gate judges the challenger.
    write_csvs(baselined.new_dir, "slightly_on", machine_files(15, drift=0.1, seed=71))

    code, sure = cycle(baselined, capsys, "--min-new-files", "15", "--dry-run",
                       "--rise-confidence", "0.95")
    assert code == 0 and sure["outcome"] == "healthy", sure["reason"]
    code, summary = cycle(baselined, capsys, "--min-new-files", "15")

    assert code == 0 and summary["outcome"] != "healthy", summary["reason"]
    assert summary["monitoring_error"] == sure["monitoring_error"] < 0.10
    monitoring = baselined.client().get_run(summary["monitoring_run_id"])
    assert "rose since it was judged" in monitoring.data.tags["reason"]
    assert "at 50% confidence (--rise-confidence)" in monitoring.data.tags["reason"]
    assert monitoring.data.tags["decision"] == "retrain"


def test_an_error_at_or_under_its_baseline_does_not_retrain(baselined, capsys):
    write_csvs(baselined.new_dir, "calm_again", machine_files(15, drift=0.0, seed=63))

    code, summary = cycle(baselined, capsys, "--min-new-files", "15")

    assert code == 0 and summary["outcome"] == "healthy", summary["reason"]
    monitoring = baselined.client().get_run(summary["monitoring_run_id"])
    assert monitoring.data.metrics["error_rise_low"] <= 0


def test_a_baseline_of_many_slices_fits_a_tag_and_keeps_its_mean():
    generator = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 25)
    weights = generator.integers(25, 40, len(groups)).astype(float)
    errors = generator.uniform(0, 0.2, len(groups))
    units = ErrorUnits(groups, weights, errors, sliced=True)

    text = units_json(units)

    assert len(text) <= 5000
    kept = parse_units(text)
    assert len(kept.errors) <= 120 and kept.sliced
    assert kept.mean == pytest.approx(units.mean, abs=1e-6)
    assert sorted(set(kept.groups.tolist())) == list(range(40))
