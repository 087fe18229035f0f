"""One retraining cycle, as cron runs it every night.

    trigger -> monitor -> decide -> retrain -> compare -> promote -> archive

`run_cycle` below is the whole cycle; each step is a function further down, in the order it
runs. Exit codes: 0 the cycle completed (any outcome), 1 failure, 2 bad usage, 75 try later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from retraining.archive import archive_interrupted, check_one_filesystem, finish_archive
from retraining.cli import ArgumentParser, exit_process, run_entry_point
from retraining.config import Settings, add_options
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
            store_faults(settings.tracking_uri, "finish the cycle"):
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

        # 2. Monitor the production model on the new files.
        with phase(timings, "monitor"):
            monitoring = monitor(context)
        summary["monitoring_error"] = monitoring.error
        summary["monitoring_run_id"] = monitoring.run_id
        summary["drift_share"] = monitoring.drift_share

        # 3. Decide.
        if not monitoring.retrain:
            outcome, reason = "healthy", monitoring.reason
        else:
            # 4. Retrain on the training window that validates best; hold out new files.
            challenger = retrain(context, monitoring)
            summary.update(challenger_version=challenger.version,
                           training_window=challenger.training_window,
                           heldout_files=sorted(challenger.heldout_names),
                           retraining_run_id=challenger.run_id)

            # 5. Compare both models on the same held-out files; promote if better, unless a
            # person moved the alias meanwhile.
            with phase(timings, "compare"):
                comparison = compare(context, monitoring, challenger)
            summary.update(production_error=comparison.production_error,
                           challenger_error=comparison.challenger_error)
            with phase(timings, "promote"):
                outcome, reason = decide(context, challenger, comparison)

        # Read back from the registry: what the alias points at now, whatever happened.
        summary["production_version_after"] = context.registry.production_version()

        # 6. Archive what this completed cycle consumed: the last step, with no store call
        # after it, so a store fault never leaves a completed cycle reported as failed.
        with phase(timings, "archive"):
            summary["archived_files"] = archive(context)
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
            "training_window")
    return dict.fromkeys(keys) | {"dry_run": settings.dry_run, "timings": {}}


@contextlib.contextmanager
def phase(timings: dict[str, float], name: str):
    """Add the block's wall time to `timings[name]` (seconds): the summary's `timings`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 3)


def finish(summary: dict[str, Any], outcome: str, reason: str) -> dict[str, Any]:
    summary.update(outcome=outcome, reason=reason)
    log.info("outcome: %s (%s)", outcome, reason)
    return summary


# --- what every step shares ----------------------------------------------------------------

@dataclasses.dataclass
class CycleContext:
    settings: Settings
    domain: Any
    registry: Any
    production: Any
    new_files: list
    columns: list
    quarantined: list
    timings: dict = dataclasses.field(default_factory=dict)  # seconds per phase, in the summary


def open_cycle(settings: Settings, new_paths: list[Path],
               timings: dict | None = None) -> CycleContext:
    """Load the domain, the production model (once) and every usable new file (once)."""
    from retraining.domain import load_domain
    from retraining.registry import Registry

    domain = load_domain(settings.domain_file)
    registry = Registry(settings)
    registry.close_interrupted_runs(str(settings.new_dir))
    if not settings.dry_run:
        finish_interrupted_moves(new_paths, settings)
    new_paths = [path for path in new_paths if os.path.lexists(path)]
    production = registry.load_production()
    new_files, quarantined, columns = read_new_files(settings, domain, new_paths, production)
    if quarantined:
        registry.record_quarantine(quarantined)
    return CycleContext(settings, domain, registry, production, new_files, columns, quarantined,
                        {} if timings is None else timings)


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
    the summary and in MLflow, and the cycle goes on with the good ones. Also returns the
    feature columns: the production model's inputs, else (no signature) the first good file's.
    """
    from retraining.archive import quarantine_file
    from retraining.datafiles import file_problem, load_file
    from retraining.errors import DataError
    from retraining.ledger import history_content

    history = history_content(settings.used_dir, list_data_files(settings.used_dir),
                              record_unknown=not settings.dry_run)
    taken = {sha256: f"{name} in {settings.used_dir.name}/" for sha256, name in history.items()}
    classes = getattr(production.model, "classes_", None)
    columns = production.input_columns
    good, quarantined = [], []
    for path in paths:
        try:
            if path.is_symlink():
                # Only what is inside new_gts/ is read: a link could reach anywhere.
                raise DataError(f"{path.name} is a symbolic link, not a file",
                                fix=f"put the file itself in {settings.new_dir}")
            loaded = load_file(path, settings.label_column, domain.prepare_file)
            problem = file_problem(loaded, columns, classes, taken)
            if problem:
                raise DataError(f"{path.name} {problem}", fix=f"fix or remove {path}")
        except DataError as error:
            entry = {"file": path.name, "reason": error.cause, "quarantined_as": None}
            if not settings.dry_run:
                entry["quarantined_as"] = quarantine_file(path, error.cause,
                                                          settings.quarantine_dir)
            quarantined.append(entry)
            continue
        good.append(loaded)
        columns = columns or list(loaded.features.columns)
        taken[loaded.sha256] = f"{path.name} in this batch"
    return good, quarantined, columns or []


# --- 2. monitor ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Monitoring:
    error: float
    retrain: bool
    reason: str
    predictions: dict  # production's predictions per new file, reused by the comparison
    run_id: str | None
    drift_share: float | None = None


def monitor(context: CycleContext) -> Monitoring:
    from retraining.datafiles import batch_key
    from retraining.evaluation import error_on, needs_retraining, predict_files
    from retraining.registry import MONITORING_RUN

    settings, domain = context.settings, context.domain
    predictions = predict_files(context.production.model, context.new_files, context.columns)
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
    retrain_needed = error_crossed or drift_fires
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
                     "dropped_unlabelled_rows": sum(f.dropped_rows for f in context.new_files)},
            tags={"decision": "retrain" if retrain_needed else "healthy", "reason": reason,
                  "production_version": context.production.version})
        if run is not None:
            log_drift(context.registry, settings, drift)
    return Monitoring(error, retrain_needed, reason, predictions, run and run.info.run_id,
                      drift.share)


def drift_of_new_files(context: CycleContext):
    """Per-feature drift of the new files against a sample of the history (retraining.drift)."""
    from retraining.datafiles import concat_files, list_data_files
    from retraining.drift import drift_report

    settings = context.settings
    new_features, _ = concat_files(context.new_files, context.columns)
    drift = drift_report(list_data_files(settings.used_dir), new_features, context.columns,
                         label_column=settings.label_column,
                         prepare_file=context.domain.prepare_file, seed=settings.seed,
                         p_value=settings.drift_p_value, min_effect=settings.drift_min_effect)
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


# --- 4. retrain ----------------------------------------------------------------------------

@dataclasses.dataclass
class Challenger:
    model: Any
    version: str | None
    heldout_names: set
    run_id: str | None
    lineage: dict | None = None  # the version's lineage tags; None when resumed or dry run
    training_window: str | None = None  # the candidate training set it was trained on


def retrain(context: CycleContext, monitoring: Monitoring) -> Challenger:
    from retraining.datafiles import (batch_key, check_columns, choose_heldout,
                                      list_data_files, load_file, release_rows,
                                      write_manifest)
    from retraining.lineage import describe, lineage_tags
    from retraining.progress import heartbeat
    from retraining.registry import RETRAINING_RUN
    from retraining.windows import choose_window

    settings, domain, registry = context.settings, context.domain, context.registry
    started = time.perf_counter()
    history_paths = list_data_files(settings.used_dir)
    history: list = []
    # Years of history can take minutes to read: each line says how far it is.
    with heartbeat(log, lambda: f"reading history: {len(history):,} of "
                                f"{len(history_paths):,} files"):
        for path in history_paths:
            history.append(load_file(path, settings.label_column, domain.prepare_file))
    check_columns(history + context.new_files, context.columns)
    # Held-out content is unique in the batch and absent from history, so neither model can
    # have been trained on it, whatever the files are called.
    heldout_names = choose_heldout(context.new_files, settings.holdout_fraction, settings.seed,
                                   seen_sha256={f.sha256 for f in history})
    new_training = [f for f in context.new_files if f.name not in heldout_names]
    training_files = history + new_training
    if not training_files:
        raise NeedsAttention("no files left to train on once the held-out files are set aside",
                             fix="add history to used_gts/ or lower --holdout-fraction")
    key = batch_key(context.new_files)
    heldout_key = batch_key([f for f in context.new_files if f.name in heldout_names])
    resumed = resume_challenger(context, monitoring, key, heldout_key, heldout_names)
    if resumed is not None:
        return resumed

    # Which history to learn from, chosen on validation files set aside from the new
    # training files: never the held-out ones, so the comparison below stays fair.
    window = choose_window(settings, domain, history, new_training, context.columns)
    log.info(window.reason)
    # The chosen window is trained again on all its files, validation files included: they
    # are the newest rows, those a changed concept is learnt from, and one more training
    # costs less than leaving a quarter of them out. The held-out files stay untouched.
    features, labels, weights = window.chosen.training_set(context.columns)
    log.info("training the challenger on window %r: %d files, %d rows (%d held out)",
             window.chosen.name, len(window.chosen.files), len(labels), len(heldout_names))
    # Stacked into `features` now, and not needed again (the comparison reads only the
    # held-out files): freed before the fit, the cycle's largest allocation.
    release_rows(history + new_training)
    fit_started = time.perf_counter()
    with heartbeat(log, f"training the challenger on window {window.chosen.name!r}: "
                        f"{len(labels):,} rows"):
        model = domain.train(features, labels, random_state=settings.seed,
                             sample_weight=weights)
    training_seconds = time.perf_counter() - fit_started
    manifest = ([f.manifest_entry("history") | window.file_facts(f) for f in history]
                + [f.manifest_entry("new_training") | window.file_facts(f) for f in new_training]
                + [f.manifest_entry("heldout") for f in context.new_files
                   if f.name in heldout_names])
    context.timings["train"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    version, lineage = None, None
    with registry.run(RETRAINING_RUN, {"batch_key": key, "new_dir": str(settings.new_dir),
                                       "monitoring_run_id": monitoring.run_id or ""}) as run:
        registry.log_summary(
            params={"seed": settings.seed, "holdout_fraction": settings.holdout_fraction,
                    "min_improvement": settings.min_improvement,
                    "error_threshold": settings.error_threshold,
                    "label_column": settings.label_column,
                    "error_metric": domain.error_metric_name,
                    "model_class": type(model).__name__,
                    "history_files": len(history), "new_training_files": len(new_training),
                    "heldout_files": len(heldout_names),
                    "min_heldout_files": settings.min_heldout_files,
                    "min_heldout_rows": settings.min_heldout_rows,
                    "max_file_regression": settings.max_file_regression,
                    "confidence_level": settings.confidence_level,
                    "bootstrap_resamples": settings.bootstrap_resamples,
                    "require_significance": settings.require_significance,
                    "recent_files": settings.recent_files,
                    "recency_half_life": settings.recency_half_life,
                    "validation_fraction": settings.validation_fraction, **window.params()},
            metrics={"training_rows": len(labels), "training_files": len(window.chosen.files),
                     "training_seconds": training_seconds, **window.metrics()},
            tags={"production_version_before": context.production.version, **window.tags()})
        if run is not None:
            # Every file of a completed cycle ends in used_gts/: that is where lineage points.
            # History outside the chosen window was not trained on and is not an input.
            trained_history = [f for f in history if window.file_facts(f)["in_window"]]
            registry.log_training_inputs([
                *([("history", str(settings.used_dir), batch_key(trained_history), "training")]
                  if trained_history else []),
                ("new_training", str(settings.used_dir), batch_key(new_training), "training"),
                ("heldout", str(settings.used_dir),
                 batch_key([f for f in context.new_files if f.name in heldout_names]),
                 "evaluation"),
            ])
            with tempfile.TemporaryDirectory() as folder:
                manifest_path = Path(folder) / "data_manifest.json"
                write_manifest(manifest_path, manifest)
                registry.log_artifact(manifest_path)
                manifest_sha256 = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
                windows_path = Path(folder) / "training_windows.json"
                windows_path.write_text(json.dumps({"windows": window.table()}, indent=1))
                registry.log_artifact(windows_path)
            lineage = lineage_tags(settings, context.production.version,
                                   data_manifest_sha256=manifest_sha256, batch_key=key,
                                   training_window=window.chosen.name,
                                   training_files=len(window.chosen.files),
                                   training_rows=len(labels))
            # On the run before the version exists: a cycle killed after registering can
            # give a resumed challenger exactly this lineage, and knows what it was trained
            # with (settings) and what it must be judged on (the held-out files).
            registry.log_summary(tags={"heldout_key": heldout_key,
                                       **{f"lineage.{k}": v for k, v in lineage.items()}})
            version = registry.log_model_version(model, features, model.predict(features.head(100)))
            log.info("registered challenger as version %s", version)
            registry.log_summary(tags={"challenger_version": version})
            registry.annotate_version(version, lineage, description=describe(lineage))
    context.timings["log_register"] = round(time.perf_counter() - started, 3)
    return Challenger(model, version, heldout_names, run and run.info.run_id, lineage,
                      window.chosen.name)


def resume_challenger(context: CycleContext, monitoring: Monitoring, key: str,
                      heldout_key: str, heldout_names: set) -> Challenger | None:
    """The challenger a killed cycle registered for this very batch, if it may be reused.

    Only one trained with the same settings and holding out the same files: with another
    seed the split differs, and the old challenger would be judged partly on files it was
    trained on. One that does not match is tagged as orphaned, and a new one is trained.
    The resumed challenger is recorded on a new retraining run of this cycle, with the
    lineage an uninterrupted cycle gives it.
    """
    from retraining.lineage import describe, settings_json
    from retraining.registry import RETRAINING_RUN

    settings, registry = context.settings, context.registry
    if settings.dry_run:
        return None
    for version, run in registry.challengers_for_batch(key):
        tags = run.data.tags
        lineage = {name[len("lineage."):]: value for name, value in tags.items()
                   if name.startswith("lineage.")}
        if lineage.get("settings") == settings_json(settings) \
                and tags.get("heldout_key") == heldout_key:
            break
        why = ("it was trained with other settings" if lineage.get("settings")
               != settings_json(settings) else "it held out other files")
        registry.annotate_version(version, {
            "decision": "orphaned",
            "orphaned_because": f"a later cycle on the same batch did not reuse it: {why}"})
        log.warning("challenger version %s of this batch is not reused: %s", version, why)
    else:
        return None
    log.info("resuming: this batch already has challenger version %s (run %s)", version,
             run.info.run_id)
    with registry.run(RETRAINING_RUN, {"batch_key": key, "new_dir": str(settings.new_dir),
                                       "monitoring_run_id": monitoring.run_id or "",
                                       "resumed_from_run_id": run.info.run_id}) as resumed:
        # What the killed run recorded of the training, so this run reads as an
        # uninterrupted one in the UI; its datasets stay on that run.
        registry.log_summary(
            params=run.data.params, metrics=run.data.metrics,
            tags={"production_version_before": context.production.version,
                  "challenger_version": version, "heldout_key": heldout_key,
                  **{name: value for name, value in run.data.tags.items()
                     if name.startswith(("lineage.", "training_window", "validation_file",
                                         "skipped_windows"))}})
        registry.copy_artifacts(run.info.run_id, ["data_manifest.json",
                                                  "training_windows.json"])
    registry.annotate_version(version, lineage, description=describe(lineage))
    return Challenger(registry.load_version(version), version, heldout_names,
                      resumed.info.run_id, lineage, lineage.get("training_window"))


# --- 5. compare ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Comparison:
    promote: bool  # the gate's verdict: the challenger is better
    reason: str
    production_error: float
    challenger_error: float
    gate: Any  # retraining.gate.GateVerdict, recorded with the decision


def compare(context: CycleContext, monitoring: Monitoring, challenger: Challenger) -> Comparison:
    """Both models on the held-out files only: data neither of them was trained on."""
    from retraining.evaluation import predict_files
    from retraining.gate import judge, score_heldout

    heldout = [f for f in context.new_files if f.name in challenger.heldout_names]
    challenger_predictions = predict_files(challenger.model, heldout, context.columns)
    scores = score_heldout(context.domain, heldout, monitoring.predictions,
                           challenger_predictions)
    verdict = judge(context.domain, scores, context.settings)
    log.info(verdict.reason)
    if challenger.run_id is not None:
        record_evaluation(context, challenger, heldout, scores, verdict,
                          {"production": monitoring.predictions,
                           "challenger": challenger_predictions})
    return Comparison(verdict.promote, verdict.reason, scores.production_error,
                      scores.challenger_error, verdict)


def record_evaluation(context: CycleContext, challenger: Challenger, heldout: list, scores,
                      verdict, predictions_by_file: dict) -> None:
    """The figures, tables and plots of the comparison, on the retraining run."""
    import numpy as np

    from retraining.datafiles import concat_files
    from retraining.report import write_heldout_report

    domain, registry = context.domain, context.registry
    interval = verdict.interval
    features, labels = concat_files(heldout, context.columns)
    with tempfile.TemporaryDirectory() as folder, phase(context.timings, "report"):
        figures = write_heldout_report(
            Path(folder), {"production": context.production.model,
                           "challenger": challenger.model},
            features, labels,
            {role: np.concatenate([np.asarray(by_file[f.name]) for f in heldout])
             for role, by_file in predictions_by_file.items()},
            {"production": scores.production_error, "challenger": scores.challenger_error},
            domain.error_metric_name, scores.per_file_rows(domain.lower_error_is_better))
        registry.log_artifacts_to_run(challenger.run_id, folder, "evaluation")
    registry.log_to_run(challenger.run_id,
                        metrics={"production_error": scores.production_error,
                                 "challenger_error": scores.challenger_error,
                                 "improvement": verdict.improvement,
                                 "error_difference_low": interval.low,
                                 "error_difference_high": interval.high,
                                 "confidence_level": interval.level,
                                 "heldout_rows": int(scores.rows.sum()),
                                 "worst_file_regression": verdict.worst_regression,
                                 **figures},
                        tags={"worst_heldout_file": verdict.worst_file})


# --- promote -------------------------------------------------------------------------------

def decide(context: CycleContext, challenger: Challenger,
           comparison: Comparison) -> tuple[str, str]:
    """Record the decision and, for a better challenger, move the alias; return the outcome.

    A compare-and-set, under the alias lock: the alias moves only if it still points at the
    version this cycle loaded and no person moved it meanwhile. Otherwise nothing is
    promoted (outcome `alias_moved`), and no version is tagged as replaced. The decision is
    recorded before the alias moves: a cycle killed in between is resumed on the same batch
    and decides again, while an alias moved with no record would be a promotion no one can
    trace.
    """
    if not comparison.promote:
        record_decision(context, challenger, comparison, "rejected", comparison.reason)
        return "rejected", comparison.reason
    if challenger.version is None:  # dry run: nothing was registered, nothing moves
        return "promoted", comparison.reason
    with context.registry.alias_lock():
        overruled = context.registry.moved_by_hand_since(context.production)
        if overruled:
            reason = f"{overruled}; the gate had found: {comparison.reason}"
            log.warning(overruled)
            record_decision(context, challenger, comparison, "alias_moved", reason)
            return "alias_moved", reason
        record_decision(context, challenger, comparison, "promoted", comparison.reason)
        promote(context, challenger)
    return "promoted", comparison.reason


def record_decision(context: CycleContext, challenger: Challenger, comparison: Comparison,
                    decision: str, reason: str) -> None:
    """The decision on the retraining run and on both versions.

    The production version gets one `challenge.v<N>` tag per challenger, so a later challenge
    does not erase an earlier one; its `decision` changes only when it is replaced, and a
    version a person moved the alias away from is left as that person tagged it.
    """
    from retraining.lineage import describe

    if challenger.run_id is None:
        return
    registry, production = context.registry, context.production.version
    interval = comparison.gate.interval
    registry.log_to_run(challenger.run_id, metrics={},
                        tags={"decision": decision, "reason": reason})
    decision_tags = {"decision": decision, "production_error": comparison.production_error,
                     "challenger_error": comparison.challenger_error,
                     "error_difference_interval": f"{interval} of challenger minus production",
                     "challenger_version": challenger.version,
                     "heldout_files": len(challenger.heldout_names)}
    lineage = challenger.lineage or registry.version_tags(challenger.version)
    registry.annotate_version(challenger.version,
                              decision_tags | {"previous_production_version": production},
                              description=f"{decision}: {reason}\n\n{describe(lineage)}")
    if decision == "alias_moved":
        return
    challenge = {f"challenge.v{challenger.version}":
                 f"{'replaced' if decision == 'promoted' else 'kept'}: {reason}"}
    if decision == "promoted":
        # Its own predecessor is already in its tags: only what replaced it is added.
        challenge |= decision_tags | {"decision": "replaced", "replaced_by": challenger.version}
    registry.annotate_version(production, challenge)


def promote(context: CycleContext, challenger: Challenger) -> None:
    context.registry.set_alias(challenger.version)
    log.info("alias %r moved from version %s to %s", context.settings.alias,
             context.production.version, challenger.version)


# --- 6. archive ----------------------------------------------------------------------------

def archive(context: CycleContext) -> list[str] | None:
    from retraining.archive import archive_files

    if context.settings.dry_run:
        return None
    return archive_files(context.new_files, context.settings.used_dir)


# --- entry point ---------------------------------------------------------------------------

OPTIONS = ["new_dir", "used_dir", "quarantine_dir", "settle_seconds", "domain_file",
           "tracking_uri", "experiment", "model_name", "alias", "label_column", "min_new_files",
           "error_threshold", "drift_p_value", "drift_min_effect", "drift_trigger",
           "min_improvement", "holdout_fraction", "seed", "min_heldout_files",
           "min_heldout_rows", "max_file_regression", "confidence_level", "bootstrap_resamples",
           "require_significance", "training_windows", "recent_files", "recency_half_life",
           "validation_fraction", "window_sample_rows", "dry_run", "json"]


def main(argv=None) -> int:
    parser = ArgumentParser(prog="pipeline_orchestrator.py", description=__doc__.splitlines()[0])
    add_options(parser, OPTIONS)
    return run_entry_point(parser, argv, lambda settings, args: run_cycle(settings))


if __name__ == "__main__":
    exit_process(main())
