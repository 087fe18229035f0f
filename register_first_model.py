"""Register the first pre-trained model (a file in model/) and give it the production alias.

Run once. The model file is what joblib.dump or pickle.dump wrote (.joblib, .pkl, .pickle).
It is refused if it was saved by another scikit-learn than the installed one (unless
--allow-version-mismatch), or if it does not answer as a classifier on the history in
used_gts/ (retraining/modelfile.py says what is checked). Then it is evaluated there, logged
with that error, registered as a new version and, unless --no-alias, given the alias. If the
alias already exists it refuses unless --force. Only load model files you made yourself:
unpickling runs code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retraining.cli import ArgumentParser, exit_process, run_entry_point
from retraining.config import Settings, add_options
from retraining.errors import UsageError

OPTIONS = ["model_dir", "used_dir", "quarantine_dir", "domain_file", "tracking_uri",
           "store_timeout", "experiment", "model_name", "alias", "label_column",
           "strict_history", "columnar_history", "threads", "force", "no_alias", "json"]


CHANGED_BY = "register_first_model.py --force"


def register_first_model(settings: Settings, model_file: Path | None,
                         allow_version_mismatch: bool = False) -> dict[str, Any]:
    from retraining.datafiles import batch_key, label_kind, labels_read_kind, list_data_files
    from retraining.domain import load_domain
    from retraining.evaluation import error_on
    from retraining.lineage import describe, lineage_tags
    from retraining.modelfile import (
        check_version,
        checked_predictions,
        find_model_file,
        load_model_file,
    )
    from retraining.registry import REGISTRATION_RUN, Registry, signature_sample
    from retraining.screening import read_history
    from retraining.threads import fit_to_machine

    model_path = model_file or find_model_file(settings.model_dir)
    if not model_path.is_file():
        raise UsageError(f"model file {model_path} does not exist",
                         fix="pass --model-file the path of your model file")
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
    # Checked like new files: an unusable history file is set aside with its reason.
    checked = read_history(settings, domain, settings.used_dir)
    history, columns = checked.files, checked.columns
    # After the domain is loaded: a model holding classes defined there needs them to load.
    saved = load_model_file(model_path)
    check_version(saved, allow_version_mismatch)
    model = saved.model
    fit_to_machine(settings.threads)  # scikit-learn is loaded with the model
    predictions = checked_predictions(saved, history, columns)
    error = error_on(domain, history, predictions)
    # Never all of the history stacked: on 20M rows that alone doubled what was read.
    sample = signature_sample(loaded.features[columns] for loaded in history)

    # The alias tag tells the alias history (registry_tool.py) whether this run set it;
    # replacing a production version (--force) is a move by hand, recorded as one below.
    replaces = current is not None and not settings.no_alias
    moved_alias = "(none)" if settings.no_alias or replaces else settings.alias
    with registry.run(REGISTRATION_RUN, {"model_file": model_path.name, "alias": moved_alias}):
        registry.log_summary(
            params={"model_file": model_path.name, "model_class": type(model).__name__,
                    "error_metric": domain.error_metric_name, "history_files": len(history),
                    "saved_with_other_sklearn": saved.version_note or None},
            metrics={"history_error": error, domain.error_metric_name: error,
                     "history_rows": sum(loaded.rows for loaded in history)})
        version = registry.log_model_version(model, sample, model.predict(sample.head(100)))
    reason = (f"first model from {model_path.name}; {domain.error_metric_name} {error:.4f} "
              f"on {len(history)} history files (data it may have been trained on)")
    # Its training data are unknown here; what it was evaluated on is the history.
    # label_kind: what the cycles check new labels against (TRUE/FALSE read as 0/1).
    lineage = lineage_tags(settings, current, history_batch_key=batch_key(history),
                           label_kind=labels_read_kind(history)
                           or label_kind(history[0].labels))
    registry.annotate_version(version, {"decision": "registered_first", "history_error": error,
                                        "previous_production_version": current or "none"}
                              | lineage, description=f"{reason}. {describe(lineage)}")
    if replaces:
        from retraining.operations import move_alias

        # Like registry_tool.py set-alias: under the alias lock, an AliasChange run, the
        # replaced version tagged, so no cycle promotes it again on its own.
        with registry.alias_lock():
            move_alias(registry, settings, settings.alias, version, "set-alias",
                       f"register_first_model.py --force: {reason}", CHANGED_BY)
    elif not settings.no_alias:
        registry.set_alias(version)
    if checked.quarantined:
        registry.record_quarantine(checked.quarantined)
    return {"model_name": settings.model_name, "version": version,
            "alias": None if settings.no_alias else settings.alias,
            "previous_production_version": current, "history_error": error,
            "history_files": len(history), "quarantined_files": checked.quarantined,
            "saved_with_other_sklearn": saved.version_note or None}


def main(argv=None) -> int:
    parser = ArgumentParser(prog="register_first_model.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model-file", type=Path, default=None,
                        help="the model file to register, saved by joblib.dump or pickle.dump "
                             "(default: the one .joblib, .pkl or .pickle in model/)")
    parser.add_argument("--allow-version-mismatch", action="store_true",
                        help="register a model saved by another scikit-learn than the "
                             "installed one, if it passes the checks on history (default: off)")
    add_options(parser, OPTIONS)
    return run_entry_point(parser, argv, lambda settings, args: register_first_model(
        settings, args.model_file, args.allow_version_mismatch))


if __name__ == "__main__":
    exit_process(main())
