"""The promotion gate: is the challenger better on the held-out files, beyond noise?

Both models are scored file by file on the same held-out files. The gate then asks, in order:
are there enough held-out files and rows to judge; is the challenger better by the margin;
does a paired bootstrap interval of the difference favour it (unless significance is turned
off); is it no worse than the cap on any single file; does it keep every class production
recalls (retraining/classes.py). The first question answered "no" is the reason, one
sentence with its figures.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Sequence

import numpy as np

from retraining.classes import collapsed_against
from retraining.config import Settings
from retraining.datafiles import LoadedFile
from retraining.domain import Domain
from retraining.errors import NeedsAttention, raise_if_stopped
from retraining.evaluation import error_on, judge_challenger, pooled_labels

# Errors are rates computed in floating point: a difference of 1e-17 is no regression.
_TOLERANCE = 1e-9
# Resamples are drawn in blocks of about this many unit counts, so memory stays bounded
# (some tens of MB) however many files are held out.
_BLOCK_CELLS = 2_000_000
# The bootstrap resamples rows within a file as contiguous slices of at least this many rows,
# so one held-out file still has something to resample, while the domain's metric is called
# a bounded number of times (about twice _TARGET_SLICES in all) and never on a handful of
# rows.
_MIN_SLICE_ROWS = 25
_TARGET_SLICES = 200


@dataclasses.dataclass(frozen=True)
class HeldoutScores:
    """Each model's error on each held-out file, and over all of them as the domain defines."""

    names: list[str]
    rows: np.ndarray  # rows per file
    production: np.ndarray  # production's error per file
    challenger: np.ndarray  # challenger's error per file
    production_error: float  # the domain's error over all the files: pooled or averaged
    challenger_error: float
    # The same errors on contiguous row slices of each file, for the bootstrap's second stage;
    # None, and why, when slices cannot stand in for rows (see _score_slices).
    slices: "Slices | None" = None
    no_slices_because: str | None = None
    # Every held-out row's label and both models' predictions, stacked: for the per-class
    # check. None where only errors are known.
    labels: np.ndarray | None = None
    production_predicted: np.ndarray | None = None
    challenger_predicted: np.ndarray | None = None

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


@dataclasses.dataclass(frozen=True)
class Slices:
    """Contiguous row slices of the held-out files: which file each belongs to, its rows, and
    each model's error on it."""

    file: np.ndarray
    rows: np.ndarray
    production: np.ndarray
    challenger: np.ndarray


def slice_bounds(rows: int, files: int) -> list[tuple[int, int]]:
    """Contiguous slices of one file of `rows` rows when `files` files are held out in all.

    More files need fewer slices each: between files is where most variation lies, and the
    metric calls stay near _TARGET_SLICES. Contiguous rather than shuffled, so rows that were
    recorded together (and tend to err together) stay together, as in a block bootstrap.
    """
    count = max(1, min(-(-_TARGET_SLICES // files), rows // _MIN_SLICE_ROWS))
    edges = np.linspace(0, rows, count + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def score_heldout(domain: Domain, heldout: Sequence[LoadedFile], production_predictions: dict,
                  challenger_predictions: dict) -> HeldoutScores:
    """Score both models per held-out file, and per slice of it, with the domain's metric."""
    per_file = {}
    for role, predictions in (("production", production_predictions),
                              ("challenger", challenger_predictions)):
        per_file[role] = _finite_errors(domain, role, [
            (loaded.name, domain.error(loaded.labels, predictions[loaded.name],
                                       loaded.features))
            for loaded in heldout])
    slices, no_slices_because = _score_slices(domain, heldout, production_predictions,
                                              challenger_predictions, per_file)
    labels, production_predicted = pooled_labels(heldout, production_predictions)
    _, challenger_predicted = pooled_labels(heldout, challenger_predictions)
    return HeldoutScores(
        names=[loaded.name for loaded in heldout],
        rows=np.array([loaded.rows for loaded in heldout]),
        production=per_file["production"], challenger=per_file["challenger"],
        production_error=error_on(domain, heldout, production_predictions),
        challenger_error=error_on(domain, heldout, challenger_predictions),
        slices=slices, no_slices_because=no_slices_because, labels=labels,
        production_predicted=production_predicted, challenger_predicted=challenger_predicted)


def _score_slices(domain: Domain, heldout: Sequence[LoadedFile], production_predictions: dict,
                  challenger_predictions: dict, per_file: dict[str, np.ndarray]
                  ) -> tuple[Slices | None, str | None]:
    """Both models' errors on every slice, or None and why: the bootstrap then resamples whole
    files only, and the reason says so.

    Slices stand in for rows only where the metric is a mean over rows, like the
    misclassification rate: a file's error is then the row-weighted mean of its slices'
    errors, which is checked here on both models. A rate like F1, or a metric that counts per
    file, is not: on its slices it would measure something else (F1 cannot see a false
    positive on a slice without positives). Nor is a metric undefined on a slice (a ROC AUC on
    a slice of one class).
    """
    if domain.error_per_file:
        return None, "error_metric is per file (ERROR_PER_FILE)"
    bounds = [slice_bounds(loaded.rows, len(heldout)) for loaded in heldout]
    file_index = np.array([index for index, edges in enumerate(bounds) for _ in edges])
    rows = np.array([stop - start for edges in bounds for start, stop in edges])
    errors = {}
    with warnings.catch_warnings():
        # A metric like F1 warns on every slice that lacks a class: hundreds of lines in the
        # cron mail about figures that only feed the resampling.
        warnings.simplefilter("ignore")
        for role, predictions in (("production", production_predictions),
                                  ("challenger", challenger_predictions)):
            values = []
            for loaded, edges in zip(heldout, bounds, strict=True):
                predicted = np.asarray(predictions[loaded.name])
                for start, stop in edges:
                    where = f"rows {start}-{stop} of held-out file {loaded.name}"
                    try:
                        scored = loaded.features.iloc[start:stop] \
                            if domain.error_sees_rows else None
                        value = float(domain.error(_rows(loaded.labels, start, stop),
                                                   predicted[start:stop], scored))
                    # The user's metric, on rows it was not written for: whatever it raises
                    # is reported in the reason, and the files are judged whole.
                    except Exception as error:
                        raise_if_stopped(error)
                        return None, (f"error_metric failed on {where} "
                                      f"({type(error).__name__}: {error})")
                    if not math.isfinite(value):
                        return None, f"error_metric is {value} on {where}"
                    values.append(value)
            errors[role] = np.array(values)
    for role, values in errors.items():
        means = (np.bincount(file_index, weights=rows * values)
                 / np.bincount(file_index, weights=rows))
        gap = np.abs(means - per_file[role])
        if gap.max() > _TOLERANCE:
            worst = int(np.argmax(gap))
            return None, (f"error_metric is not a mean over rows: on held-out file "
                          f"{heldout[worst].name} the {role} model's slices average "
                          f"{means[worst]:.4f} where the whole file gives "
                          f"{per_file[role][worst]:.4f}")
    return Slices(file=file_index, rows=rows, production=errors["production"],
                  challenger=errors["challenger"]), None


@dataclasses.dataclass(frozen=True)
class ErrorUnits:
    """One model's error on files as the bootstrap resamples it: row slices of the files
    for a metric that is a mean over rows, whole files otherwise."""

    groups: np.ndarray  # the file of each unit
    weights: np.ndarray  # its rows (1 per file for a per-file metric)
    errors: np.ndarray
    sliced: bool  # units are row slices; else whole files

    @property
    def mean(self) -> float:
        return float(self.weights @ self.errors / self.weights.sum())


def error_units(domain: Domain, files: Sequence[LoadedFile], predictions: dict) -> ErrorUnits:
    """A model's error units on `files`, found by the check the comparison makes
    (_score_slices): slices where the metric is a mean over rows, files otherwise."""
    per_file = _finite_errors(domain, "production", [
        (loaded.name, domain.error(loaded.labels, predictions[loaded.name], loaded.features))
        for loaded in files])
    rows = np.array([loaded.rows for loaded in files], dtype=float)
    if not domain.error_per_file:
        slices, _ = _score_slices(domain, files, predictions, predictions,
                                  {"production": per_file, "challenger": per_file})
        if slices is not None:
            return ErrorUnits(slices.file, slices.rows.astype(float), slices.production, True)
    weights = np.ones(len(files)) if domain.error_per_file else rows
    return ErrorUnits(np.arange(len(files)), weights, per_file, False)


def heldout_units(domain: Domain, scores: HeldoutScores, role: str) -> ErrorUnits:
    """One model's error units on the held-out files, from the comparison's own scores."""
    if scores.slices is not None:
        return ErrorUnits(scores.slices.file, scores.slices.rows.astype(float),
                          getattr(scores.slices, role), True)
    weights = np.ones(len(scores.names)) if domain.error_per_file else scores.weights
    return ErrorUnits(np.arange(len(scores.names)), weights, getattr(scores, role), False)


def rise_interval(domain: Domain, baseline: ErrorUnits, now: ErrorUnits,
                  settings: Settings) -> Interval:
    """One-sided bootstrap bounds of the error now minus the baseline error, each at
    --rise-confidence: two independent samples, each resampled two-stage, files then their
    slices. "Has the error risen?" is a one-sided question (for a score, "has it fallen?"),
    so the bound on the worse side decides; both are returned."""
    generator = np.random.default_rng(settings.seed)
    rises = (resampled_means(now.errors, now.weights, now.groups,
                             settings.bootstrap_resamples, generator)
             - resampled_means(baseline.errors, baseline.weights, baseline.groups,
                               settings.bootstrap_resamples, generator))
    tail = 1.0 - settings.rise_confidence
    low, high = np.quantile(rises, [tail, 1.0 - tail])
    return Interval(now.mean - baseline.mean, float(low), float(high),
                    settings.rise_confidence)


def _rows(labels, start: int, stop: int):
    """Rows start:stop of a file's labels, keeping their type (a Series stays a Series)."""
    return labels.iloc[start:stop] if hasattr(labels, "iloc") else labels[start:stop]


def units_needed(level: float) -> int:
    """The fewest resampled units that could show a difference at `level`: with n units all
    in the challenger's favour, a sign test's two-sided p-value is 2 ** (1 - n), while a
    percentile bootstrap over so few units gives an interval of zero width, never reaching
    zero however little the lead."""
    return math.ceil(math.log2(2.0 / (1.0 - level)))


def _finite_errors(domain: Domain, role: str, named_errors: list[tuple[str, float]]) -> np.ndarray:
    errors = np.array([error for _, error in named_errors], dtype=float)
    if not np.isfinite(errors).all():
        bad = named_errors[int(np.flatnonzero(~np.isfinite(errors))[0])][0]
        raise NeedsAttention(f"error_metric is not a finite number for the {role} model "
                             f"on held-out file {bad}",
                             fix=f"make error_metric in {domain.source.name} return a "
                                 "finite number on every file")
    return errors


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
                         *, groups: np.ndarray | None = None, resamples: int, level: float,
                         seed: int) -> Interval:
    """Paired two-stage percentile bootstrap of the weighted mean of challenger-minus-production.

    The units are row slices of held-out files, and `groups` says which file each slice
    belongs to (each unit its own file when not given). A resample draws files with
    replacement, then, within each drawn file, its slices with replacement: the hierarchical
    bootstrap for rows nested in files. The same units are drawn for both models, so what the
    two share (an easy file, a hard one) cancels out. With many files it is nearly the
    whole-file bootstrap; with one file it is a bootstrap of that file's rows in blocks; it
    errs, as two-stage bootstraps do, towards too wide an interval, which for a gate that
    guards production is the safe side.

    The statistic of a resample is sum(weight * difference) / sum(weight) over its units:
    with row counts as weights and a row-averaged metric (the misclassification rate) it is
    exactly the pooled error difference. For a pooled metric that is not a mean over rows (F1,
    say), it is the row-weighted mean of the per-slice values: recomputing an arbitrary metric
    on every resample would cost one call per resample.
    """
    difference = np.asarray(challenger, float) - np.asarray(production, float)
    weights = np.asarray(weights, float)
    groups = np.arange(len(difference)) if groups is None else np.asarray(groups)
    estimate = float(weights @ difference / weights.sum())
    statistics = resampled_means(difference, weights, groups, resamples,
                                 np.random.default_rng(seed))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(statistics, [tail, 1.0 - tail])
    return Interval(estimate, float(low), float(high), level)


def resampled_means(values: np.ndarray, weights: np.ndarray, groups: np.ndarray,
                    resamples: int, generator: np.random.Generator) -> np.ndarray:
    """`resamples` two-stage bootstrap draws of the weighted mean of `values`.

    Each draw takes the groups (files) with replacement, then, within each drawn group, its
    units (row slices) with replacement: the hierarchical bootstrap for rows nested in files.
    """
    values, weights = np.asarray(values, float), np.asarray(weights, float)
    members = [np.flatnonzero(groups == group) for group in np.unique(groups)]
    files, units = len(members), len(values)
    block = max(1, _BLOCK_CELLS // units)
    statistics = []
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        # One multinomial draw per resample is the same as drawing `files` files with
        # replacement; a file drawn m times then draws m times its slice count of slices.
        drawn = generator.multinomial(files, np.full(files, 1.0 / files), size=size)
        counts = np.zeros((size, units))
        for file, unit in enumerate(members):
            if len(unit) == 1:
                counts[:, unit[0]] = drawn[:, file]
            else:
                counts[:, unit] = generator.multinomial(drawn[:, file] * len(unit),
                                                        np.full(len(unit), 1.0 / len(unit)))
        statistics.append((counts @ (weights * values)) / (counts @ weights))
    return np.concatenate(statistics)


@dataclasses.dataclass(frozen=True)
class GateVerdict:
    promote: bool
    reason: str
    improvement: float  # positive when the challenger is better, in the metric's units
    interval: Interval
    worst_file: str
    worst_regression: float  # how much worse the challenger is on worst_file (may be < 0)


def judge(domain: Domain, scores: HeldoutScores, settings: Settings,
          candidate: str = "challenger", superset: bool = False) -> GateVerdict:
    """Promote only a challenger better by the margin, on enough data, and, as configured,
    significantly better and not much worse on any single file. `candidate` is what the
    reason calls the model judged against production ("version 3", say).

    `superset`: the candidate learnt, by the same recipe, from all of production's data and
    more. More data of the same kind rarely makes a model worse, and the small gains it
    brings are more than a batch's held-out files can show: such a candidate needs only to
    be shown worse by less than --non-inferiority-margin (a non-inferiority test on the
    same interval), when its point estimate is no worse."""
    interval, units = _interval(domain, scores, settings)
    point = judge_challenger(domain, scores.production_error, scores.challenger_error,
                             settings.min_improvement)
    regressions = [row["regression"] for row in scores.per_file_rows(domain.lower_error_is_better)]
    worst = int(np.argmax(regressions))
    worst_file, worst_regression = scores.names[worst], regressions[worst]
    name, files, rows = domain.error_metric_name, len(scores.names), int(scores.rows.sum())
    figures = (f"{candidate} {name} {scores.challenger_error:.4f} vs production "
               f"{scores.production_error:.4f} on the same {files} held-out files, {rows} rows "
               f"(improvement {point.improvement:+.4f}, at least {settings.min_improvement:.4f} "
               f"needed; {interval} of {candidate} minus production"
               + (f", resampling whole files only: {scores.no_slices_because})"
                  if scores.no_slices_because else ")"))

    found = "better"

    def verdict(promote: bool, reason: str) -> GateVerdict:
        return GateVerdict(promote, reason, point.improvement, interval, worst_file,
                           worst_regression)

    if files < settings.min_heldout_files or rows < settings.min_heldout_rows:
        return verdict(False, f"too few held-out data to judge: {files} files and {rows} rows, "
                              f"where promotion needs at least {settings.min_heldout_files} "
                              f"files and {settings.min_heldout_rows} rows; " + figures)
    if not point.promote:
        return verdict(False, f"{candidate} is not better enough: " + figures)
    if settings.require_significance:
        needed = units_needed(settings.confidence_level)
        if units < needed:
            what = "held-out files" if scores.slices is None else "row slices of held-out files"
            return verdict(False, f"{candidate} is not shown significantly better: the bootstrap "
                                  f"has {units} {what} to resample, fewer than the {needed} "
                                  f"that could show a difference at "
                                  f"{settings.confidence_level:.0%}; " + figures)
        favoured = interval.high < -_TOLERANCE if domain.lower_error_is_better \
            else interval.low > _TOLERANCE
        margin = settings.non_inferiority_margin
        within = (interval.high < margin - _TOLERANCE if domain.lower_error_is_better
                  else interval.low > -margin + _TOLERANCE)
        if not favoured and not (superset and margin > 0 and within):
            return verdict(False, f"{candidate} is not significantly better: the {interval} of "
                                  f"its {name} minus production's reaches zero or worse"
                                  + (f", and worse by {margin:g} or more, the "
                                     "--non-inferiority-margin of a challenger that learnt "
                                     "from all of production's data and more"
                                     if superset and margin > 0 else "") + "; " + figures)
        if not favoured:
            found = (f"no worse: not significantly better, but it learnt from all of "
                     f"production's data and more, and is shown worse by less than the "
                     f"--non-inferiority-margin {margin:g}")
    if worst_regression > settings.max_file_regression + _TOLERANCE:
        per_file = scores.per_file_rows(domain.lower_error_is_better)[worst]
        return verdict(False, f"{candidate} regresses on held-out file {worst_file}: {name} "
                              f"{per_file['challenger_error']:.4f} vs production "
                              f"{per_file['production_error']:.4f}, worse by "
                              f"{worst_regression:.4f} where the cap is "
                              f"{settings.max_file_regression:.4f}; " + figures)
    if scores.labels is not None:
        lost = collapsed_against(scores.labels, scores.production_predicted,
                                 scores.challenger_predicted, settings.max_recall_drop,
                                 settings.confidence_level)
        if lost:
            return verdict(False, f"{candidate} loses a class that production recalls: "
                                  + "; ".join(map(str, lost)) + "; " + figures)
    return verdict(True, f"{candidate} is {found}: " + figures)


def _interval(domain: Domain, scores: HeldoutScores, settings: Settings) -> tuple[Interval, int]:
    """The bootstrap interval over row slices of the held-out files, and how many slices."""
    if scores.slices is None:
        production, challenger, groups = scores.production, scores.challenger, None
        weights = np.ones(len(scores.names)) if domain.error_per_file else scores.weights
    else:
        slices = scores.slices
        production, challenger, groups = slices.production, slices.challenger, slices.file
        weights = slices.rows.astype(float)
        if domain.error_per_file:
            # Every file weighs the same in all, shared among its slices by their rows.
            weights = weights / scores.rows[slices.file]
    interval = bootstrap_difference(production, challenger, weights, groups=groups,
                                    resamples=settings.bootstrap_resamples,
                                    level=settings.confidence_level, seed=settings.seed)
    return interval, len(production)
