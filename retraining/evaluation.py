"""Errors of a model on files, and the two decisions made from them: retrain, promote."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from retraining.datafiles import LoadedFile
from retraining.domain import Domain
from retraining.errors import NeedsAttention

# Errors are rates computed in floating point: 0.30 - 0.25 is 0.04999999999999999, which must
# still meet a margin of 0.05.
_TOLERANCE = 1e-9


# Rows given to one predict call at most. One call over a night's files is fastest, but a
# pipeline's intermediate arrays over all of a project's history (20M rows) reached 17 GB.
PREDICT_ROWS = 1_000_000


def feature_chunks(files: Sequence[LoadedFile], columns: Sequence[str]):
    """The files in consecutive groups of at most PREDICT_ROWS rows (a larger file alone),
    each with its features stacked in `columns` order: (files, features)."""
    import pandas as pd

    columns = list(columns)

    def stacked(group: list[LoadedFile]):
        return group, pd.concat([f.features[columns] for f in group], ignore_index=True)

    group: list[LoadedFile] = []
    rows = 0
    for loaded in files:
        if group and rows + loaded.rows > PREDICT_ROWS:
            yield stacked(group)
            group, rows = [], 0
        group.append(loaded)
        rows += loaded.rows
    if group:
        yield stacked(group)


def predict_files(model, files: Sequence[LoadedFile], columns: Sequence[str]) -> dict[str, object]:
    """Predictions per file name, from one predict call per PREDICT_ROWS rows."""
    import numpy as np

    by_file = {}
    for group, features in feature_chunks(files, columns):
        predictions = np.asarray(model.predict(features))
        start = 0
        for loaded in group:
            by_file[loaded.name] = predictions[start:start + loaded.rows]
            start += loaded.rows
    return by_file


def error_on(domain: Domain, files: Sequence[LoadedFile], predictions: dict[str, object]) -> float:
    """The domain's error over `files`: pooled over rows, or averaged over files."""
    import numpy as np

    if domain.error_per_file:
        error = float(np.mean([domain.error(loaded.labels, predictions[loaded.name],
                                            loaded.features) for loaded in files]))
    else:
        import pandas as pd

        labels, pooled = pooled_labels(files, predictions)
        error = float(domain.error(labels, pooled, lambda: pd.concat(
            [loaded.features for loaded in files], ignore_index=True)))
    if not math.isfinite(error):
        raise NeedsAttention(f"error_metric returned {error} on {len(files)} files",
                             fix=f"make error_metric in {domain.source.name} return a finite "
                                 "number")
    return error


def pooled_labels(files: Sequence[LoadedFile], predictions: dict[str, object]):
    """The files' labels and a model's predictions on them, each stacked into one array."""
    import numpy as np

    return (np.concatenate([np.asarray(loaded.labels) for loaded in files]),
            np.concatenate([np.asarray(predictions[loaded.name]) for loaded in files]))


def needs_retraining(domain: Domain, error: float, threshold: float) -> bool:
    """True when the error has crossed the threshold; at the threshold is still healthy."""
    return error > threshold if domain.lower_error_is_better else error < threshold


@dataclasses.dataclass(frozen=True)
class Verdict:
    promote: bool
    improvement: float  # positive when the challenger is better, in the metric's units
    reason: str


def judge_challenger(domain: Domain, production_error: float, challenger_error: float,
                     min_improvement: float) -> Verdict:
    """Promote only a challenger strictly better than production by at least the margin."""
    if domain.lower_error_is_better:
        improvement = production_error - challenger_error
    else:
        improvement = challenger_error - production_error
    name = domain.error_metric_name
    figures = (f"challenger {name} {challenger_error:.4f} vs production {production_error:.4f} "
               f"on the same held-out files (improvement {improvement:+.4f}; promotion needs a "
               f"positive improvement of at least {min_improvement:.4f})")
    if improvement > _TOLERANCE and improvement >= min_improvement - _TOLERANCE:
        return Verdict(True, improvement, "challenger is better: " + figures)
    return Verdict(False, improvement, "challenger is not better enough: " + figures)
