"""What the benchmark runs in its child processes, one process per measurement.

    python bench/workloads.py bare  --used-dir D --new-dir D --model-file M --heldout-files N
    python bench/workloads.py naive --used-dir D --new-dir D --tracking-uri URI --heldout-files N
    python bench/workloads.py floor --used-dir D --new-dir D --tracking-uri URI --heldout-files N

`bare` is the work itself: the product's CSV reader (pyarrow), the default model of
train_classification_model.py, its predictions on the monitored and held-out files; no MLflow.
`naive` is the same cycle written the obvious way: copy every file to a temporary folder, read
each with pandas' default reader, load and log models with MLflow's defaults.
`floor` is only what the cycle adds and cannot skip, storing its models as it does: MLflow's
import and SQLite store, loading production from the registry (skops), registering a version.
Each prints one JSON object of phase timings (seconds) on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

START = time.perf_counter()
PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))


def csv_paths(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix == ".csv")


def split(frames: list, heldout_files: int) -> tuple[list, list]:
    """New files: the last `heldout_files` are held out, as many as the cycle holds out."""
    return frames[:-heldout_files], frames[-heldout_files:]


def monitor_train_compare(domain, history: list, new: list, production, heldout_files: int,
                          timings: dict) -> tuple[dict, object, object]:
    """The work every side does once its files are read: monitor, fit, score held-out files.

    Returns the errors, the challenger and five training rows (an input example).
    """
    import pandas as pd

    error_metric, train_model = domain.error_metric, domain.train_model
    mark = time.perf_counter()
    monitored = pd.concat(new, ignore_index=True)
    monitoring_error = error_metric(monitored["label"],
                                    production.predict(monitored.drop(columns="label")))
    del monitored
    timings["monitor"] = time.perf_counter() - mark

    mark = time.perf_counter()
    new_training, heldout = split(new, heldout_files)
    training = pd.concat(history + new_training, ignore_index=True)
    features = training.drop(columns="label")
    challenger = train_model(features, training["label"], random_state=42)
    example = features.head(5)
    del training, features
    timings["train"] = time.perf_counter() - mark

    mark = time.perf_counter()
    held = pd.concat(heldout, ignore_index=True)
    challenger_error = error_metric(held["label"], challenger.predict(held.drop(columns="label")))
    production_error = error_metric(held["label"], production.predict(held.drop(columns="label")))
    timings["compare"] = time.perf_counter() - mark
    return ({"monitoring_error": monitoring_error, "production_error": production_error,
             "challenger_error": challenger_error}, challenger, example)


def bare(args) -> dict:
    import pickle

    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    import train_classification_model as domain

    timings = {"imports": time.perf_counter() - START}
    mark = time.perf_counter()

    def read(path: Path) -> pd.DataFrame:
        # The same reader as the cycle: one pyarrow parse, booleans as 0.0/1.0.
        table = pcsv.read_csv(path)
        for index, field in enumerate(table.schema):
            if pa.types.is_boolean(field.type) or pa.types.is_null(field.type):
                table = table.set_column(index, field.name,
                                         pc.cast(table[field.name], pa.float64()))
        return table.to_pandas()

    history = [read(path) for path in csv_paths(args.used_dir)]
    new = [read(path) for path in csv_paths(args.new_dir)]
    with open(args.model_file, "rb") as handle:
        production = pickle.load(handle)
    timings["read"] = time.perf_counter() - mark

    figures, _, _ = monitor_train_compare(domain, history, new, production,
                                          args.heldout_files, timings)
    return {"timings": timings, **figures}


def naive(args) -> dict:
    import shutil
    import tempfile

    import mlflow
    import mlflow.sklearn
    import pandas as pd
    import skops.io

    import train_classification_model as domain

    timings = {"imports": time.perf_counter() - START}
    mark = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        copies = {}
        for role, source in (("history", args.used_dir), ("new", args.new_dir)):
            (Path(folder) / role).mkdir()
            copies[role] = [shutil.copy(path, Path(folder) / role / path.name)
                            for path in csv_paths(source)]
        history = [pd.read_csv(path) for path in copies["history"]]
        new = [pd.read_csv(path) for path in copies["new"]]
    mlflow.set_tracking_uri(args.tracking_uri)
    production = mlflow.sklearn.load_model("models:/classifier@production")
    timings["read"] = time.perf_counter() - mark

    figures, challenger, example = monitor_train_compare(domain, history, new, production,
                                                         args.heldout_files, timings)

    mark = time.perf_counter()
    mlflow.set_experiment("naive")
    with mlflow.start_run():
        mlflow.log_metrics({"production_error": figures["production_error"],
                            "challenger_error": figures["challenger_error"]})
        # MLflow's defaults: requirements and signature inferred (from the input example).
        # Its default format, skops, refuses to save without the types to trust.
        trusted = skops.io.get_untrusted_types(data=skops.io.dumps(challenger))
        mlflow.sklearn.log_model(challenger, name="model", input_example=example,
                                 skops_trusted_types=trusted,
                                 registered_model_name="classifier")
    timings["log_register"] = time.perf_counter() - mark
    return {"timings": timings, **figures}


def floor(args) -> dict:
    """What the cycle cannot skip and the bare work never does: import MLflow and open the
    store, load the production model from the registry, register one model version. The
    product's own calls, so the figure is the cycle's floor, not a guess."""
    import pandas as pd  # noqa: F401  (the bare work's imports, timed apart)
    import pyarrow.csv  # noqa: F401

    import train_classification_model  # noqa: F401
    from retraining.cli import ArgumentParser
    from retraining.config import add_options, build_settings
    from retraining.datafiles import load_file

    timings = {"imports": time.perf_counter() - START}
    parser = ArgumentParser()
    add_options(parser, ["tracking_uri"])
    settings = build_settings(PROJECT_DIR, parser.parse_args(["--tracking-uri",
                                                              args.tracking_uri]), {})
    sample = load_file(csv_paths(args.new_dir)[0], settings.label_column, lambda f, p: f)

    mark = time.perf_counter()
    from retraining.registry import Registry

    registry = Registry(settings)
    timings["open"] = time.perf_counter() - mark
    mark = time.perf_counter()
    production = registry.load_production()
    timings["load_production"] = time.perf_counter() - mark
    mark = time.perf_counter()
    with registry.run("BenchFloor", {}):
        # The cycle's own call: signature predictions on the first 100 rows.
        registry.log_model_version(production.model, sample.features,
                                   production.model.predict(sample.features.head(100)))
    timings["log_register"] = time.perf_counter() - mark
    return {"timings": timings}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["bare", "naive", "floor"])
    parser.add_argument("--used-dir", type=Path, required=True)
    parser.add_argument("--new-dir", type=Path, required=True)
    parser.add_argument("--model-file", type=Path)
    parser.add_argument("--tracking-uri")
    parser.add_argument("--heldout-files", type=int, required=True)
    args = parser.parse_args(argv)
    result = {"bare": bare, "naive": naive, "floor": floor}[args.workload](args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
