"""Earlier versions as candidates: the last few registered versions judged beside the
challenger, so that a returning concept gets its old model back without waiting.

Every registered version was trained before this batch arrived, and the held-out files are
content no history file has, so the held-out files are unseen by all of them: each is judged
against production by the gate exactly as the challenger is. Several candidates are several
chances for noise to pass the gate, so the earlier ones share the gate's error rate among
them (Bonferroni: each at a level of 1 - (1 - level) / their number); the challenger keeps
the configured level. Of the candidates that pass, the one with the best held-out error
is promoted; a tie goes to the challenger.

Never candidates: production itself, the challengers of this very batch, and any version
the alias was moved away from by a person or by probation (a rollback, a set-alias): a
person's decision is not undone by a cycle.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

log = logging.getLogger("retraining.cycle")


@dataclasses.dataclass(frozen=True)
class Candidate:
    version: str
    verdict: Any | None  # retraining.gate.GateVerdict; None when it could not be judged
    error: float | None  # its error over the held-out files
    note: str  # the verdict's reason, or why it was not judged
    baseline: dict | None = None  # its baseline tags, should it be promoted again

    def summary(self) -> dict:
        return {"version": self.version, "error": self.error,
                "passed": bool(self.verdict and self.verdict.promote), "reason": self.note}


def candidate_versions(context, exclude: set[str], batch: str) -> list[str]:
    """The newest --earlier-versions registered versions that may be promoted again: not in
    `exclude`, not trained for this batch (whose files it may have learnt from), and not
    turned away from."""
    registry, wanted = context.registry, context.settings.earlier_versions
    if wanted == 0:
        return []
    chosen = []
    for version, tags in registry.versions_newest_first():
        if len(chosen) == wanted:
            break
        if version in exclude or tags.get("batch_key") == batch:
            continue
        if tags.get("decision") in (None, "orphaned", "interrupted", "promoting"):
            # Never judged: a challenger whose cycle was stopped may have trained on files
            # that are still new, and now held out.
            continue
        refused = registry.turned_away_from(version)
        if refused is not None:
            log.info("version %s is not a candidate: the alias was moved away from it (%s)",
                     version, refused)
            continue
        chosen.append(version)
    return chosen


def shared_level(settings, candidates: int) -> float:
    """The confidence level each of `candidates` earlier versions is judged at (Bonferroni)."""
    return 1.0 - (1.0 - settings.confidence_level) / candidates


def judge_earlier(context, heldout: list, production_predictions: dict,
                  versions: list[str]) -> list[Candidate]:
    """Each earlier version scored on the held-out files and judged against production."""
    from retraining.baseline import baseline_tags
    from retraining.classes import count_classes
    from retraining.errors import TryLater, raise_if_stopped
    from retraining.evaluation import predict_files
    from retraining.gate import heldout_units, judge, score_heldout

    if not versions:
        return []
    settings = context.settings
    shared = dataclasses.replace(settings,
                                 confidence_level=shared_level(settings, len(versions)))
    judged = []
    for version in versions:
        try:
            model = context.registry.load_version(version)
            predictions = predict_files(model, heldout, context.columns)
        except TryLater:
            raise  # the store away: the next run judges again
        # An old version may not load any more, or not take today's columns: it is then no
        # candidate, and the reason on the run says why.
        except Exception as error:
            raise_if_stopped(error)
            note = (f"version {version} cannot predict on the held-out files "
                    f"({type(error).__name__}: {' '.join(str(error).split())[:200]})")
            log.warning(note)
            judged.append(Candidate(version, None, None, note))
            continue
        scores = score_heldout(context.domain, heldout, production_predictions, predictions)
        verdict = judge(context.domain, scores, shared, candidate=f"version {version}")
        log.info("earlier %s", verdict.reason)
        judged.append(Candidate(version, verdict, scores.challenger_error, verdict.reason,
                                baseline_tags(heldout_units(context.domain, scores, "challenger"),
                                              count_classes(scores.labels,
                                                            scores.challenger_predicted
                                                            ).baseline_json(),
                                              f"its {len(heldout)} held-out files when it "
                                              f"was promoted again")))
    return judged


def best(lower_is_better: bool, challenger_error: float, challenger_passes: bool,
         earlier: list[Candidate]) -> Candidate | None:
    """The earlier version to promote instead of the challenger, or None."""
    passing = [c for c in earlier if c.verdict is not None and c.verdict.promote]
    if not passing:
        return None
    sign = 1.0 if lower_is_better else -1.0
    winner = min(passing, key=lambda c: sign * c.error)
    if challenger_passes and sign * challenger_error <= sign * winner.error:
        return None
    return winner
