"""Your domain: the one file you edit to bring your own data and model.

The retraining cycle calls exactly what is defined here and nothing else of yours. Every rule
your code meets is below; examples/object_tracking/ is a complete domain that uses them all.

    prepare_file(frame, path) -> frame
        Optional. Turn one CSV file into rows; for feature engineering that needs the whole
        file (per-object counts, a file's own median). Default: the file as is.
        - Called on every file the product reads: history, new files, and the files
          `registry_tool.py predict` scores, which may have no label column at all.
        - `frame` is the file as read: booleans (TRUE/FALSE) as 0.0/1.0, missing values as
          NaN, header names with stray spaces or UTF-7 escapes (ground+AF8-truth) read as
          the expected name. The label column is included when the file has it.
        - The label column is looked for in what you return, so you may rename or derive
          it. Rows whose label is missing are dropped (and counted) after you return.
        - Keep the index the rows came with (named `data_row`): it is each row's data row in
          the file (from 0), used in reasons and predictions; filters, sorts and
          groupby().transform keep it. An index you set (an object id) is dropped: rows
          still holding the file's values, one per line in order, keep their lines; any
          others are rows of your own, without a line. Put such keys in a column.
        - Raise an exception to reject a file: it is moved to quarantine/ with your message.
          When every file raises the same way, nothing moves: the cause is your code.

    train_model(features, labels[, random_state][, sample_weight]) -> fitted estimator
        Required. Fit and return an object with scikit-learn's `predict` (and
        `predict_proba`, for the probabilities `predict` writes). Only the keywords you
        declare are passed: `random_state` is the cycle's seed; `sample_weight` (one weight
        per row, or None) lets the cycle try a window that weighs recent files more, and
        without it that window is skipped.
        - `features` is every column you return except the label, in every file alike: the
          first model's signature fixes them, and a file with others is quarantined. A key
          column you keep for error_metric (object_id) reaches the model too: drop it in
          your pipeline.
        - Labels are of one kind in every file (integers, numbers or text; 1.0 reads as 1).
          A new file with labels the production model has never seen is quarantined: a
          person decides whether it is a typo or a new class.
        - The model is logged with skops: build it from scikit-learn (or other skops-
          serialisable) objects, and it loads in MLflow without unpickling code.

    train_spark_model(frame, label_column[, random_state][, weight_column]) -> PipelineModel
        Optional; used instead of train_model with --engine spark. Fit and return a
        pyspark.ml.PipelineModel on `frame`, a Spark DataFrame of the features (as above)
        and the label column, named `label_column`. Import pyspark inside the function, so
        a user who never uses Spark never needs it.
        - The pipeline writes the predicted class to a column named `prediction`, as the
          label column has it (1 for an integer label, not 1.0 or "1"): the cycle reads it
          through the model's pyfunc, as it reads any version's predictions.
        - Column names must differ in more than case (Spark does not tell `Speed` from
          `speed`), and no feature may be called `prediction`: such files stop the cycle
          with one line before Spark starts.
        - Integer feature columns arrive as doubles, in training and in every later
          prediction: a missing cell in a new file makes such a column a double, and the
          model must see one type on every path.
        - `weight_column` (declared, or None) names a column of row weights the cycle adds
          for the window that weighs recent files more; without it that window is skipped.
        - Logged with MLflow's Spark flavour; the version loads where pyspark is installed.

    error_metric(labels, predictions[, rows]) -> float
        Required. The error the cycle monitors and compares; must return a finite number.
        Declare `rows` to receive the prepared rows being scored (your columns, label left
        out, aligned with `labels`), so a grouping column such as object_id is visible.
        - Pooled over all rows of the files scored, unless ERROR_PER_FILE.
        - A mean over rows (the misclassification rate) is also scored on slices of each
          held-out file, which makes the significance test see rows, not just files; a
          metric that is not such a mean is detected and judged by whole files.

    ERROR_METRIC_NAME      the name the metric carries in MLflow
    ERROR_PER_FILE         True: compute error_metric per file, then average over files
                           (for errors that only make sense per file, e.g. a counting error).
                           The test then resamples whole files: at the default
                           --confidence-level 0.95 it needs at least 6 held-out files, and
                           the cycle holds out that many when the batch has 12 or more.
    LOWER_ERROR_IS_BETTER  False if your metric is a score where higher is better

Standalone, it trains the first model from a folder of CSV files (unusable files are moved to
quarantine/ with their reasons; --strict-history stops instead, listing them):

    python train_classification_model.py used_gts/ --output model/initial_model.pkl
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import make_column_selector, make_column_transformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder

ERROR_METRIC_NAME = "misclassification_rate"
ERROR_PER_FILE = False
LOWER_ERROR_IS_BETTER = True


def prepare_file(frame: pd.DataFrame, path) -> pd.DataFrame:
    """Return the rows of one file. Booleans arrive as 0.0/1.0, missing values as NaN."""
    return frame


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
            (numeric, make_column_selector(dtype_include="number")),
            (categorical, make_column_selector(dtype_exclude="number")),
        ),
        HistGradientBoostingClassifier(random_state=random_state),
    )
    if sample_weight is None:
        return model.fit(features, labels)
    # A pipeline routes fit parameters by step name: only the trees take the weights.
    return model.fit(features, labels, histgradientboostingclassifier__sample_weight=sample_weight)


def train_spark_model(frame, label_column: str, random_state: int = 0, weight_column=None):
    """The same idea on Spark MLlib: median imputation and one-hot encoding of text columns,
    then gradient-boosted trees (one against the rest per class, past two classes)."""
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import GBTClassifier, OneVsRest
    from pyspark.ml.feature import (
        Imputer,
        IndexToString,
        OneHotEncoder,
        SQLTransformer,
        StringIndexer,
        VectorAssembler,
    )
    from pyspark.sql import functions as F

    features = [name for name in frame.columns if name not in (label_column, weight_column)]
    # A column without a value in these rows tells the trees nothing, and Imputer cannot take
    # its median: the model leaves it out (a file's missing cell arrives as null).
    counts = frame.select([F.count(F.col(name)).alias(name) for name in features]).first()
    features = [name for name in features if counts[name] > 0]
    kinds = dict(frame.dtypes)
    numeric = [name for name in features if kinds[name] != "string"]
    text = [name for name in features if kinds[name] == "string"]
    # The pipeline's own columns start with more underscores than any of the frame's.
    own = "_" * (1 + max(len(name) - len(name.lstrip("_")) for name in frame.columns))
    numbers = [f"{own}number_{i}" for i in range(len(numeric))]
    indices = [f"{own}text_{i}" for i in range(len(text))]
    onehots = [f"{own}onehot_{i}" for i in range(len(text))]
    # Spark's trees learn class indices 0..k-1; the last stages turn the index back into
    # the class as the label column has it, so `prediction` compares with the labels.
    classes = StringIndexer(inputCol=label_column, outputCol=f"{own}label_index",
                            stringOrderType="alphabetAsc").fit(frame)
    stages = [Imputer(inputCols=numeric, outputCols=numbers, strategy="median")] if numeric else []
    if text:
        stages += [
            StringIndexer(inputCols=text, outputCols=indices, handleInvalid="keep"),
            OneHotEncoder(inputCols=indices, outputCols=onehots, handleInvalid="keep"),
        ]
    columns = {"featuresCol": f"{own}features", "labelCol": f"{own}label_index",
               **({"weightCol": weight_column} if weight_column else {})}
    trees = GBTClassifier(maxIter=50, seed=random_state, **columns)
    if len(classes.labels) > 2:
        # One class at a time, OneVsRest's default: three at once on 2 cores fitted 200,000
        # rows 1.1 times faster for a third more memory, and memory is what large history
        # runs out of first.
        trees = OneVsRest(classifier=trees, **columns)
    stages += [
        VectorAssembler(inputCols=numbers + onehots, outputCol=f"{own}features"),
        trees.setPredictionCol(f"{own}predicted_index"),
        IndexToString(inputCol=f"{own}predicted_index", outputCol=f"{own}predicted_class",
                      labels=classes.labels),
        SQLTransformer(statement=f"SELECT *, CAST({own}predicted_class AS "
                                 f"{kinds[label_column]}) AS prediction FROM __THIS__"),
    ]
    # The label's indexer stays out of the model: the rows it predicts have no label.
    return Pipeline(stages=stages).fit(classes.transform(frame))


def error_metric(labels, predictions) -> float:
    """Share of rows whose predicted class is wrong."""
    return float(np.mean(np.asarray(labels) != np.asarray(predictions)))


def main(argv=None) -> int:
    """Train the first model from a folder of CSV files (retraining/first_training.py)."""
    from retraining.first_training import main as train_first_model

    return train_first_model(argv)


if __name__ == "__main__":
    raise SystemExit(main())
