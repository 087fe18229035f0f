"""A version's baseline: its error, and its recall of each class, when it was judged.

Monitoring compares each batch with it. An absolute threshold sees a slow drift late, or
never when the threshold sits above the error the model started from; a rise against the
model's own error when it was judged shows it as soon as it is beyond noise. The baseline is
what the version scored on the held-out files that promoted it (its error units, as the
gate's bootstrap resamples them, and hits and rows per class), kept as version tags. A
version no cycle judged (the first one registered) takes its first monitored batch instead.
"""

from __future__ import annotations

import json

import numpy as np

from retraining.gate import ErrorUnits

ERROR_BASELINE_TAG = "error_baseline"
CLASS_BASELINE_TAG = "class_recall_baseline"
SOURCE_TAG = "baseline_from"
FIRST_BATCH = "the first batch it monitored"
# The batch an earlier version was promoted again on (a challenger's is its batch_key tag).
PROMOTED_ON_TAG = "promoted_again_on_batch"
# MLflow keeps 5,000 characters of a tag: adjacent slices of a file are merged until the
# units fit, which leaves a row-mean metric's figures exact.
_MAX_UNITS = 120


def decided_on(version_tags: dict, batch: str) -> bool:
    """Whether `batch` is the one the version was trained on or promoted again on: a cycle
    stopped after the promotion and before archiving reads it again, and it can then
    neither judge the version on probation nor join its baseline."""
    return batch in (version_tags.get("batch_key"), version_tags.get(PROMOTED_ON_TAG))


def baseline_tags(units: ErrorUnits, classes_json: str, source: str) -> dict[str, str]:
    return {ERROR_BASELINE_TAG: units_json(units), CLASS_BASELINE_TAG: classes_json,
            SOURCE_TAG: source}


def extended(units: ErrorUnits, classes_json: str, more: ErrorUnits,
             more_classes: dict[str, tuple[int, int]]) -> tuple[ErrorUnits, str]:
    """A baseline pooled with a further sample of the same version: its units, as more
    files, and its hits and rows per class, added."""
    units = ErrorUnits(np.concatenate([units.groups, more.groups + units.groups.max() + 1]),
                       np.concatenate([units.weights, more.weights]),
                       np.concatenate([units.errors, more.errors]),
                       units.sliced and more.sliced)
    counts = {label: list(pair) for label, pair in json.loads(classes_json).items()}
    for label, (hits, rows) in more_classes.items():
        total = counts.setdefault(label, [0, 0])
        total[0] += hits
        total[1] += rows
    return units, json.dumps({label: counts[label] for label in sorted(counts)},
                             separators=(",", ":"))


def units_json(units: ErrorUnits) -> str:
    groups, weights, errors = units.groups, units.weights, units.errors
    while len(groups) > _MAX_UNITS:
        groups, weights, errors = _merge_neighbours(groups, weights, errors)
    return json.dumps({"sliced": units.sliced, "groups": [int(g) for g in groups],
                       "weights": [round(float(w), 6) for w in weights],
                       "errors": [round(float(e), 6) for e in errors]},
                      separators=(",", ":"))


def parse_units(text: str | None) -> ErrorUnits | None:
    if not text:
        return None
    data = json.loads(text)
    return ErrorUnits(np.array(data["groups"]), np.array(data["weights"], dtype=float),
                      np.array(data["errors"], dtype=float), bool(data["sliced"]))


def _merge_neighbours(groups, weights, errors):
    """Each file's slices merged in pairs: the weighted mean of two adjacent slices is the
    error of the slice they make together, for a metric that is a mean over rows. When every
    file is one unit already, neighbouring files are merged in pairs instead: fewer, larger
    groups, which widen the rise's interval, the safe side."""
    if len(np.unique(groups)) == len(groups):
        rank = {group: index for index, group in enumerate(dict.fromkeys(groups.tolist()))}
        groups = np.array([rank[group] // 2 for group in groups.tolist()])
        return _merge_neighbours_within(groups, weights, errors, pairs=False)
    return _merge_neighbours_within(groups, weights, errors, pairs=True)


def _merge_neighbours_within(groups, weights, errors, pairs: bool):
    merged: dict[tuple[int, int], list[float]] = {}
    position: dict[int, int] = {}
    for group, weight, error in zip(groups, weights, errors, strict=True):
        index = position.get(int(group), 0)
        position[int(group)] = index + 1
        total = merged.setdefault((int(group), index // 2 if pairs else 0), [0.0, 0.0])
        total[0] += float(weight)
        total[1] += float(weight) * float(error)
    keys = list(merged)
    return (np.array([key[0] for key in keys]),
            np.array([merged[key][0] for key in keys]),
            np.array([merged[key][1] / merged[key][0] for key in keys]))
