"""Example domain: object-tracking output, scored by how many objects it counts per video.

Each CSV is one video, each row one detection (`object_id`, `frame`, box, `score`) labelled
`ground_truth` (1 true, 0 false positive). Copy this file over the top-level one, or pass
`--domain-file examples/object_tracking/train_classification_model.py` to each script, and
`--label-column ground_truth` either way. examples/object_tracking/generate.py writes such
files, with a change of what a false positive looks like.

The contract (every rule prepare_file, train_model and error_metric meet) is the docstring
of the top-level train_classification_model.py; this file differs from it only where the
domain does: the per-file features, an id column the model must not learn from, and a
per-file counting error that reads `rows`.

Standalone, it trains the first model from a folder of CSV files (unusable files are moved to
quarantine/ with their reasons; --strict-history stops instead, listing them):

    python train_classification_model.py used_gts/ --output model/initial_model.pkl \
        --label-column ground_truth
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import make_column_selector, make_column_transformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder

ERROR_METRIC_NAME = "object_count_error"
ERROR_PER_FILE = True
LOWER_ERROR_IS_BETTER = True
# Ids (`object_id`, `track_id`) name rows, they describe none: never learnt as features.
NOT_AN_ID = r"^(?!(?:.*_)?id$)"


def prepare_file(frame: pd.DataFrame, path) -> pd.DataFrame:
    """Add what needs the whole video: per object its track length and mean score, per
    detection its area over the video's median (transform keeps the file's row index)."""
    objects, area = frame.groupby("object_id"), frame["width"] * frame["height"]
    return frame.assign(track_length=objects["frame"].transform("size"),
                        object_mean_score=objects["score"].transform("mean"),
                        relative_area=area / area.median())


def train_model(features: pd.DataFrame, labels: pd.Series, random_state: int = 0,
                sample_weight=None) -> Pipeline:
    """Gradient-boosted trees behind imputation and one-hot encoding of text columns."""
    numeric = SimpleImputer(strategy="median", keep_empty_features=True)
    categorical = make_pipeline(
        SimpleImputer(strategy="constant", fill_value="missing"),
        OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=30,
                      sparse_output=False),
    )
    model = make_pipeline(
        make_column_transformer(
            (numeric, make_column_selector(NOT_AN_ID, dtype_include="number")),
            (categorical, make_column_selector(NOT_AN_ID, dtype_exclude="number")),
        ),
        HistGradientBoostingClassifier(random_state=random_state),
    )
    if sample_weight is None:
        return model.fit(features, labels)
    # A pipeline routes fit parameters by step name: only the trees take the weights.
    return model.fit(features, labels, histgradientboostingclassifier__sample_weight=sample_weight)


def error_metric(labels, predictions, rows) -> float:
    """|objects counted - real objects| / real objects (at least 1) in one video. An object
    counts when over half its detections are 1 (predicted, or labelled): one stray box alone
    neither makes nor hides an object."""
    votes = pd.DataFrame({"real": np.asarray(labels) == 1, "counted": np.asarray(predictions) == 1})
    objects = votes.groupby(rows["object_id"].to_numpy()).mean() > 0.5
    real, counted = int(objects["real"].sum()), int(objects["counted"].sum())
    return abs(counted - real) / max(real, 1)


def main(argv=None) -> int:
    """Train the first model from a folder of CSV files (retraining/first_training.py)."""
    from retraining.first_training import main as train_first_model

    return train_first_model(argv)


if __name__ == "__main__":
    raise SystemExit(main())
