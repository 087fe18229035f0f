"""Register the first pre-trained model (a pickle in model/) and give it the production alias.

Run once. The model is evaluated on the history in used_gts/, logged with that error,
registered as a new version and, unless --no-alias, given the alias. If the alias already
exists it refuses unless --force. Only load pickles you made yourself: unpickling runs code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from retraining.cli import ArgumentParser, exit_process, run_entry_point
from retraining.config import Settings, add_options
from retraining.errors import UsageError

OPTIONS = ["model_dir", "used_dir", "domain_file", "tracking_uri", "store_timeout", "experiment",
           "model_name", "alias", "label_column", "force", "no_alias", "json"]


def register_first_model(settings: Settings, model_file: Path | None) -> dict[str, Any]:
    from retraining.datafiles import (batch_key, check_columns, concat_files, list_data_files,
                                      load_files)
    from retraining.domain import load_domain
    from retraining.lineage import describe, lineage_tags
    from retraining.evaluation import error_on, predict_files
    from retraining.registry import REGISTRATION_RUN, Registry

    model_path = model_file or find_model_file(settings.model_dir)
    if not model_path.is_file():
        raise UsageError(f"model file {model_path} does not exist",
                         fix="pass --model-file the path of your pickle")
    # The one entry point that may start a store: a new project has none yet.
    registry = Registry(settings, new_store=True)
    current = registry.production_version()
    if current is not None and not settings.no_alias and not settings.force:
        raise UsageError(f"{settings.model_name!r} already has alias {settings.alias!r} "
                         f"on version {current}",
                         fix="pass --force to replace it, or --no-alias to register only")

    domain = load_domain(settings.domain_file)
    history_paths = list_data_files(settings.used_dir)
    if not history_paths:
        raise UsageError(f"no CSV files in {settings.used_dir} to evaluate the model on",
                         fix="put the labelled history in used_gts/ first")
    history = load_files(history_paths, settings.label_column, domain.prepare_file)
    columns = check_columns(history)
    with open(model_path, "rb") as handle:
        model = pickle.load(handle)
    error = error_on(domain, history, predict_files(model, history, columns))
    features, _ = concat_files(history, columns)

    # The alias tag tells the alias history (registry_tool.py) whether this run moved it.
    moved_alias = "(none)" if settings.no_alias else settings.alias
    with registry.run(REGISTRATION_RUN, {"model_file": model_path.name, "alias": moved_alias}):
        registry.log_summary(
            params={"model_file": model_path.name, "model_class": type(model).__name__,
                    "error_metric": domain.error_metric_name, "history_files": len(history)},
            metrics={"history_error": error, domain.error_metric_name: error,
                     "history_rows": len(features)})
        version = registry.log_model_version(model, features, model.predict(features.head(100)))
    reason = (f"first model from {model_path.name}; {domain.error_metric_name} {error:.4f} "
              f"on {len(history)} history files (data it may have been trained on)")
    # Its training data are unknown here; what it was evaluated on is the history.
    lineage = lineage_tags(settings, current, history_batch_key=batch_key(history))
    registry.annotate_version(version, {"decision": "registered_first", "history_error": error,
                                        "previous_production_version": current or "none"}
                              | lineage, description=f"{reason}. {describe(lineage)}")
    if not settings.no_alias:
        registry.set_alias(version)
    return {"model_name": settings.model_name, "version": version,
            "alias": None if settings.no_alias else settings.alias,
            "previous_production_version": current, "history_error": error,
            "history_files": len(history)}


def find_model_file(model_dir: Path) -> Path:
    candidates = sorted(model_dir.glob("*.pkl")) if model_dir.is_dir() else []
    if len(candidates) != 1:
        found = ", ".join(path.name for path in candidates) or "none"
        raise UsageError(f"expected exactly one .pkl in {model_dir}, found {found}",
                         fix="pass --model-file PATH")
    return candidates[0]


def main(argv=None) -> int:
    parser = ArgumentParser(prog="register_first_model.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model-file", type=Path, default=None,
                        help="the pickle to register (default: the one .pkl in model/)")
    add_options(parser, OPTIONS)
    return run_entry_point(parser, argv,
                           lambda settings, args: register_first_model(settings, args.model_file))


if __name__ == "__main__":
    exit_process(main())
