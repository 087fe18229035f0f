"""The reviewer's report: the figures are scikit-learn's own on the held-out labels as they
are (strings, several classes), whatever the report does to compute them quickly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn import metrics
from sklearn.linear_model import LogisticRegression, Perceptron

from retraining.report import ranked_by_score, write_heldout_report


def labelled_rows(rows: int, seed: int):
    generator = np.random.default_rng(seed)
    features = pd.DataFrame(generator.normal(size=(rows, 3)), columns=["a", "b", "c"])
    score = features["a"] + 0.5 * generator.normal(size=rows)
    labels = np.where(score < -0.5, "cold", np.where(score < 0.5, "mild", "hot"))
    return features, pd.Series(labels)


def test_figures_match_scikit_learn_on_the_string_labels_themselves(tmp_path):
    features, labels = labelled_rows(3000, seed=1)
    train_features, train_labels = labelled_rows(2000, seed=2)
    # Production never saw "hot" and has no probabilities; the challenger has both.
    seen = train_labels != "hot"
    production = Perceptron(random_state=0).fit(train_features[seen], train_labels[seen])
    challenger = LogisticRegression().fit(train_features, train_labels)
    predictions = {"production": production.predict(features),
                   "challenger": challenger.predict(features)}

    logged = write_heldout_report(
        tmp_path, {"production": production, "challenger": challenger}, features, labels,
        predictions, {"production": 0.5, "challenger": 0.1}, "misclassification_rate",
        [{"file": "a.csv", "rows": 3000}])

    for role, predicted in predictions.items():
        assert logged[f"{role}_accuracy"] == pytest.approx(
            metrics.accuracy_score(labels, predicted))
        assert logged[f"{role}_f1"] == pytest.approx(
            metrics.f1_score(labels, predicted, average="macro"))
        assert logged[f"{role}_recall"] == pytest.approx(
            metrics.recall_score(labels, predicted, average="macro"))
    probabilities = challenger.predict_proba(features)
    assert logged["challenger_roc_auc"] == pytest.approx(metrics.roc_auc_score(
        labels, probabilities, multi_class="ovr", average="macro", labels=challenger.classes_))
    assert logged["challenger_log_loss"] == pytest.approx(
        metrics.log_loss(labels, probabilities, labels=challenger.classes_))
    assert "production_roc_auc" not in logged and "production_log_loss" not in logged

    report = (tmp_path / "classification_report.txt").read_text()
    assert report == "\n".join(
        f"== {role} ==\n" + metrics.classification_report(labels, predicted, zero_division=0)
        for role, predicted in predictions.items())
    assert {"comparison.csv", "comparison.md", "heldout_per_file.csv", "confusion_matrix.png",
            "roc_curve.png", "precision_recall_curve.png"} <= {p.name for p in
                                                               tmp_path.iterdir()}


def test_binary_figures_are_those_of_the_second_class(tmp_path):
    features, labels = labelled_rows(2000, seed=3)
    labels = labels.where(labels == "hot", "not_hot")
    train_features, train_labels = labelled_rows(1000, seed=4)
    model = LogisticRegression().fit(train_features,
                                     train_labels.where(train_labels == "hot", "not_hot"))
    predicted = model.predict(features)

    logged = write_heldout_report(tmp_path, {"challenger": model}, features, labels,
                                  {"challenger": predicted}, {"challenger": 0.1}, "error",
                                  [{"file": "a.csv", "rows": 2000}])

    # scikit-learn's positive class is the second of classes_: "not_hot" sorts after "hot".
    assert list(model.classes_) == ["hot", "not_hot"]
    assert logged["challenger_precision"] == pytest.approx(
        metrics.precision_score(labels, predicted, pos_label="not_hot"))
    assert logged["challenger_roc_auc"] == pytest.approx(
        metrics.roc_auc_score(labels == "not_hot", model.predict_proba(features)[:, 1]))


# Scores as a model gives them: few distinct values (a tree's leaves), so ties are the rule.
scored_rows = st.lists(st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0])
                                 | st.floats(0, 1)), min_size=2, max_size=60).filter(
    lambda rows: 0 < sum(positive for positive, _ in rows) < len(rows))


@given(scored_rows)
def test_the_curves_drawn_from_ranked_rows_are_those_of_the_rows_as_they_came(rows):
    positive = np.array([row[0] for row in rows])
    scores = np.array([row[1] for row in rows])

    truth, ranked = ranked_by_score(positive, scores)

    assert np.all(np.diff(ranked) >= 0)
    for curve in (metrics.roc_curve, metrics.precision_recall_curve):
        for drawn, expected in zip(curve(truth, ranked, drop_intermediate=True),
                                   curve(positive.astype(int), scores,
                                         drop_intermediate=True), strict=True):
            np.testing.assert_array_equal(drawn, expected)
    assert metrics.average_precision_score(truth, ranked) == \
        metrics.average_precision_score(positive.astype(int), scores)
