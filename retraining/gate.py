"""The promotion gate: is the challenger better on the held-out files, beyond noise?

Both models are scored file by file on the same held-out files. The gate then asks, in order:
are there enough held-out files and rows to judge; is the challenger better by the margin;
does a paired bootstrap interval of the difference favour it (when significance is required);
is it no worse than the cap on any single file. The first question answered "no" is the
reason, one sentence with its figures.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from retraining.config import Settings
from retraining.datafiles import LoadedFile
from retraining.domain import Domain
from retraining.errors import NeedsAttention
from retraining.evaluation import error_on, judge_challenger

# Errors are rates computed in floating point: a difference of 1e-17 is no regression.
_TOLERANCE = 1e-9
# Resamples are drawn in blocks of about this many file counts, so memory stays bounded
# (some tens of MB) however many files are held out.
_BLOCK_CELLS = 2_000_000


@dataclasses.dataclass(frozen=True)
class HeldoutScores:
    """Each model's error on each held-out file, and over all of them as the domain defines."""

    names: list[str]
    rows: np.ndarray  # rows per file
    production: np.ndarray  # production's error per file
    challenger: np.ndarray  # challenger's error per file
    production_error: float  # the domain's error over all the files: pooled or averaged
    challenger_error: float

    @property
    def weights(self) -> np.ndarray:
        return self.rows.astype(float)

    def per_file_rows(self, lower_error_is_better: bool) -> list[dict]:
        """One row per file; `regression` is how much worse the challenger is there."""
        sign = 1.0 if lower_error_is_better else -1.0
        return [{"file": name, "rows": int(rows), "production_error": float(production),
                 "challenger_error": float(challenger),
                 "regression": sign * float(challenger - production)}
                for name, rows, production, challenger
                in zip(self.names, self.rows, self.production, self.challenger,
                       strict=True)]


def score_heldout(domain: Domain, heldout: Sequence[LoadedFile], production_predictions: dict,
                  challenger_predictions: dict) -> HeldoutScores:
    """Score both models per held-out file with the domain's own metric."""
    per_file = {}
    for role, predictions in (("production", production_predictions),
                              ("challenger", challenger_predictions)):
        errors = np.array([domain.error_metric(loaded.labels, predictions[loaded.name])
                           for loaded in heldout], dtype=float)
        if not np.isfinite(errors).all():
            bad = heldout[int(np.flatnonzero(~np.isfinite(errors))[0])].name
            raise NeedsAttention(f"error_metric is not a finite number for the {role} model "
                                 f"on held-out file {bad}",
                                 fix=f"make error_metric in {domain.source.name} return a "
                                     "finite number on every file")
        per_file[role] = errors
    return HeldoutScores(
        names=[loaded.name for loaded in heldout],
        rows=np.array([loaded.rows for loaded in heldout]),
        production=per_file["production"], challenger=per_file["challenger"],
        production_error=error_on(domain, heldout, production_predictions),
        challenger_error=error_on(domain, heldout, challenger_predictions))


@dataclasses.dataclass(frozen=True)
class Interval:
    """A bootstrap interval of challenger-minus-production error."""

    estimate: float
    low: float
    high: float
    level: float

    def __str__(self) -> str:
        return f"{self.level:.0%} interval [{self.low:+.4f}, {self.high:+.4f}]"


def bootstrap_difference(production: np.ndarray, challenger: np.ndarray, weights: np.ndarray,
                         *, resamples: int, level: float, seed: int) -> Interval:
    """Paired percentile bootstrap of the weighted mean of challenger-minus-production.

    Whole files are resampled with replacement, the same files for both models, so what the
    two models share (an easy file, a hard one) cancels out. The statistic of a resample is
    sum(weight * difference) / sum(weight) over its files: with row counts as weights and a
    row-averaged metric (the misclassification rate) it is exactly the pooled error
    difference; with equal weights it is the per-file average the domain may ask for. For a
    pooled metric that is not a mean over rows (F1, say), it is the row-weighted mean of the
    per-file values: recomputing an arbitrary metric on every resample would cost one call
    per resample, and a per-file value is what the per-file table reports anyway.
    """
    difference = np.asarray(challenger, float) - np.asarray(production, float)
    weights = np.asarray(weights, float)
    files = len(difference)
    estimate = float(weights @ difference / weights.sum())
    generator = np.random.default_rng(seed)
    # counts[r, i]: how often resample r drew file i. One multinomial draw per resample is
    # the same as drawing `files` files with replacement.
    block = max(1, _BLOCK_CELLS // files)
    statistics = []
    for start in range(0, resamples, block):
        counts = generator.multinomial(files, np.full(files, 1.0 / files),
                                       size=min(block, resamples - start))
        statistics.append((counts @ (weights * difference)) / (counts @ weights))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(np.concatenate(statistics), [tail, 1.0 - tail])
    return Interval(estimate, float(low), float(high), level)


@dataclasses.dataclass(frozen=True)
class GateVerdict:
    promote: bool
    reason: str
    improvement: float  # positive when the challenger is better, in the metric's units
    interval: Interval
    worst_file: str
    worst_regression: float  # how much worse the challenger is on worst_file (may be < 0)


def judge(domain: Domain, scores: HeldoutScores, settings: Settings) -> GateVerdict:
    """Promote only a challenger better by the margin, on enough data, and, as configured,
    significantly better and not much worse on any single file."""
    interval = bootstrap_difference(scores.production, scores.challenger,
                                    scores.weights if not domain.error_per_file
                                    else np.ones(len(scores.names)),
                                    resamples=settings.bootstrap_resamples,
                                    level=settings.confidence_level, seed=settings.seed)
    point = judge_challenger(domain, scores.production_error, scores.challenger_error,
                             settings.min_improvement)
    regressions = [row["regression"] for row in scores.per_file_rows(domain.lower_error_is_better)]
    worst = int(np.argmax(regressions))
    worst_file, worst_regression = scores.names[worst], regressions[worst]
    name, files, rows = domain.error_metric_name, len(scores.names), int(scores.rows.sum())
    figures = (f"challenger {name} {scores.challenger_error:.4f} vs production "
               f"{scores.production_error:.4f} on the same {files} held-out files, {rows} rows "
               f"(improvement {point.improvement:+.4f}, at least {settings.min_improvement:.4f} "
               f"needed; {interval} of challenger minus production)")

    def verdict(promote: bool, reason: str) -> GateVerdict:
        return GateVerdict(promote, reason, point.improvement, interval, worst_file,
                           worst_regression)

    if files < settings.min_heldout_files or rows < settings.min_heldout_rows:
        return verdict(False, f"too few held-out data to judge: {files} files and {rows} rows, "
                              f"where promotion needs at least {settings.min_heldout_files} "
                              f"files and {settings.min_heldout_rows} rows; " + figures)
    if not point.promote:
        return verdict(False, "challenger is not better enough: " + figures)
    if settings.require_significance:
        if files < 2:
            return verdict(False, "challenger is not shown significantly better: one held-out "
                                  "file gives the bootstrap nothing to resample; " + figures)
        favoured = interval.high < -_TOLERANCE if domain.lower_error_is_better \
            else interval.low > _TOLERANCE
        if not favoured:
            return verdict(False, f"challenger is not significantly better: the {interval} of "
                                  f"its {name} minus production's reaches zero or "
                                  "worse; " + figures)
    if worst_regression > settings.max_file_regression + _TOLERANCE:
        per_file = scores.per_file_rows(domain.lower_error_is_better)[worst]
        return verdict(False, f"challenger regresses on held-out file {worst_file}: {name} "
                              f"{per_file['challenger_error']:.4f} vs production "
                              f"{per_file['production_error']:.4f}, worse by "
                              f"{worst_regression:.4f} where the cap is "
                              f"{settings.max_file_regression:.4f}; " + figures)
    return verdict(True, "challenger is better: " + figures)
