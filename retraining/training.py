"""The retrain step: a challenger trained on the best training window, or resumed.

The held-out files are chosen first, and never trained on; the window is chosen on validation
files set aside from the other new files (retraining/windows.py). A cycle killed after
registering its challenger leaves it for the next run on the same batch to judge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from retraining.context import CycleContext, Monitoring, phase
from retraining.errors import NeedsAttention, raise_if_stopped

log = logging.getLogger("retraining.cycle")


@dataclasses.dataclass
class Challenger:
    model: Any
    version: str | None
    heldout_names: set
    run_id: str | None
    lineage: dict | None = None  # the version's lineage tags; None when resumed or dry run
    training_window: str | None = None  # the candidate training set it was trained on


@dataclasses.dataclass
class Plan:
    """What a retrain starts from: the checked history and the held-out files."""

    history: list
    heldout: Any  # retraining.heldout.Heldout

    @property
    def lacks(self) -> str | None:
        return self.heldout.lacks


def threshold_metrics(model) -> dict[str, float]:
    """The decision threshold a model tuned for itself (scikit-learn's
    TunedThresholdClassifierCV, or one at the end of a pipeline), and the cross-validated
    score it was chosen for: the reviewer sees what the challenger will decide at."""
    tuned = model.steps[-1][1] if hasattr(model, "steps") else model
    if not hasattr(tuned, "best_threshold_"):
        return {}
    return {"decision_threshold": float(tuned.best_threshold_),
            "decision_threshold_score": float(tuned.best_score_)}


def plan_retraining(context: CycleContext) -> Plan:
    """Read and check the history; choose the held-out files, as many as the gate needs."""
    from retraining.candidates import candidate_versions, shared_level
    from retraining.datafiles import batch_key, check_columns
    from retraining.heldout import choose_heldout
    from retraining.screening import read_history

    settings, registry = context.settings, context.registry
    started = time.perf_counter()
    # Checked like new files: an unusable history file is set aside, never a stop. Timed
    # apart (inside "train") for the benchmark of years of history.
    with phase(context.timings, "history"):
        checked = read_history(settings, context.domain, settings.used_dir, context.production,
                               prune_copies=True)
    if checked.quarantined:
        context.quarantined.extend(checked.quarantined)
        registry.record_quarantine(checked.quarantined)
    check_columns(checked.files + context.new_files, context.columns)
    # Held-out content is unique in the batch and absent from history, so neither model can
    # have been trained on it, whatever the files are called.
    earlier = candidate_versions(context, {context.production.version,
                                           context.rolled_back_from},
                                 batch_key(context.new_files))
    heldout = choose_heldout(context.new_files, settings,
                             seen_sha256={f.content_sha256 for f in checked.files},
                             earlier_level=shared_level(settings, len(earlier)) if earlier
                             else None,
                             # Found before anything is trained, on production's predictions.
                             units_are_files=not context.production_units().sliced)
    context.timings["train"] = round(time.perf_counter() - started, 3)
    return Plan(checked.files, heldout)


def train_challenger(context: CycleContext, monitoring: Monitoring, plan: Plan) -> Challenger:
    """Train the challenger on the window that validates best, holding out new files; or
    take the one a killed cycle registered for this very batch (`resume_challenger`)."""
    from retraining.datafiles import (
        batch_key,
        label_kind,
        labels_read_kind,
        release_rows,
        write_manifest,
    )
    from retraining.lineage import describe, lineage_tags
    from retraining.progress import heartbeat
    from retraining.registry import RETRAINING_RUN
    from retraining.windows import choose_window

    settings, domain, registry = context.settings, context.domain, context.registry
    started = time.perf_counter() - context.timings.get("train", 0.0)
    history, heldout_names = plan.history, plan.heldout.names
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
                             sample_weight=weights, threads=settings.threads)
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
                    "model_class": getattr(model, "classifier_name", type(model).__name__),
                    "engine": settings.engine,
                    **({"spark_master": model.master} if hasattr(model, "master") else {}),
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
                     "training_seconds": training_seconds, **window.metrics(),
                     **threshold_metrics(model)},
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
                                   training_rows=len(labels),
                                   # What the next cycles check new labels against.
                                   label_kind=labels_read_kind(window.chosen.files)
                                   or label_kind(labels))
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

    Only one trained with the same settings, holding out the same files, against the same
    production version, and that loads: with another seed the split differs, and the old
    challenger would be judged partly on files it was trained on. One that does not match is
    tagged as orphaned, and a new one is trained.
    The resumed challenger is recorded on a new retraining run of this cycle, with the
    lineage an uninterrupted cycle gives it.
    """
    from retraining.lineage import describe
    from retraining.registry import RETRAINING_RUN

    settings, registry = context.settings, context.registry
    if settings.dry_run:
        return None
    for version, run in registry.challengers_for_batch(key):
        if version == context.production.version:
            continue  # promoted before the kill: production now, not a challenger
        tags = run.data.tags
        lineage = {name[len("lineage."):]: value for name, value in tags.items()
                   if name.startswith("lineage.")}
        why = reuse_refused(settings, context.production.version, lineage, tags, heldout_key)
        if why is None:
            try:
                model = registry.load_version(version)
                break
            except Exception as error:  # whatever keeps it from loading, it cannot be judged
                raise_if_stopped(error)
                why = (f"its model cannot be loaded ({type(error).__name__}: "
                       f"{' '.join(str(error).split())[:200]})")
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
    return Challenger(model, version, heldout_names, resumed.info.run_id, lineage,
                      lineage.get("training_window"))


def reuse_refused(settings, production_version: str, lineage: dict, tags: dict,
                  heldout_key: str) -> str | None:
    """Why a registered challenger of this batch may not be judged now, or None."""
    from retraining.lineage import settings_json

    if lineage.get("settings") != settings_json(settings):
        return "it was trained with other settings"
    if tags.get("heldout_key") != heldout_key:
        return "it held out other files"
    if lineage.get("parent_production_version") != production_version:
        # Production was moved since (by a person, say): the challenger was trained and
        # would be judged as a challenger to a version that is no longer production.
        return (f"it was trained to challenge version {lineage.get('parent_production_version')}"
                f", and production is now version {production_version}")
    return None
