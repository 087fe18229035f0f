"""One retraining cycle, as cron runs it every night.

    trigger -> probation -> monitor -> decide -> retrain -> compare -> promote -> archive
                                         `-> deferred: too few files to judge, kept for more

`run_cycle` below is the whole cycle. Opening, monitoring and archiving are further down; the
retrain step is retraining/training.py, compare and promote are retraining/decision.py.
Exit codes: 0 the cycle completed (any outcome), 1 failure, 2 bad usage, 75 try later,
130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from retraining import decision, probation, training
from retraining.archive import archive_interrupted, check_one_filesystem, finish_archive
from retraining.cli import ArgumentParser, exit_process, run_entry_point
from retraining.config import Settings, add_options
from retraining.context import CycleContext, Monitoring, phase
from retraining.datafiles import list_data_files
from retraining.errors import NeedsAttention
from retraining.registry import store_faults
from retraining.runlock import exclusive_run

log = logging.getLogger("retraining.cycle")


def run_cycle(settings: Settings) -> dict[str, Any]:
    """Run one cycle and return its summary (the JSON contract)."""
    summary = empty_summary(settings)
    timings = summary["timings"]
    needed = max(1, settings.min_new_files)
    started = time.perf_counter()

    # 1. Trigger: cheap, and before anything heavy is imported or the store is touched.
    new_paths = list_data_files(settings.new_dir, settings.settle_seconds)
    summary["new_files"] = len(new_paths)
    timings["trigger"] = round(time.perf_counter() - started, 3)
    if len(new_paths) < needed and not archive_interrupted(settings.used_dir):
        return finish(summary, "skipped", too_few_files(settings, len(new_paths)))

    started = time.perf_counter()  # "open": the lock, MLflow's import, the store, the files
    # A store fault ends the cycle with one line (exit 75 or 1); archiving comes after every
    # store call, so no file has moved by then.
    # used_gts/ is locked too: two new_gts/ folders may feed one history.
    with exclusive_run(settings.new_dir), exclusive_run(settings.used_dir), \
            store_faults(settings, "finish the cycle"):
        check_one_filesystem(settings.new_dir, settings.used_dir, settings.quarantine_dir)
        # A cycle killed while archiving had completed: its batch is consumed, not new.
        if archive_interrupted(settings.used_dir) and not settings.dry_run:
            summary["resumed_archive"] = finish_archive(settings.used_dir)
            log.warning("finished archiving %d files of an interrupted cycle",
                        len(summary["resumed_archive"]))
        # Listed again under the lock: a run that just finished may have archived some.
        new_paths = list_data_files(settings.new_dir, settings.settle_seconds)
        summary["new_files"] = len(new_paths)
        if len(new_paths) < needed:
            return finish(summary, "skipped",
                          f"{len(new_paths)} new files, {settings.min_new_files} needed, after "
                          + ("finishing an interrupted archive" if summary["resumed_archive"]
                             else "another cycle consumed some"))
        context = open_cycle(settings, new_paths, timings)
        timings["open"] = round(time.perf_counter() - started, 3)
        summary["quarantined_files"] = context.quarantined
        if len(context.new_files) < needed:
            return finish(summary, "skipped", f"{len(context.new_files)} usable new files after "
                                              f"quarantining {len(context.quarantined)}, "
                                              f"{settings.min_new_files} needed")
        summary["production_version_before"] = context.production.version

        # 2. Probation: the first cycle after a promotion judges it against the version it
        # replaced, and moves the alias back if that one is significantly better.
        trial = None
        if probation.replaced_version(context) is not None:
            with phase(timings, "probation"):
                trial = probation.hold_probation(context)
        summary["probation"] = trial and trial.summary()
        if trial is not None and trial.rolled_back:
            context = reopen_after_rollback(context, trial.replaced)

        # 3. Monitor the production model on the new files.
        with phase(timings, "monitor"):
            monitoring = monitor(context)
        summary["monitoring_error"] = monitoring.error
        summary["monitoring_run_id"] = monitoring.run_id
        summary["drift_share"] = monitoring.drift_share

        # 4. Decide; a batch too small for the gate to judge waits whole for the next one.
        if not monitoring.retrain:
            outcome, reason = "healthy", monitoring.reason
        elif (plan := training.plan_retraining(context)).lacks:
            outcome, reason = "deferred", decision.defer(context, monitoring, plan.lacks)
        else:
            # 5. Retrain on the training window that validates best; hold out new files.
            challenger = training.train_challenger(context, monitoring, plan)
            summary.update(challenger_version=challenger.version,
                           training_window=challenger.training_window,
                           heldout_files=sorted(challenger.heldout_names),
                           retraining_run_id=challenger.run_id)

            # 6. Compare both models on the same held-out files; promote if better, unless a
            # person moved the alias meanwhile.
            with phase(timings, "compare"):
                comparison = decision.compare(context, monitoring, challenger)
            summary.update(production_error=comparison.production_error,
                           challenger_error=comparison.challenger_error,
                           earlier_versions=[c.summary() for c in comparison.earlier])
            with phase(timings, "promote"):
                outcome, reason = decision.decide(context, challenger, comparison)

        # Read back from the registry: what the alias points at now, whatever happened.
        summary["production_version_after"] = context.registry.production_version()

        # 7. Archive what this completed cycle consumed: the last step, with no store call
        # after it, so a store fault never leaves a completed cycle reported as failed.
        if outcome != "deferred":
            with phase(timings, "archive"):
                summary["archived_files"] = archive(context)
        if trial is not None and trial.rolled_back:
            moved = "would move" if settings.dry_run else "moved"
            reason = (f"{trial.reason}; alias {moved} back to version {trial.replaced}; "
                      f"then: {reason}")
        return finish(summary, outcome, reason)


def too_few_files(settings: Settings, count: int) -> str:
    """Why the trigger skips: the files found, those needed, and any still settling."""
    from retraining.datafiles import settling_files

    reason = f"{count} new files, {settings.min_new_files} needed"
    settling = len(settling_files(settings.new_dir, settings.settle_seconds))
    if settling:
        # Files just copied in are not missing: the next run takes them.
        reason += (f"; {settling} more {'is' if settling == 1 else 'are'} still settling "
                   f"(modified in the last {settings.settle_seconds:g} s)")
    return reason


def empty_summary(settings: Settings) -> dict[str, Any]:
    keys = ("outcome", "reason", "new_files", "monitoring_error", "production_version_before",
            "production_version_after", "challenger_version", "production_error",
            "challenger_error", "archived_files", "heldout_files", "monitoring_run_id",
            "retraining_run_id", "quarantined_files", "resumed_archive", "drift_share",
            "training_window", "probation", "earlier_versions")
    return dict.fromkeys(keys) | {"dry_run": settings.dry_run, "timings": {}}


def finish(summary: dict[str, Any], outcome: str, reason: str) -> dict[str, Any]:
    summary.update(outcome=outcome, reason=reason)
    log.info("outcome: %s (%s)", outcome, reason)
    return summary


# --- 1. open: what every step shares --------------------------------------------------------

def open_cycle(settings: Settings, new_paths: list[Path],
               timings: dict | None = None) -> CycleContext:
    """Load the domain, the production model (once) and every usable new file (once)."""
    from retraining.domain import load_domain
    from retraining.registry import Registry
    from retraining.threads import fit_to_machine

    domain = load_domain(settings.domain_file,
                         settings.spark_master if settings.engine == "spark" else None,
                         settings.spark_executor_wait)
    registry = Registry(settings)
    registry.close_interrupted_runs(str(settings.new_dir))
    decision.finish_interrupted_promotions(registry, str(settings.new_dir))
    if not settings.dry_run:
        finish_interrupted_moves(new_paths, settings)
    new_paths = [path for path in new_paths if os.path.lexists(path)]
    production = registry.load_production()
    # scikit-learn is loaded now: its thread pools can be fitted to the machine.
    fit_to_machine(settings.threads)
    new_files, quarantined, columns = read_new_files(settings, domain, new_paths, production)
    predictions, unpredictable = production_predictions(settings, production, new_files, columns)
    new_files = [loaded for loaded in new_files if loaded.name in predictions]
    quarantined += unpredictable
    if quarantined:
        registry.record_quarantine(quarantined)
    return CycleContext(settings, domain, registry, production, new_files, columns, quarantined,
                        {} if timings is None else timings, predictions)


def reopen_after_rollback(context: CycleContext, restored: str) -> CycleContext:
    """The cycle goes on with the version probation restored: loaded again, under the
    alias (a dry run, which moved nothing, loads `restored`), with its own predictions on
    the new files."""
    from retraining.evaluation import predict_files

    production = context.registry.load_production(
        restored if context.settings.dry_run else None)
    # Probation has just predicted with this version on every one of these files.
    predictions = predict_files(production.model, context.new_files, context.columns)
    return dataclasses.replace(context, production=production, predictions=predictions,
                               rolled_back_from=context.production.version)


def production_predictions(settings: Settings, production, files: list,
                           columns: list[str]) -> tuple[dict, list[dict]]:
    """Production's predictions per file, from one call; and the files it cannot predict on.

    Whatever the checks miss, a file the model raises on is that file's fault, and is
    quarantined with the model's own message, unless the model raises on every file: then
    it is the model's, and a person must look.
    """
    from retraining.archive import quarantine_file
    from retraining.errors import raise_if_stopped
    from retraining.evaluation import predict_files

    if not files:
        return {}, []
    try:
        return predict_files(production.model, files, columns), []
    except Exception as error:  # the user's model: whatever it raises, find the file
        raise_if_stopped(error)  # not the model's, nor a file's: the run ends
        first_error = error
    predictions, failures = {}, []
    for loaded in files:
        try:
            predictions |= predict_files(production.model, [loaded], columns)
        except Exception as error:  # the same: this file alone makes the model raise
            raise_if_stopped(error)
            failures.append((loaded, f"{type(error).__name__}: "
                                     f"{' '.join(str(error).split())[:300]}"))
    if not predictions:
        raise NeedsAttention(f"production version {production.version} cannot predict on any "
                             f"of the {len(files)} new files ({failures[0][1]})",
                             fix="check the model and prepare_file in the domain file; no "
                                 "file was archived") from first_error
    quarantined = []
    for loaded, message in failures:
        reason = (f"{loaded.shown_name}: production version {production.version} cannot "
                  f"predict on it ({message})")
        entry = {"file": loaded.shown_name, "reason": reason, "quarantined_as": None}
        if not settings.dry_run:
            entry["quarantined_as"] = quarantine_file(loaded.path, reason,
                                                      settings.quarantine_dir)
        quarantined.append(entry)
    return predictions, quarantined


def finish_interrupted_moves(new_paths: list[Path], settings: Settings) -> None:
    """Take back a file that a kill left between its link into quarantine and its unlink.

    The reason may not be written yet: the file is checked again. (Archive moves are
    finished from their plan; a file that shares its inode with history for any other
    reason is a re-delivery, quarantined as such.)
    """
    from retraining.archive import undo_quarantine

    for path in new_paths:
        if os.lstat(path).st_nlink > 1:
            undo_quarantine(path, settings.quarantine_dir)


def read_new_files(settings: Settings, domain, paths: list[Path],
                   production) -> tuple[list, list[dict], list[str]]:
    """Read each new file once; move each unusable one to quarantine with its reason.

    A bad file must not stall every night's cycle, nor be lost: it is set aside, named in
    the summary and in MLflow, and the cycle goes on with the good ones. When every file
    fails the same check, though, the cause is a setting: that is a UsageError, and nothing
    moves (retraining/screening.py). Also returns the feature columns: the production
    model's inputs, else (no signature) the first good file's.
    """
    from retraining.datafiles import Expected, check_new_file, load_file, name_is_text, shown_name
    from retraining.errors import DataError
    from retraining.ledger import history_content
    from retraining.screening import refuse_if_a_setting, set_aside

    history = history_content(settings.used_dir, list_data_files(settings.used_dir),
                              record_unknown=not settings.dry_run)
    taken = {content: f"{name} in {settings.used_dir.name}/" for content, name in history.items()}
    expected = Expected.of_production(production)
    good, failures = [], []
    for path in paths:
        try:
            if path.is_symlink():
                # Only what is inside new_gts/ is read: a link could reach anywhere.
                raise DataError(f"{shown_name(path)} is a symbolic link, not a file",
                                fix=f"put the file itself in {settings.new_dir}")
            if not name_is_text(path):
                # Lineage, tags and the ledger name files by text: such a name has no place.
                raise DataError(f"{shown_name(path)}: its name is not valid UTF-8",
                                fix="rename it with a UTF-8 name and put it back")
            loaded = load_file(path, settings.label_column, domain.prepare_file,
                               known_columns=production.input_columns or ())
            check_new_file(loaded, expected, taken)
        except DataError as error:
            failures.append((path, error))
            continue
        good.append(loaded)
        taken[loaded.content_sha256] = f"{loaded.shown_name} in this batch"
    refuse_if_a_setting(settings, domain, settings.new_dir, [error for _, error in failures],
                        usable=len(good))
    quarantined = set_aside(settings, settings.new_dir, failures)
    columns = production.input_columns or (list(good[0].features.columns) if good else [])
    return good, quarantined, columns


# --- 2. monitor ----------------------------------------------------------------------------

def monitor(context: CycleContext) -> Monitoring:
    from retraining.datafiles import batch_key
    from retraining.evaluation import error_on, needs_retraining
    from retraining.registry import MONITORING_RUN

    settings, domain = context.settings, context.domain
    predictions = context.predictions
    error = error_on(domain, context.new_files, predictions)
    error_crossed = needs_retraining(domain, error, settings.error_threshold)
    relation = "crossed" if error_crossed else "within"
    reason = (f"production v{context.production.version} {domain.error_metric_name} "
              f"{error:.4f} on {len(context.new_files)} new files {relation} the threshold "
              f"{settings.error_threshold:.4f}")
    with phase(context.timings, "drift"):  # part of "monitor", timed apart for the benchmark
        drift = drift_of_new_files(context)
    drift_fires = settings.drift_trigger is not None and drift.share > settings.drift_trigger
    if drift_fires:
        reason += (f"; data drift on {len(drift.drifted_features)}/{len(drift.features)} "
                   f"features ({', '.join(drift.drifted_features)}), share {drift.share:.2f}, "
                   f"passed --drift-trigger {settings.drift_trigger:.2f}")
    # A rare class can be lost while the overall error stays under the threshold, and a
    # slow drift crosses it late: both are measured against production's own baseline.
    found = against_baseline(context)
    if found.collapses:
        reason += "; a class collapsed: " + "; ".join(map(str, found.collapses))
    rose = settings.rise_trigger and found.rose
    if rose:
        # For a score (higher is better) the wrong way is down.
        sign = 1.0 if domain.lower_error_is_better else -1.0
        rise = found.rise
        bound = rise.low if domain.lower_error_is_better else rise.high
        reason += (f"; its {domain.error_metric_name} "
                   f"{'rose' if sign > 0 else 'fell'} since it was judged: "
                   f"{found.error_before:.4f} then, {'up' if sign > 0 else 'down'} "
                   f"{sign * rise.estimate:.4f}, at least {sign * bound:.4f} at "
                   f"{rise.level:.0%} confidence (--rise-confidence)")
    retrain_needed = error_crossed or drift_fires or bool(found.collapses) or rose
    log.info(reason)
    with context.registry.run(MONITORING_RUN, {"batch_key": batch_key(context.new_files),
                                               "new_dir": str(settings.new_dir)}) as run:
        context.registry.log_summary(
            params={"threshold": settings.error_threshold, "error_metric": domain.error_metric_name,
                    "model_name": settings.model_name, "alias": settings.alias},
            metrics={"monitoring_error": error, domain.error_metric_name: error,
                     "new_files": len(context.new_files),
                     "quarantined_files": len(context.quarantined),
                     "new_rows": sum(loaded.rows for loaded in context.new_files),
                     "dropped_unlabelled_rows": sum(f.dropped_rows for f in context.new_files),
                     **found.classes.metrics(),
                     **({} if found.rise is None else {
                         "baseline_error": found.error_before,
                         "error_rise": found.rise.estimate,
                         "error_rise_low": found.rise.low, "error_rise_high": found.rise.high})},
            tags={"decision": "retrain" if retrain_needed else "healthy", "reason": reason,
                  "production_version": context.production.version,
                  "collapsed_classes": ",".join(c.label for c in found.collapses) or "none"})
        if run is not None:
            log_drift(context.registry, settings, drift)
    return Monitoring(error, retrain_needed, reason, predictions, run and run.info.run_id,
                      drift.share)


def against_baseline(context: CycleContext):
    """Production's recall and precision of each class on the new files; the classes whose
    recall collapsed against its baseline; and the rise of its error since then, with
    whether it is significant (retraining/baseline.py, retraining/classes.py).

    A version no cycle has judged (the first one registered, say) has no baseline yet: this
    batch becomes it, recorded on the version, and nothing can have collapsed or risen.
    """
    from retraining.baseline import (
        CLASS_BASELINE_TAG,
        ERROR_BASELINE_TAG,
        FIRST_BATCH,
        SOURCE_TAG,
        baseline_tags,
        decided_on,
        extended,
        parse_units,
    )
    from retraining.classes import collapsed_since_baseline, count_classes, parse_baseline
    from retraining.datafiles import batch_key
    from retraining.evaluation import pooled_labels
    from retraining.gate import rise_interval

    settings, production, domain = context.settings, context.production, context.domain
    labels, predictions = pooled_labels(context.new_files, context.predictions)
    classes = count_classes(labels, predictions)
    now = context.production_units()
    classes_before = parse_baseline(production.tags.get(CLASS_BASELINE_TAG))
    error_before = parse_units(production.tags.get(ERROR_BASELINE_TAG))
    if classes_before is None or error_before is None:
        if not settings.dry_run:
            context.registry.annotate_version(production.version, baseline_tags(
                now, classes.baseline_json(),
                f"{FIRST_BATCH} ({len(context.new_files)} files)"))
        return Baseline(classes, [])
    collapses = collapsed_since_baseline(classes_before, classes, settings.max_recall_drop,
                                         settings.confidence_level)
    rise = rise_interval(domain, error_before, now, settings)
    significant = rise.low > 0 if domain.lower_error_is_better else rise.high < 0
    source = production.tags.get(SOURCE_TAG, "")
    if not (settings.dry_run or collapses or significant or FIRST_BATCH in source
            or decided_on(production.tags, batch_key(context.new_files))):
        # Judged and then unchanged: the first batch it monitors joins its baseline (not
        # the batch that promoted it, read again after a stop: its files are in it).
        units, classes_json = extended(error_before, production.tags[CLASS_BASELINE_TAG], now,
                                       {label: (classes.hits[label], classes.support[label])
                                        for label in classes.support})
        context.registry.annotate_version(production.version, baseline_tags(
            units, classes_json,
            f"{source} and {FIRST_BATCH} ({len(context.new_files)} files)"))
    return Baseline(classes, collapses, error_before.mean, rise, significant)


@dataclasses.dataclass(frozen=True)
class Baseline:
    """What monitoring found against production's baseline."""

    classes: Any  # retraining.classes.ClassCounts on the new files
    collapses: list
    error_before: float | None = None  # none before the version has a baseline
    rise: Any = None  # retraining.gate.Interval of the error now minus error_before
    rose: bool = False  # significantly, the wrong way


def drift_of_new_files(context: CycleContext):
    """Per-feature drift of the new files against a sample of the history (retraining.drift)."""
    from retraining.datafiles import concat_files, list_data_files
    from retraining.drift import drift_report
    from retraining.screening import history_loader

    settings = context.settings
    new_features, _ = concat_files(context.new_files, context.columns)
    drift = drift_report(list_data_files(settings.used_dir), new_features, context.columns,
                         label_column=settings.label_column,
                         prepare_file=context.domain.prepare_file, seed=settings.seed,
                         p_value=settings.drift_p_value, min_effect=settings.drift_min_effect,
                         load=history_loader(settings, settings.used_dir))
    log.info("drift share %.2f (%s) against %d history rows, in %.2f s", drift.share,
             ", ".join(drift.drifted_features) or "no feature", drift.reference_rows,
             drift.seconds)
    return drift


def log_drift(registry, settings: Settings, drift) -> None:
    from retraining.drift import write_drift_csv

    registry.log_summary(
        params={"drift_p_value": settings.drift_p_value,
                "drift_min_effect": settings.drift_min_effect,
                "drift_trigger": settings.drift_trigger if settings.drift_trigger is not None
                else "off"},
        metrics={"drift_share": drift.share, "drifted_features": len(drift.drifted_features),
                 "drift_reference_rows": drift.reference_rows,
                 "drift_reference_files": drift.reference_files, "drift_seconds": drift.seconds})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "drift.csv"
        write_drift_csv(path, drift)
        registry.log_artifact(path)


# --- 6. archive ----------------------------------------------------------------------------

def archive(context: CycleContext) -> list[str] | None:
    from retraining.archive import archive_files

    if context.settings.dry_run:
        return None
    return archive_files(context.new_files, context.settings.used_dir,
                         columnar_history=context.settings.columnar_history)


# --- entry point ---------------------------------------------------------------------------

OPTIONS = ["new_dir", "used_dir", "quarantine_dir", "settle_seconds", "domain_file",
           "tracking_uri", "store_timeout", "experiment", "model_name", "alias", "label_column",
           "min_new_files", "error_threshold", "drift_p_value", "drift_min_effect",
           "drift_trigger", "min_improvement", "holdout_fraction", "seed", "min_heldout_files",
           "min_heldout_rows", "max_file_regression", "max_recall_drop", "confidence_level",
           "bootstrap_resamples", "require_significance", "non_inferiority_margin",
           "rise_trigger", "rise_confidence", "auto_rollback", "earlier_versions",
           "training_windows", "recent_files", "recency_half_life", "validation_fraction",
           "window_sample_rows", "strict_history", "columnar_history", "threads", "engine",
           "spark_master", "spark_executor_wait", "dry_run", "json"]


def main(argv=None) -> int:
    parser = ArgumentParser(prog="pipeline_orchestrator.py", description=__doc__.splitlines()[0])
    add_options(parser, OPTIONS)
    return run_entry_point(parser, argv, lambda settings, args: run_cycle(settings))


if __name__ == "__main__":
    exit_process(main())
