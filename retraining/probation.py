"""Probation: the first cycle after a promotion checks it against the version it replaced.

The held-out files that promoted a challenger are a sample, and a promotion can be wrong, or
become wrong when a concept returns. The new files of the next cycle are data neither model
was trained on, so both are scored on them, paired, with the gate itself: if the replaced
version would pass the gate against the new production (better, significantly, losing no
class), the alias goes back to it by itself, recorded like a rollback (an AliasChange run,
`rolled_back` on the version that failed, `restored` on the other), with the figures in the
reason. Significance is required here whatever --require-significance says: undoing a
promotion on noise would undo a good one half the time. Only cycle promotions are on
probation: a version a person set is that person's decision, and a version a person (or an
earlier probation) moved the alias away from is never restored automatically.
`--no-auto-rollback` still scores and records, and moves nothing.
"""

from __future__ import annotations

import dataclasses
import logging

from retraining.context import CycleContext

log = logging.getLogger("retraining.cycle")

PROBATION_TAG = "probation"
CHANGED_BY = "pipeline_orchestrator.py (probation)"


@dataclasses.dataclass(frozen=True)
class Trial:
    version: str  # the production version on probation
    replaced: str  # the version it replaced
    verdict: str  # passed, failed, or not judged
    reason: str
    rolled_back: bool = False

    def summary(self) -> dict:
        return dataclasses.asdict(self)


def replaced_version(context: CycleContext) -> str | None:
    """The version production replaced, when production is a cycle's promotion whose
    probation has not been held yet."""
    tags = context.production.tags
    # "pending" from the promotion; absent on versions promoted before probation existed.
    if tags.get("decision") != "promoted" or tags.get(PROBATION_TAG, "pending") != "pending":
        return None
    return tags.get("previous_production_version")


def hold_probation(context: CycleContext) -> Trial | None:
    """Judge the new production against the version it replaced, on the new files; move the
    alias back when the replaced one is significantly better and auto-rollback is on."""
    from retraining.baseline import decided_on
    from retraining.datafiles import batch_key
    from retraining.errors import NeedsAttention, TryLater, raise_if_stopped
    from retraining.evaluation import predict_files
    from retraining.gate import judge, score_heldout
    from retraining.heldout import lacking

    replaced = replaced_version(context)
    if replaced is None:
        return None
    settings, registry, production = context.settings, context.registry, context.production
    current = production.version
    # Probation waits, untagged, for a batch that can judge it: not the batch the version
    # was trained or promoted again on (a cycle that promoted and was stopped before
    # archiving reads it again), nor one too small for the gate.
    if decided_on(production.tags, batch_key(context.new_files)):
        log.info("probation of version %s waits: these are the files it was trained or "
                 "promoted on", current)
        return None
    too_small = lacking(context.new_files, settings,
                        units_are_files=not context.production_units().sliced)
    if too_small:
        log.info("probation of version %s waits for a batch the gate can judge: %s",
                 current, too_small)
        return None
    refused = registry.turned_away_from(replaced)
    if refused is not None:
        return _record(context, Trial(current, replaced, "not judged",
                                      f"version {replaced} is not a candidate: the alias was "
                                      f"moved away from it ({refused})"))
    try:
        model = registry.load_version(replaced)
        predictions = predict_files(model, context.new_files, context.columns)
    except (NeedsAttention, TryLater):
        raise  # its files missing, the store away: a person or the next run, not a verdict
    # The replaced version's model does not fit today's files: whatever it raises, it cannot
    # be judged, and production stays.
    except Exception as error:
        raise_if_stopped(error)
        return _record(context, Trial(current, replaced, "not judged",
                                      f"version {replaced} cannot predict on the new files "
                                      f"({type(error).__name__}: "
                                      f"{' '.join(str(error).split())[:200]})"))
    scores = score_heldout(context.domain, context.new_files, context.predictions, predictions)
    strict = dataclasses.replace(settings, require_significance=True, min_improvement=0.0)
    verdict = judge(context.domain, scores, strict)
    name, interval = context.domain.error_metric_name, verdict.interval
    figures = (f"{name} {scores.challenger_error:.4f} for version {replaced} vs "
               f"{scores.production_error:.4f} for version {current} on the "
               f"{len(scores.names)} new files, {int(scores.rows.sum())} rows, that neither "
               f"was trained on ({interval} of version {replaced} minus version {current})")
    if not verdict.promote:
        return _record(context, Trial(current, replaced, "passed",
                                      f"version {current} keeps production on probation: "
                                      f"version {replaced} is not significantly better: "
                                      f"{figures}"))
    reason = (f"version {current} failed probation: the version it replaced, {replaced}, is "
              f"significantly better on the next batch: {figures}")
    if not settings.auto_rollback:
        return _record(context, Trial(current, replaced, "failed",
                                      reason + "; --no-auto-rollback: the alias stays"))
    if settings.dry_run:  # the cycle goes on as it would: with the replaced version
        return Trial(current, replaced, "failed", reason + "; dry run: the alias stays",
                     rolled_back=True)
    from retraining.operations import move_alias

    with registry.alias_lock():
        # Compare-and-set, as for a promotion: a person's move since the cycle began wins.
        overruled = registry.moved_by_hand_since(production)
        if overruled:
            return _record(context, Trial(current, replaced, "failed",
                                          f"{reason}; not rolled back: {overruled}"))
        # Tagged with the folder, so a kill mid-move leaves no run RUNNING for good.
        move_alias(registry, settings, settings.alias, replaced, "auto_rollback", reason,
                   CHANGED_BY, run_tags={"new_dir": str(settings.new_dir)})
    log.warning("%s: alias %r moved back to version %s", reason, settings.alias, replaced)
    return _record(context, Trial(current, replaced, "failed", reason, rolled_back=True))


def _record(context: CycleContext, trial: Trial) -> Trial:
    log.info("probation of version %s: %s", trial.version, trial.reason)
    if not context.settings.dry_run:
        context.registry.annotate_version(trial.version,
                                          {PROBATION_TAG: f"{trial.verdict}: {trial.reason}"})
    return trial
