"""What a reviewer sees: both models' classification figures and plots on the held-out files.

Written to a folder that the registry logs as the retraining run's `evaluation/` artifacts.
scikit-learn computes and draws everything (its metrics and displays), so the figures are the
ones a reader can reproduce; matplotlib draws off-screen (cron has no display).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

# Figures computed for each model; the ones needing probabilities are left out for a model
# without predict_proba.
FIGURES = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")


def _undefined_is_none(compute: Callable[[], float]) -> float | None:
    # A held-out set may lack a class, or hold one a model never saw: the figure is then
    # undefined for it (scikit-learn raises ValueError), which the table shows as n/a.
    try:
        value = float(compute())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def classification_figures(labels, predictions, probabilities, classes) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (macro over classes when there are more than two),
    ROC AUC and log loss (only with probabilities, one column per entry of `classes`)."""
    from sklearn import metrics

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    present = np.union1d(labels, predictions)
    binary = len(np.union1d(present, classes)) == 2
    # Binary: the figures of the second class, scikit-learn's positive class.
    average = {"average": "binary", "pos_label": list(classes)[-1]} if binary \
        else {"average": "macro"}
    figures = {
        "accuracy": metrics.accuracy_score(labels, predictions),
        "precision": _undefined_is_none(lambda: metrics.precision_score(
            labels, predictions, zero_division=0, **average)),
        "recall": _undefined_is_none(lambda: metrics.recall_score(
            labels, predictions, zero_division=0, **average)),
        "f1": _undefined_is_none(lambda: metrics.f1_score(
            labels, predictions, zero_division=0, **average)),
        "roc_auc": None, "log_loss": None,
    }
    if probabilities is not None:
        if binary:
            figures["roc_auc"] = _undefined_is_none(lambda: metrics.roc_auc_score(
                labels == list(classes)[-1], probabilities[:, -1]))
        else:
            figures["roc_auc"] = _undefined_is_none(lambda: metrics.roc_auc_score(
                labels, probabilities, multi_class="ovr", average="macro", labels=classes))
        figures["log_loss"] = _undefined_is_none(lambda: metrics.log_loss(
            labels, probabilities, labels=classes))
    return figures


def write_heldout_report(folder: Path, models: Mapping[str, Any], features, labels,
                         predictions: Mapping[str, Any], errors: Mapping[str, float],
                         error_name: str, per_file: Sequence[Mapping[str, Any]]
                         ) -> dict[str, float]:
    """Write the tables and plots comparing `models` (role -> model) on the held-out rows.

    `predictions` are each model's predictions on those rows, `errors` their domain error.
    Returns the metrics to log, named `<role>_<figure>`.
    """
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    probabilities = {role: (np.asarray(model.predict_proba(features))
                            if hasattr(model, "predict_proba") else None)
                     for role, model in models.items()}
    # Every figure below is computed on integer codes of the labels, in their sorted order:
    # scikit-learn sorts the labels it is given on every call, and sorting a million string
    # labels took seconds a call, most of the report's time.
    names, labels, predictions, classes = _encode(labels, predictions, {
        role: getattr(model, "classes_", None) for role, model in models.items()})
    figures = {role: {error_name: errors[role]} | classification_figures(
        labels, predictions[role], probabilities[role], classes[role]) for role in models}

    _write_table(folder / "heldout_per_file.csv", list(per_file))
    _write_comparison(folder, figures, len(labels))
    _write_classification_report(folder / "classification_report.txt", labels, predictions,
                                 names)
    _plot_confusion_matrices(folder / "confusion_matrix.png", labels, predictions, names)
    scored = {role: p for role, p in probabilities.items() if p is not None}
    if scored:
        _plot_curves(folder, labels, scored, classes, names)
    return {f"{role}_{name}": value for role, named in figures.items()
            for name, value in named.items() if value is not None}


def _encode(labels, predictions: Mapping[str, Any], model_classes: Mapping[str, Any]):
    """Sorted label values, and the labels, predictions and each model's classes as indices
    into them (a model without `classes_` gets the held-out labels' classes)."""
    import pandas as pd

    labels = np.asarray(labels)
    predictions = {role: np.asarray(values) for role, values in predictions.items()}
    known = [np.asarray(c) for c in model_classes.values() if c is not None]
    # Hashing, not sorting, finds the distinct values; only those few are sorted.
    names = np.sort(pd.unique(np.concatenate([labels, *predictions.values(), *known])))
    index = pd.Index(names)
    # The narrowest integer that holds every code (and -1, which none is): scikit-learn
    # finds the distinct labels again in nearly every figure, and numpy's hashing does that
    # five times faster on int8 than on int64 (at 200,000 held-out rows, 0.5 s of the report).
    narrowest = np.min_scalar_type(-len(names))

    def codes(values) -> np.ndarray:
        return index.get_indexer(np.asarray(values)).astype(narrowest)

    classes = {role: (codes(c) if c is not None else np.unique(codes(labels))).tolist()
               for role, c in model_classes.items()}
    return (names, codes(labels), {role: codes(values) for role, values in predictions.items()},
            classes)


def _write_table(path: Path, rows: list[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        # Six decimals: 0.406, not the 0.40599999999999997 that subtraction leaves.
        writer.writerows({key: round(value, 6) if isinstance(value, float) else value
                          for key, value in row.items()} for row in rows)


def _write_comparison(folder: Path, figures: Mapping[str, Mapping[str, float | None]],
                      rows: int) -> None:
    """comparison.csv and comparison.md: one line per figure, one column per model."""
    roles = list(figures)
    names = list(next(iter(figures.values())))
    table = [{"figure": name} | {role: figures[role][name] for role in roles} for name in names]
    if roles == ["production", "challenger"]:
        for row in table:
            both = row["production"] is not None and row["challenger"] is not None
            row["challenger_minus_production"] = (row["challenger"] - row["production"]
                                                  if both else None)
    table.append({"figure": "heldout_rows"} | {column: rows for column in table[0]
                                               if column != "figure"})
    table[-1].pop("challenger_minus_production", None)
    _write_table(folder / "comparison.csv", table)

    def shown(value):
        return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) \
            else str(value)

    columns = list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    lines += ["| " + " | ".join(shown(row.get(column)) for column in columns) + " |"
              for row in table]
    (folder / "comparison.md").write_text("\n".join(lines) + "\n")


def _write_classification_report(path: Path, labels, predictions: Mapping[str, Any],
                                 names: np.ndarray) -> None:
    from sklearn.metrics import classification_report

    sections = []
    for role, predicted in predictions.items():
        present = np.union1d(labels, predicted)
        sections.append(f"== {role} ==\n" + classification_report(
            labels, predicted, labels=present, target_names=[str(names[c]) for c in present],
            zero_division=0))
    path.write_text("\n".join(sections))


def _plot_confusion_matrices(path: Path, labels, predictions: Mapping[str, Any],
                             names: np.ndarray) -> None:
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    shown = np.union1d(labels, np.concatenate(list(predictions.values())))
    figure, axes = plt.subplots(1, len(predictions), figsize=(5 * len(predictions), 4.5),
                                squeeze=False)
    for ax, (role, predicted) in zip(axes[0], predictions.items(), strict=True):
        ConfusionMatrixDisplay.from_predictions(labels, predicted, labels=shown, ax=ax,
                                                display_labels=[str(names[c]) for c in shown],
                                                colorbar=False)
        ax.set_title(role)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def ranked_by_score(positive, scores) -> tuple[np.ndarray, np.ndarray]:
    """One model's scores for a class, and whether each row is of it, in ascending order of
    score. The curves and the average precision are the same in any order of the rows (they
    are read only where the score changes), but scikit-learn sorts the scores once for each:
    three sorts of the held-out rows, where on sorted scores each costs one pass (numpy's
    stable sort is Timsort)."""
    order = np.argsort(scores, kind="stable")
    return np.asarray(positive, dtype=np.int8)[order], np.asarray(scores)[order]


def _plot_curves(folder: Path, labels, probabilities: Mapping[str, np.ndarray],
                 classes: Mapping[str, list], names: np.ndarray) -> None:
    """ROC and precision-recall curves, one panel per class (one-vs-rest), both models on it.

    Binary: one panel, for the positive class. A class absent from the held-out labels, or
    the only one there, has no curve.
    """
    import matplotlib.pyplot as plt
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    every = sorted(set().union(*(classes[role] for role in probabilities)))
    panels = [every[-1]] if len(every) == 2 else every
    panels = [c for c in panels if 0 < int(np.sum(labels == c)) < len(labels)]
    if not panels:
        return
    ranked = {(role, positive): ranked_by_score(labels == positive,
                                                scores[:, classes[role].index(positive)])
              for positive in panels for role, scores in probabilities.items()
              if positive in classes[role]}
    for display, name in ((RocCurveDisplay, "roc_curve.png"),
                          (PrecisionRecallDisplay, "precision_recall_curve.png")):
        figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2),
                                    squeeze=False)
        for ax, positive in zip(axes[0], panels, strict=True):
            for role in probabilities:
                if (role, positive) in ranked:
                    # Only the corners of the curve: a million held-out rows would
                    # otherwise draw a million points (ROC drops them by default, PR not).
                    display.from_predictions(*ranked[role, positive], name=role, ax=ax,
                                             drop_intermediate=True)
            ax.set_title(f"{names[positive]} vs rest")
        # Margins fixed in inches rather than tight_layout, which draws every panel once
        # more to measure it (half the time of these figures): the axes' labels are fixed
        # text and class names are only in titles.
        width = 4.5 * len(panels)
        figure.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.13,
                               top=0.92, wspace=0.3)
        figure.savefig(folder / name, dpi=80)
        plt.close(figure)
