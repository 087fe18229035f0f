"""An example domain for text: sentiment of customer reviews, TF-IDF and logistic regression.

Copy it over the project's train_classification_model.py (or pass --domain-file and
--label-column sentiment). Each CSV holds `review` (free text), `channel` (a category) and
`sentiment` (the label). The cycle's drift check sees that `review` is free text and tests
its length and vocabulary rather than counting each review as a category of its own.

    python examples/text_reviews/generate.py --used-dir used_gts --new-dir new_gts
    python examples/text_reviews/train_classification_model.py used_gts/ \\
        --label-column sentiment --output model/initial_model.pkl
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import make_column_transformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder

ERROR_METRIC_NAME = "misclassification_rate"
ERROR_PER_FILE = False
LOWER_ERROR_IS_BETTER = True

TEXT = "review"


def prepare_file(frame: pd.DataFrame, path) -> pd.DataFrame:
    """An empty review is read as missing; TF-IDF wants text, so it becomes ''."""
    if TEXT not in frame.columns:
        raise ValueError(f"no column {TEXT!r}: this domain classifies reviews")
    frame[TEXT] = frame[TEXT].fillna("").astype(str)
    return frame


def train_model(features: pd.DataFrame, labels: pd.Series, random_state: int = 0,
                sample_weight=None) -> Pipeline:
    """Word and two-word TF-IDF of the review, the channel one-hot, a logistic regression."""
    model = make_pipeline(
        make_column_transformer(
            (TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), TEXT),
            (OneHotEncoder(handle_unknown="ignore"), ["channel"]),
        ),
        LogisticRegression(C=4.0, max_iter=2000, random_state=random_state),
    )
    return model.fit(features, labels, logisticregression__sample_weight=sample_weight)


def error_metric(labels, predictions) -> float:
    """Share of reviews whose sentiment is predicted wrong."""
    return float(np.mean(np.asarray(labels) != np.asarray(predictions)))


def main(argv=None) -> int:
    """Train the first model from a folder of CSV files (retraining/first_training.py)."""
    from retraining.first_training import main as train_first_model

    return train_first_model(argv)


if __name__ == "__main__":
    raise SystemExit(main())
