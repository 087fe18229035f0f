"""The compare and promote steps: both models judged on the held-out files, then the alias.

The gate (retraining/gate.py) gives the verdict; the figures and plots go on the retraining
run; the decision goes on both versions; the alias moves by compare-and-set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from retraining.context import CycleContext, Monitoring, phase
from retraining.training import Challenger

log = logging.getLogger("retraining.cycle")
# MLflow keeps at most this many characters of a tag's value.
MAX_TAG_LENGTH = 5000


@dataclasses.dataclass(frozen=True)
class Comparison:
    promote: bool  # the gate's verdict: the challenger is better
    reason: str
    production_error: float
    challenger_error: float
    gate: Any  # retraining.gate.GateVerdict, recorded with the decision
    # The challenger's error and recall of each class on the held-out files: the baseline
    # tags it keeps (retraining/baseline.py).
    baseline: dict = dataclasses.field(default_factory=dict)
    # The earlier versions judged beside it (retraining/candidates.py), and the one to
    # promote instead of the challenger, if any.
    earlier: list = dataclasses.field(default_factory=list)
    winner: Any = None


def compare(context: CycleContext, monitoring: Monitoring, challenger: Challenger) -> Comparison:
    """Both models on the held-out files only: data neither of them was trained on."""
    from retraining.baseline import baseline_tags
    from retraining.candidates import best, candidate_versions, judge_earlier
    from retraining.classes import count_classes
    from retraining.datafiles import batch_key
    from retraining.evaluation import predict_files
    from retraining.gate import heldout_units, judge, score_heldout

    heldout = [f for f in context.new_files if f.name in challenger.heldout_names]
    challenger_predictions = predict_files(challenger.model, heldout, context.columns)
    scores = score_heldout(context.domain, heldout, monitoring.predictions,
                           challenger_predictions)
    # The 'all' window learns from every history file, each row once, and every file a
    # version a cycle trained learnt from is in history now; a first registered model's
    # data are unknown. ('weighted' holds every file too, but may weigh old rows near 0.)
    superset = (challenger.training_window == "all"
                and context.production.tags.get("training_window") is not None)
    verdict = judge(context.domain, scores, context.settings, superset=superset)
    log.info(verdict.reason)
    exclude = {context.production.version, challenger.version, context.rolled_back_from}
    earlier = judge_earlier(context, heldout, monitoring.predictions,
                            candidate_versions(context, exclude, batch_key(context.new_files)))
    winner = best(context.domain.lower_error_is_better, scores.challenger_error,
                  verdict.promote, earlier)
    reason = verdict.reason if winner is None else (
        f"{winner.note}; of the candidates that pass the gate it has the "
        f"{'lowest' if context.domain.lower_error_is_better else 'highest'} "
        f"{context.domain.error_metric_name} (the challenger: {verdict.reason})")
    if challenger.run_id is not None:
        record_evaluation(context, challenger, heldout, scores, verdict,
                          {"production": monitoring.predictions,
                           "challenger": challenger_predictions}, earlier)
    baseline = baseline_tags(heldout_units(context.domain, scores, "challenger"),
                             count_classes(scores.labels, scores.challenger_predicted
                                           ).baseline_json(),
                             f"its {len(heldout)} held-out files when it was judged")
    return Comparison(verdict.promote or winner is not None, reason, scores.production_error,
                      scores.challenger_error, verdict, baseline, earlier, winner)


def record_evaluation(context: CycleContext, challenger: Challenger, heldout: list, scores,
                      verdict, predictions_by_file: dict, earlier: list) -> None:
    """The figures, tables and plots of the comparison, on the retraining run."""
    import numpy as np

    from retraining.classes import count_classes
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
                                 **figures,
                                 **count_classes(scores.labels, scores.production_predicted
                                                 ).metrics("production_"),
                                 **count_classes(scores.labels, scores.challenger_predicted
                                                 ).metrics("challenger_"),
                                 **{f"earlier_v{c.version}_error": c.error for c in earlier
                                    if c.error is not None}},
                        tags={"worst_heldout_file": verdict.worst_file,
                              "earlier_versions": _fitting_json([c.summary() for c in earlier])
                              })


def _fitting_json(items: list[dict]) -> str:
    """As many of the items as fit a tag, as valid JSON."""
    while len(text := json.dumps(items)) > MAX_TAG_LENGTH and items:
        items = items[:-1]
    return text


def defer(context: CycleContext, monitoring: Monitoring, lacks: str) -> str:
    """Leave a batch the gate cannot judge in new_gts/, and say so on the monitoring run.

    Training a challenger that could never be promoted would cost the fit and archive the
    batch as if it had been judged: its evidence would be lost. Kept, it is judged with the
    next delivery.
    """
    settings = context.settings
    rows = sum(loaded.rows for loaded in context.new_files)
    reason = (f"{monitoring.reason}; but the batch cannot be judged yet: {lacks}. Its "
              f"{len(context.new_files)} files ({rows} rows) stay in {settings.new_dir.name}/ "
              "and the next cycle judges them together with the files that arrive by then")
    log.warning(reason)
    if monitoring.run_id is not None:
        context.registry.log_to_run(monitoring.run_id, metrics={},
                                    tags={"decision": "deferred", "reason": reason})
    return reason


def decide(context: CycleContext, challenger: Challenger,
           comparison: Comparison) -> tuple[str, str]:
    """Record the decision and, for a better challenger, move the alias; return the outcome.

    A compare-and-set, under the alias lock: the alias moves only if it still points at the
    version this cycle loaded and no person moved it meanwhile. Otherwise nothing is
    promoted (outcome `alias_moved`), and no version is tagged as replaced. A promotion is
    recorded as `promoting` before the alias moves and completed after: a cycle stopped in
    between leaves no promotion that did not happen, and the next run completes one that
    did (finish_interrupted_promotions).
    """
    from retraining.baseline import PROMOTED_ON_TAG
    from retraining.datafiles import batch_key

    if not comparison.promote:
        record_decision(context, challenger, comparison, "rejected", comparison.reason)
        return "rejected", comparison.reason
    if challenger.version is None:  # dry run: nothing was registered, nothing moves
        return "promoted", comparison.reason
    registry, production = context.registry, context.production.version
    with registry.alias_lock():
        overruled = registry.moved_by_hand_since(context.production)
        if overruled:
            reason = f"{overruled}; the gate had found: {comparison.reason}"
            log.warning(overruled)
            record_decision(context, challenger, comparison, "alias_moved", reason)
            return "alias_moved", reason
        if comparison.winner is None:
            record_decision(context, challenger, comparison, "promoting", comparison.reason)
            promote(context, challenger.version)
            complete_promotion(registry, challenger.run_id, challenger.version, production,
                               comparison.reason)
        else:
            winner = comparison.winner
            record_decision(context, challenger, comparison, "passed_over",
                            f"version {winner.version} was promoted instead: "
                            f"{comparison.reason}")
            # Its new baseline, and the batch that promoted it (probation waits for another),
            # before the alias moves: a cycle stopped after the move then completes the
            # promotion from the run's tags alone. Stopped before it, the version keeps a
            # baseline of held-out files it never saw, which it still is.
            registry.annotate_version(winner.version, {
                **(winner.baseline or {}), PROMOTED_ON_TAG: batch_key(context.new_files)})
            registry.log_to_run(challenger.run_id, metrics={},
                                tags={"decision": "promoting", "reason": comparison.reason,
                                      "promoted_version": winner.version})
            promote(context, winner.version)
            complete_promotion(registry, challenger.run_id, winner.version, production,
                               comparison.reason)
    return "promoted", comparison.reason


def record_decision(context: CycleContext, challenger: Challenger, comparison: Comparison,
                    decision: str, reason: str) -> None:
    """The decision on the retraining run and on the challenger's version.

    The figures go on the challenger only; the production version gets one
    `challenge.v<N>` tag per challenger it kept, so a later challenge does not erase an
    earlier one. A version a person moved the alias away from is left as that person
    tagged it.
    """
    from retraining.lineage import describe

    if challenger.run_id is None:
        return
    registry, production = context.registry, context.production.version
    interval = comparison.gate.interval
    registry.log_to_run(challenger.run_id, metrics={},
                        tags={"decision": decision, "reason": reason,
                              "compared_with_version": production})
    lineage = challenger.lineage or registry.version_tags(challenger.version)
    registry.annotate_version(challenger.version, {
        "decision": decision, "production_error": comparison.production_error,
        "challenger_error": comparison.challenger_error,
        "error_difference_interval": f"{interval} of challenger minus production",
        "challenger_version": challenger.version, "compared_with_version": production,
        "heldout_files": len(challenger.heldout_names),
        # Monitoring compares each batch with this once the version is production.
        **comparison.baseline},
        description=f"{decision}: {reason}\n\n{describe(lineage)}")
    if decision == "rejected":
        registry.annotate_version(production,
                                  {f"challenge.v{challenger.version}": f"kept: {reason}"})


def complete_promotion(registry, run_id: str, version: str, replaced: str,
                       reason: str) -> None:
    """Record a promotion whose alias move is done: on the run and on both versions.

    An earlier version promoted again starts a new probation (its new baseline was written
    before the alias moved)."""
    from retraining.lineage import describe

    # The run last: until it says `promoted`, a stopped cycle's successor finds it
    # `promoting` and completes all of this again (runs_deciding).
    registry.annotate_version(version, {"decision": "promoted",
                                        "previous_production_version": replaced,
                                        "probation": "pending"},
                              description=f"promoted: {reason}\n\n"
                                          f"{describe(registry.version_tags(version))}")
    registry.annotate_version(replaced, {"decision": "replaced", "replaced_by": version,
                                         f"challenge.v{version}": f"replaced: {reason}"})
    registry.log_to_run(run_id, metrics={}, tags={"decision": "promoted"})


def finish_interrupted_promotions(registry, new_dir: str) -> None:
    """Settle the promotions a stopped cycle left `promoting`: completed where the alias
    moved, `interrupted` where it did not (the batch is then decided again)."""
    deciding = registry.runs_deciding(new_dir)
    if not deciding:
        return
    with registry.alias_lock():
        current = registry.production_version()
        for run in deciding:
            tags = run.data.tags
            # An earlier version chosen over the challenger is named apart.
            version = tags.get("promoted_version") or tags.get("challenger_version")
            replaced = tags.get("compared_with_version")
            if version is not None and version == current:
                complete_promotion(registry, run.info.run_id, version, replaced,
                                   tags.get("reason", ""))
                log.warning("completed the promotion of version %s that a stopped cycle "
                            "began", version)
                continue
            why = ("the cycle was stopped before it moved the alias; the next cycle on its "
                   "batch decides again")
            registry.log_to_run(run.info.run_id, metrics={},
                                tags={"decision": "interrupted", "reason": why})
            if version is not None and version == tags.get("challenger_version"):
                registry.annotate_version(version, {"decision": "interrupted",
                                                    "interrupted_because": why})


def promote(context: CycleContext, version: str) -> None:
    context.registry.set_alias(version)
    log.info("alias %r moved from version %s to %s", context.settings.alias,
             context.production.version, version)
