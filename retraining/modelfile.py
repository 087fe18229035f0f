"""The user's saved model: finding its file, loading it, and checking it before it serves.

A model file is what `joblib.dump` writes (scikit-learn's documentation recommends it) or
what `pickle.dump` writes; `joblib.load` reads both. Unpickling runs code: load only files
you made. Two faults load without an error and are caught here instead:

- a model saved by another scikit-learn: its state may mean something else now (trees saved
  by 1.3 keep leaf counts where 1.4+ reads fractions, and their probabilities sum to the
  leaf sizes), so a version other than the installed one is refused unless allowed;
- a model that does not answer as a classifier on the history: predictions outside its own
  classes, classes of another kind than the history's labels (every file would then be
  quarantined), probabilities that are not probabilities.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from pathlib import Path
from typing import Any, NoReturn

from retraining.errors import NeedsAttention, UsageError

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".joblib", ".pkl", ".pickle")
# How far a probability, or a row's sum, may miss by rounding: a float32 model's rows miss 1
# by about 1e-7 per class; a model that is wrong misses by far more.
PROBABILITY_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class SavedModel:
    path: Path
    model: Any
    # scikit-learn version -> the estimators saved with it, for each version other than the
    # installed one; empty when every estimator matches (or none is scikit-learn's).
    other_sklearn_versions: dict[str, list[str]]

    @property
    def version_note(self) -> str:
        """The mismatch in words, for messages; '' when there is none."""
        if not self.other_sklearn_versions:
            return ""
        import sklearn

        saved = ", ".join(sorted(self.other_sklearn_versions))
        return f"saved with scikit-learn {saved}, while {sklearn.__version__} is installed"


def find_model_file(model_dir: Path) -> Path:
    """The one model file in `model_dir`; none or several is a UsageError."""
    candidates = sorted(path for path in model_dir.iterdir()
                        if path.suffix.lower() in MODEL_SUFFIXES and path.is_file()) \
        if model_dir.is_dir() else []
    if len(candidates) != 1:
        found = ", ".join(path.name for path in candidates) or "none"
        raise UsageError(f"expected exactly one model file ({', '.join(MODEL_SUFFIXES)}) in "
                         f"{model_dir}, found {found}", fix="pass --model-file PATH")
    return candidates[0]


def load_model_file(path: Path) -> SavedModel:
    """Load a joblib or pickle file, noting each scikit-learn version it was saved with.

    scikit-learn's estimators keep `_sklearn_version` in their pickled state, and their
    `__setstate__` removes it, warning (InconsistentVersionWarning) when it differs from the
    installed version: that warning is the only record left, and it comes from every
    estimator unpickled, a Pipeline's steps and nested estimators included. So the load
    records those warnings; any other warning is passed on to the log.
    """
    import joblib
    from sklearn.exceptions import InconsistentVersionWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        try:
            model = joblib.load(path)
        except Exception as error:  # any fault of the file: it cannot be registered
            versions = _other_versions(caught, InconsistentVersionWarning)
            hint = f"; it was saved with scikit-learn {', '.join(sorted(versions))}" \
                if versions else ""
            raise NeedsAttention(
                f"{path.name} cannot be loaded as a joblib or pickle file "
                f"({type(error).__name__}: {_short(error)}){hint}",
                fix="save the model with joblib.dump or pickle.dump in the environment it "
                    "was trained in; classes of your own must be importable (define them in "
                    "the domain file)") from error
    for warning in caught:
        if not issubclass(warning.category, InconsistentVersionWarning):
            log.warning("loading %s: %s: %s", path.name, warning.category.__name__,
                        warning.message)
    return SavedModel(path, model, _other_versions(caught, InconsistentVersionWarning))


def _other_versions(caught, category) -> dict[str, list[str]]:
    versions: dict[str, list[str]] = {}
    for warning in caught:
        if issubclass(warning.category, category):
            names = versions.setdefault(warning.message.original_sklearn_version, [])
            if warning.message.estimator_name not in names:
                names.append(warning.message.estimator_name)
    return versions


def check_version(saved: SavedModel, allow_mismatch: bool) -> None:
    """Refuse a model saved by another scikit-learn, unless the person allowed it."""
    if not saved.other_sklearn_versions:
        return
    import sklearn

    estimators = "; ".join(f"{', '.join(names)} saved by {version}"
                           for version, names in sorted(saved.other_sklearn_versions.items()))
    if allow_mismatch:
        log.warning("%s was %s (%s); registering it anyway (--allow-version-mismatch), "
                    "after the checks on history", saved.path.name, saved.version_note,
                    estimators)
        return
    raise NeedsAttention(
        f"{saved.path.name} was {saved.version_note} ({estimators}): its predictions may be "
        "silently wrong",
        fix=f"train and save it again under scikit-learn {sklearn.__version__} (e.g. with "
            "train_classification_model.py), or pass --allow-version-mismatch to register it "
            "if it passes the checks on history")


def checked_predictions(saved: SavedModel, files, columns) -> dict[str, Any]:
    """The model's predictions per history file, once it answers as a classifier there.

    Refused (NeedsAttention) when predict fails, when a prediction is not among the model's
    `classes_`, when its classes are of another kind than the history's labels (the kind the
    cycle requires of every new file), or, if it has predict_proba, when probabilities are
    not finite, not in [0, 1], or rows do not sum to 1.
    """
    import numpy as np
    import pandas as pd

    from retraining.datafiles import label_kind
    from retraining.evaluation import feature_chunks, predict_files

    model = saved.model
    try:
        by_file = predict_files(model, files, columns)
    except Exception as error:  # the user's model failing: its own message, whatever it is
        _refuse(saved, f"predict fails ({type(error).__name__}: {_short(error)})",
                fix="train and save the model again in this environment, on data with the "
                    "history's columns")
    # Labels alone, never the features: all of a project's history stacked again is as
    # large as what was read.
    labels = pd.concat([loaded.labels for loaded in files], ignore_index=True)
    rows = len(labels)
    predictions = np.concatenate([np.asarray(by_file[f.name]) for f in files])
    if len(predictions) != rows:
        _refuse(saved, f"predict returned {len(predictions)} predictions for {rows} rows")
    classes = getattr(model, "classes_", None)
    if classes is None:
        # Without classes, the cycle cannot check new files' labels against the model either.
        log.warning("%s has no classes_: its predictions are not checked against its classes",
                    saved.path.name)
    else:
        classes = np.asarray(classes)
        outside = ~np.isin(predictions, classes)
        if outside.any():
            examples = _listed(pd.unique(predictions[outside]), limit=3)
            _refuse(saved, f"{int(outside.sum()):,} of {rows:,} predictions ({examples}) are "
                           f"not among the model's classes ({_listed(classes)})")
        class_kind, kind = label_kind(pd.Series(classes)), label_kind(labels)
        if class_kind != kind:
            _refuse(saved, f"the history's labels are {kind} ({_listed(pd.unique(labels))}) "
                           f"where the model's classes are {class_kind} ({_listed(classes)})",
                    fix="train the model on the labels as the history's files write them")
    if hasattr(model, "predict_proba"):
        _check_probabilities(saved, (features for _, features in feature_chunks(files, columns)),
                             classes)
    return by_file


@dataclasses.dataclass
class _ProbabilityFaults:
    """What is wrong with predict_proba's answers, added up over chunks of rows."""

    rows: int = 0
    not_finite: int = 0  # values
    rows_not_finite: int = 0
    low: float = math.inf
    high: float = -math.inf
    sum_low: float = math.inf
    sum_high: float = -math.inf
    rows_not_summing: int = 0

    def add(self, probabilities) -> None:
        import numpy as np

        self.rows += len(probabilities)
        finite = np.isfinite(probabilities)
        self.not_finite += int((~finite).sum())
        self.rows_not_finite += int((~finite.all(axis=1)).sum())
        if len(probabilities):
            self.low = min(self.low, float(probabilities.min()))
            self.high = max(self.high, float(probabilities.max()))
            sums = probabilities.sum(axis=1)
            self.sum_low = min(self.sum_low, float(sums.min()))
            self.sum_high = max(self.sum_high, float(sums.max()))
            self.rows_not_summing += int((np.abs(sums - 1) > PROBABILITY_TOLERANCE).sum())


def _check_probabilities(saved: SavedModel, chunks, classes) -> None:
    """predict_proba on each chunk of the history's features, checked over all of them."""
    import numpy as np

    faults = _ProbabilityFaults()
    for features in chunks:
        try:
            probabilities = np.asarray(saved.model.predict_proba(features), dtype=float)
        except Exception as error:  # the user's model: its own fault, reported with its message
            _refuse(saved, f"predict_proba fails on the history ({type(error).__name__}: "
                           f"{_short(error)})")
        expected_columns = len(classes) if classes is not None else probabilities.shape[-1]
        if probabilities.ndim != 2 or probabilities.shape[1] != expected_columns:
            _refuse(saved, f"predict_proba returned shape {probabilities.shape}, not one "
                           f"column per class ({expected_columns})")
        faults.add(probabilities)
    rows = faults.rows
    if faults.not_finite:
        _refuse(saved, f"predict_proba gives {faults.not_finite:,} values that are not "
                       f"finite, in {faults.rows_not_finite:,} of {rows:,} history rows")
    # Both figures when both are wrong: values above 1 alone could be one bad class column,
    # rows summing to the leaf sizes say the whole state is read differently.
    problems = []
    if faults.low < -PROBABILITY_TOLERANCE or faults.high > 1 + PROBABILITY_TOLERANCE:
        problems.append(f"values from {faults.low:.6g} to {faults.high:.6g}, outside [0, 1]")
    if faults.rows_not_summing:
        problems.append(f"rows that sum to between {faults.sum_low:.6g} and "
                        f"{faults.sum_high:.6g}, not 1 ({faults.rows_not_summing:,} of "
                        f"{rows:,} history rows)")
    if problems:
        _refuse(saved, "predict_proba gives " + "; ".join(problems))


def _refuse(saved: SavedModel, problem: str, fix: str | None = None) -> NoReturn:
    # With a version mismatch allowed, the mismatch is the likely cause: say so.
    cause = f"{saved.path.name} fails a check on the history: {problem}"
    if saved.version_note:
        cause += f" (it was {saved.version_note})"
        import sklearn

        fix = fix or f"train and save it again under scikit-learn {sklearn.__version__}"
    raise NeedsAttention(cause, fix=fix or "check the model file is the model you meant, "
                                           "trained on this history's kind of data")


def _listed(values, limit: int = 5) -> str:
    values = list(values)
    shown = ", ".join(map(repr, [value.item() if hasattr(value, "item") else value
                                 for value in values[:limit]]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _short(error: Exception, limit: int = 200) -> str:
    return " ".join(str(error).split())[:limit]
