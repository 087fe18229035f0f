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
    import pickle
    from pathlib import Path

    from retraining.cli import ArgumentParser, run_entry_point
    from retraining.config import add_options

    parser = ArgumentParser(prog="train_classification_model.py",
                            description="Train the first model from a folder of CSVs.")
    parser.add_argument("data_dir", type=Path, help="folder of labelled CSV files")
    parser.add_argument("--output", type=Path, required=True,
                        help="where to write the pickle (required)")
    add_options(parser, ["label_column", "seed", "domain_file", "quarantine_dir",
                         "strict_history", "json"])

    def train(settings, args):
        from retraining.datafiles import concat_files, list_data_files
        from retraining.domain import load_domain
        from retraining.errors import UsageError
        from retraining.screening import read_history
        from retraining.statefiles import write_atomically

        domain = load_domain(settings.domain_file)
        data_dir = args.data_dir.resolve()
        if not list_data_files(data_dir):
            raise UsageError(f"no CSV files in {args.data_dir}",
                             fix="point DATA_DIR at a folder of labelled CSV files")
        # Unusable files are moved to the quarantine folder with their reasons.
        history = read_history(settings, domain, data_dir)
        features, labels = concat_files(history.files, history.columns)
        model = domain.train(features, labels, random_state=settings.seed)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        # Written then renamed, never through a link planted at the partial's name.
        write_atomically(args.output, pickle.dumps(model))
        return {"model_file": str(args.output), "files": len(history.files),
                "rows": len(labels), "quarantined_files": history.quarantined}

    return run_entry_point(parser, argv, train)


if __name__ == "__main__":
    raise SystemExit(main())
