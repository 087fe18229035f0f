"""An example domain that calibrates its probabilities and tunes its decision threshold.

A rare positive class (a machine about to fail) is where the default threshold of 0.5 costs
most: the F1-optimal one is usually lower. `train_model` wraps the default pipeline in
scikit-learn's CalibratedClassifierCV (isotonic) and TunedThresholdClassifierCV, which
chooses the threshold that maximises F1 for `fault` by cross-validation inside the rows it
is given: the cycle calls it only on training files, so the held-out files that judge the
model never choose its threshold. The retraining run reports the threshold chosen
(`decision_threshold`) and its cross-validated F1 (`decision_threshold_score`).

The demo's readings have three states; this domain asks only "fault or not", so
`prepare_file` turns `worn` and `ok` into `no_fault`. Use it on the demo's files with
--domain-file examples/tuned_threshold/train_classification_model.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import make_column_selector, make_column_transformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import f1_score, make_scorer
from sklearn.model_selection import TunedThresholdClassifierCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

ERROR_METRIC_NAME = "one_minus_f1_fault"
ERROR_PER_FILE = False
LOWER_ERROR_IS_BETTER = True

POSITIVE = "fault"


def prepare_file(frame: pd.DataFrame, path) -> pd.DataFrame:
    """Fault or not: the other states become one class."""
    if "label" in frame.columns:
        present = frame["label"].notna()
        frame.loc[present, "label"] = np.where(frame.loc[present, "label"] == POSITIVE,
                                               POSITIVE, "no_fault")
    return frame


def train_model(features: pd.DataFrame, labels: pd.Series, random_state: int = 0):
    """The default trees, calibrated, behind the F1-optimal threshold for `fault`."""
    trees = make_pipeline(
        make_column_transformer(
            (SimpleImputer(strategy="median", keep_empty_features=True),
             make_column_selector(dtype_include="number")),
            (make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"),
                           OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
             make_column_selector(dtype_exclude="number")),
        ),
        HistGradientBoostingClassifier(random_state=random_state),
    )
    calibrated = CalibratedClassifierCV(trees, method="isotonic", cv=3)
    tuned = TunedThresholdClassifierCV(calibrated, scoring=make_scorer(f1_score,
                                                                       pos_label=POSITIVE),
                                       cv=3, random_state=random_state)
    return tuned.fit(features, labels)


def error_metric(labels, predictions) -> float:
    """1 - F1 of the `fault` class: 0 when every fault is found and no alarm is false."""
    return 1.0 - float(f1_score(np.asarray(labels), np.asarray(predictions),
                                pos_label=POSITIVE, zero_division=0.0))
