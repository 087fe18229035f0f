"""Write the fixture models saved by an old scikit-learn (1.3.2), as a user's would be.

Run once, under scikit-learn 1.3.2, from the project folder (tests/data/README.md says how):

    python tests/data/make_old_sklearn_models.py tests/data

Each is trained on the demo's readings, prepared as the product's reader prepares them
(TRUE/FALSE as 1.0/0.0), so it takes the same columns as the tests' history. Read by
scikit-learn 1.9 they fail in three different ways:

    old_sklearn_logistic.joblib  imputation and a logistic regression: predicts as it did;
                                 only its recorded version differs
    old_sklearn_tree.joblib      a decision tree: loads and predicts the right classes, but
                                 its leaves hold counts where 1.4+ expects fractions, so
                                 predict_proba rows sum to the leaf sizes, not 1
    old_sklearn_default.joblib   the default domain's pipeline (train_classification_model.py):
                                 loads, then fails in predict (state renamed since)
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.compose import make_column_transformer
from sklearn.impute import KNNImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

PROJECT_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_DIR))

from demo.generate_stream import readings  # noqa: E402
from train_classification_model import train_model  # noqa: E402

NUMERIC = ["temperature", "vibration", "operating_hours", "pressure", "serviced"]


def encoded(final_step, numeric_steps=()):
    return make_pipeline(
        make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["machine_type"]),
            # Explicit steps for the numbers: a "passthrough" saved by 1.3 fails under 1.9.
            (make_pipeline(StandardScaler(), *numeric_steps), NUMERIC)),
        final_step)


def main(output: Path) -> None:
    frame = readings(3000, 0.0, np.random.default_rng(1))
    frame["serviced"] = (frame["serviced"] == "TRUE").astype(float)
    features, labels = frame.drop(columns=["label"]), frame["label"]
    models = {
        "old_sklearn_logistic": encoded(LogisticRegression(max_iter=1000), [KNNImputer()]),
        # Trees of 1.3 split on missing values themselves: no imputer needed.
        "old_sklearn_tree": encoded(DecisionTreeClassifier(max_depth=6, random_state=0)),
    }
    for name, model in models.items():
        joblib.dump(model.fit(features, labels), output / f"{name}.joblib", compress=3)
    default = train_model(features, labels, random_state=0)
    default[-1].set_params(max_iter=10)  # a small file: the failure does not need many trees
    joblib.dump(default.fit(features, labels), output / "old_sklearn_default.joblib",
                compress=3)
    print(f"written with scikit-learn {sklearn.__version__} to {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
