"""A rare class is watched on its own: monitoring retrains when production loses it, although
the overall error stays under the threshold, and the gate refuses a challenger that loses a
class production recalls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from demo.generate_stream import readings
from retraining.classes import (
    collapsed_against,
    collapsed_since_baseline,
    count_classes,
    parse_baseline,
)
from tests.conftest import cycle, register_pickle, train_on_folder, write_csvs

# About 2% of rows are positive: the positives' rule moves from x1 to x2.
RARE = 2.05


def rare_files(count: int, seed: int, changed: bool, rows: int = 300) -> list[pd.DataFrame]:
    generator = np.random.default_rng(seed)
    files = []
    for _ in range(count):
        x = generator.normal(size=(rows, 4))
        positive = x[:, 1 if changed else 0] > RARE
        files.append(pd.DataFrame(x.round(4), columns=["x1", "x2", "x3", "x4"])
                     .assign(label=positive.astype(int)))
    return files


def positive_recall(model, frames) -> float:
    frame = pd.concat(frames, ignore_index=True)
    positives = frame["label"] == 1
    return float((model.predict(frame.drop(columns="label"))[positives] == 1).mean())


@pytest.fixture
def rare_production(workspace, capsys):
    write_csvs(workspace.used_dir, "history", rare_files(8, seed=1, changed=False))
    register_pickle(workspace, train_on_folder(workspace.used_dir), capsys)
    return workspace


def test_a_collapsed_rare_class_retrains_although_the_error_is_under_the_threshold(
        rare_production, capsys):
    workspace = rare_production
    write_csvs(workspace.new_dir, "calm", rare_files(15, seed=2, changed=False))
    code, calm = cycle(workspace, capsys, "--min-new-files", "15")
    assert code == 0 and calm["outcome"] == "healthy", calm["reason"]
    # A version no cycle judged takes its first monitored batch as its baseline.
    tags = workspace.client().get_model_version("classifier", "1").tags
    baseline = parse_baseline(tags["class_recall_baseline"])
    assert baseline["1"][1] > 50 and baseline["1"][0] / baseline["1"][1] > 0.8
    assert tags["baseline_from"] == "the first batch it monitored (15 files)"

    write_csvs(workspace.new_dir, "changed", rare_files(15, seed=3, changed=True))
    code, summary = cycle(workspace, capsys, "--min-new-files", "15")

    assert code == 0
    assert summary["monitoring_error"] < 0.10  # the overall error alone says healthy
    monitoring = workspace.client().get_run(summary["monitoring_run_id"])
    assert "a class collapsed: recall of class '1' 0.0" in monitoring.data.tags["reason"]
    assert "for its baseline, p = " in monitoring.data.tags["reason"]
    assert monitoring.data.tags["decision"] == "retrain"
    assert monitoring.data.tags["collapsed_classes"] == "1"
    assert monitoring.data.metrics["recall.1"] < 0.2 < 0.9 < monitoring.data.metrics["recall.0"]
    assert {"precision.0", "support.1"} <= set(monitoring.data.metrics)
    assert summary["outcome"] == "promoted", summary["reason"]
    # Within one cycle the class is back above half its previous recall, on fresh rows.
    import mlflow

    mlflow.set_tracking_uri(workspace.tracking_uri)
    promoted = mlflow.sklearn.load_model("models:/classifier@production")
    fresh = rare_files(100, seed=99, changed=True)
    assert positive_recall(promoted, fresh) > 0.5 * baseline["1"][0] / baseline["1"][1]
    retraining = workspace.client().get_run(summary["retraining_run_id"])
    assert retraining.data.metrics["challenger_recall.1"] > retraining.data.metrics[
        "production_recall.1"]
    # The promoted version carries its own baseline, from the held-out files it was judged on.
    tags = workspace.client().get_model_version("classifier", "2").tags
    assert tags["baseline_from"] == (
        f"its {len(summary['heldout_files'])} held-out files when it was judged")


DROPS_FAULTS = """
from train_classification_model import ERROR_METRIC_NAME, error_metric, prepare_file
from train_classification_model import train_model as _train_model


def train_model(features, labels, random_state=0):
    # A domain that filters out a class as too rare to learn: it never predicts it.
    keep = (labels != "fault").to_numpy()
    return _train_model(features[keep], labels[keep], random_state=random_state)
"""


def test_a_challenger_that_loses_a_class_production_recalls_is_not_promoted(production,
                                                                          capsys):
    domain = production.root / "drops_faults.py"
    domain.write_text(DROPS_FAULTS)
    generator = np.random.default_rng(5)
    # The worn policy changes, so production is wrong on a fifth of the rows; faults stay.
    write_csvs(production.new_dir, "batch",
               [readings(300, 0.0, generator, worn_after_hours=3_000) for _ in range(10)])
    flags = ("--domain-file", str(domain), "--min-new-files", "10")

    code, summary = cycle(production, capsys, *flags)

    assert code == 0 and summary["outcome"] == "rejected", summary["reason"]
    assert summary["challenger_error"] < summary["production_error"]
    assert summary["reason"].startswith(
        "challenger loses a class that production recalls: recall of class 'fault' 0.00 (0 of ")
    assert "for production, p = " in summary["reason"]
    assert production.alias_version() == "1"
    retraining = production.client().get_run(summary["retraining_run_id"])
    assert retraining.data.metrics["challenger_recall.fault"] == 0.0
    assert retraining.data.metrics["production_recall.fault"] > 0.5


def test_class_counts_and_collapse_tests_on_hand_made_rows():
    labels = ["a"] * 90 + ["b"] * 10
    good = ["a"] * 90 + ["b"] * 9 + ["a"]
    blind = ["a"] * 100
    counts = count_classes(labels, good)
    assert (counts.support, counts.hits, counts.predicted) == (
        {"a": 90, "b": 10}, {"a": 90, "b": 9}, {"a": 91, "b": 9})
    assert counts.recall("b") == 0.9 and counts.precision("a") == 90 / 91
    assert parse_baseline(counts.baseline_json()) == {"a": (90, 90), "b": (9, 10)}

    [lost] = collapsed_since_baseline({"a": (90, 90), "b": (9, 10)},
                                      count_classes(labels, blind), 0.5, 0.95)
    assert lost.label == "b" and lost.after == (0, 10) and lost.p_value < 0.05
    # Half the recall, but on too few rows to say it is not chance.
    assert collapsed_since_baseline({"b": (2, 2)}, count_classes(["b", "b"], ["b", "a"]),
                                    0.4, 0.95) == []
    [paired] = collapsed_against(labels, good, blind, 0.5, 0.95)
    assert paired.label == "b" and paired.before == (9, 10) and paired.reference == "production"
    # Losing less than half is no collapse, however significant.
    assert collapsed_against(labels, good, ["a"] * 95 + ["b"] * 5, 0.5, 0.95) == []
