"""Per-class recall and precision, and whether one class has collapsed.

An overall error can stay under the threshold while a rare class is lost: with 2% positives,
predicting none of them costs 0.02. So each class is watched on its own, in two places:

- monitoring: production's recall of each class on the new files against its own baseline,
  the recall it had on the held-out files when it was promoted (or, for a version that was
  never judged by a cycle, on the first batch it monitored);
- the gate: the challenger's recall of each class against production's, on the same held-out
  rows.

A class collapses when its recall falls below `1 - max_recall_drop` of the reference
(below half, by default) and a one-sided exact test says the fall is not chance at the
cycle's confidence level: Fisher's test for two batches, a sign test (exact McNemar) on the
rows where the two models disagree for the paired comparison.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Iterable

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClassCounts:
    """For each class: rows labelled with it, those predicted right, rows predicted as it."""

    support: dict[str, int]
    hits: dict[str, int]
    predicted: dict[str, int]

    def recall(self, label: str) -> float:
        return self.hits[label] / self.support[label] if self.support.get(label) else float("nan")

    def precision(self, label: str) -> float:
        predicted = self.predicted.get(label, 0)
        return self.hits.get(label, 0) / predicted if predicted else float("nan")

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """MLflow metrics: recall, precision and support of each class."""
        figures = {}
        for label in sorted(self.support):
            name = metric_safe(label)
            figures[f"{prefix}recall.{name}"] = self.recall(label)
            figures[f"{prefix}support.{name}"] = self.support[label]
            if self.predicted.get(label):
                figures[f"{prefix}precision.{name}"] = self.precision(label)
        return figures

    def baseline_json(self) -> str:
        """What a version keeps as its baseline: hits and support of each class."""
        return json.dumps({label: [self.hits[label], self.support[label]]
                           for label in sorted(self.support)}, separators=(",", ":"))


def count_classes(labels: Iterable, predictions: Iterable) -> ClassCounts:
    labels = np.asarray([str(value) for value in labels], dtype=object)
    predictions = np.asarray([str(value) for value in predictions], dtype=object)
    right = labels == predictions
    support, hits, predicted = {}, {}, {}
    for label in np.unique(labels):
        rows = labels == label
        support[label], hits[label] = int(rows.sum()), int((rows & right).sum())
    for label, count in zip(*np.unique(predictions, return_counts=True), strict=True):
        predicted[label] = int(count)
    return ClassCounts(support, hits, predicted)


def parse_baseline(text: str | None) -> dict[str, tuple[int, int]] | None:
    """A version's `class_recall_baseline` tag: class -> (hits, support)."""
    if not text:
        return None
    return {label: (int(hits), int(support)) for label, (hits, support) in json.loads(text).items()}


def metric_safe(label: str) -> str:
    """A class name as MLflow accepts it in a metric name, and unique: a name that had to be
    changed (a slash, an IRI's colon) gets part of its hash, so two classes never share one."""
    import hashlib

    safe = re.sub(r"[^\w\-. ]", "_", label)[:200]
    if safe == label and safe.strip(". "):
        return safe
    return f"{safe}_{hashlib.sha256(label.encode()).hexdigest()[:8]}"


@dataclasses.dataclass(frozen=True)
class Collapse:
    label: str
    before: tuple[int, int]  # hits, support of the reference
    after: tuple[int, int]
    p_value: float
    reference: str  # what `before` is, e.g. "its baseline" or "production"

    def __str__(self) -> str:
        (hits0, rows0), (hits1, rows1) = self.before, self.after
        return (f"recall of class {self.label!r} {hits1 / rows1:.2f} ({hits1} of {rows1}) "
                f"against {hits0 / rows0:.2f} ({hits0} of {rows0}) for {self.reference}, "
                f"p = {self.p_value:.2g}")


def collapsed_since_baseline(baseline: dict[str, tuple[int, int]], now: ClassCounts,
                             max_drop: float, level: float) -> list[Collapse]:
    """Classes whose recall on this batch fell significantly below half (by default) of the
    version's baseline; two independent samples, so Fisher's exact test, one-sided."""
    from scipy.stats import fisher_exact

    found = []
    for label, (hits0, rows0) in sorted(baseline.items()):
        rows1 = now.support.get(label, 0)
        if not rows0 or not rows1 or not hits0:
            continue
        hits1 = now.hits[label]
        if hits1 / rows1 >= (1.0 - max_drop) * hits0 / rows0:
            continue
        p_value = float(fisher_exact([[hits0, rows0 - hits0], [hits1, rows1 - hits1]],
                                     alternative="greater").pvalue)
        if p_value < 1.0 - level:
            found.append(Collapse(label, (hits0, rows0), (hits1, rows1), p_value,
                                  "its baseline"))
    return found


def collapsed_against(labels, reference_predictions, predictions, max_drop: float,
                      level: float, reference: str = "production") -> list[Collapse]:
    """Classes the challenger recalls significantly worse than half (by default) of what
    `reference` recalls on the same rows: paired, so an exact sign test on the rows of that
    class where exactly one of the two is right."""
    from scipy.stats import binomtest

    labels = np.asarray([str(value) for value in labels], dtype=object)
    theirs = labels == np.asarray([str(value) for value in reference_predictions], dtype=object)
    ours = labels == np.asarray([str(value) for value in predictions], dtype=object)
    found = []
    for label in np.unique(labels):
        rows = labels == label
        hits0, hits1, count = int(theirs[rows].sum()), int(ours[rows].sum()), int(rows.sum())
        if not hits0 or hits1 / count >= (1.0 - max_drop) * hits0 / count:
            continue
        lost, won = int((theirs & ~ours & rows).sum()), int((ours & ~theirs & rows).sum())
        p_value = float(binomtest(lost, lost + won, 0.5, alternative="greater").pvalue)
        if p_value < 1.0 - level:
            found.append(Collapse(label, (hits0, count), (hits1, count), p_value, reference))
    return found
