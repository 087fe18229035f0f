"""Training windows: which history a challenger learns from, chosen on validation files.

All history plus the new files fixes drift in the inputs, not a change of concept: when old
and new labels conflict, years of old rows outvote the new ones. So the cycle builds a few
candidate training sets, trains each without some whole new files set aside for validation,
and keeps the one with the best error on them:

    all       every history file plus the new training files (the fallback)
    recent    the new training files plus whole earlier batches, newest first, while the
              total stays within --recent-files
    weighted  every file, each row weighted 0.5 ** (files arrived after it / half-life),
              when the user's train_model accepts sample_weight

The validation files come from the new training files only, never from the held-out files
of the final comparison, which stays as fair as before. To keep the choice cheap on years of
history, every candidate is compared by a model trained on the same seeded share of its rows
(the largest at most --window-sample-rows, none fewer than a tenth of that); the winner is
then trained on all of its rows.
Recency is arrival order from the history ledger, never names or modification times, which
copying a folder changes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from retraining.config import Settings
from retraining.datafiles import LoadedFile, batch_key, concat_files
from retraining.domain import Domain
from retraining.evaluation import error_on, predict_files
from retraining.ledger import arrival_order
from retraining.progress import heartbeat

log = logging.getLogger("retraining.windows")

# Validation errors are rates in floating point: a lead of 1e-17 is a tie, and a tie keeps
# the candidate listed first (all history, the behaviour before windows existed).
_TOLERANCE = 1e-9
# A window far smaller than the largest would keep a handful of rows at the common share, too
# few to learn from (or even to hold every class); it keeps at least this share of
# --window-sample-rows instead (2,500 rows by default), or all its rows if it has fewer.
_MIN_SAMPLE_SHARE = 0.1


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One candidate training set: its files and, for the weighted window, their weights."""

    name: str
    files: list[LoadedFile]
    # Per file path (a new file may share its name with a history file); None: every row
    # counts once.
    weights: dict[Path, float] | None
    params: dict[str, Any]  # what defines it, logged as `window.<name>.<param>`

    def training_set(self, columns: Sequence[str], leave_out: set[Path] = frozenset(),
                     share: float = 1.0, seed: int = 0):
        """Features, labels and row weights (or None) of its files not in `leave_out` (paths),
        or of a seeded `share` of their rows, drawn file by file."""
        import numpy as np
        import pandas as pd

        files = [f for f in self.files if f.path not in leave_out]
        if share >= 1.0:
            features, labels = concat_files(files, columns)
            kept = [np.ones(f.rows, dtype=bool) for f in files]
        else:
            generator = np.random.default_rng([seed, 2])
            kept = [generator.random(f.rows) < share for f in files]
            columns = list(columns) if columns else list(files[0].features.columns)
            features = pd.concat([f.features[columns][keep] for f, keep in
                                  zip(files, kept, strict=True)], ignore_index=True)
            labels = pd.concat([f.labels[keep] for f, keep in zip(files, kept, strict=True)],
                               ignore_index=True)
        if self.weights is None:
            return features, labels, None
        weights = np.concatenate([np.full(int(keep.sum()), self.weights[f.path])
                                  for f, keep in zip(files, kept, strict=True)])
        # Mean 1, so a model's regularisation sees the same total weight as unweighted rows.
        return features, labels, weights * (len(weights) / weights.sum())

    def signature(self) -> tuple:
        """What makes two candidates the same training set."""
        paths = sorted(f.path for f in self.files)
        if self.weights is None or len(set(self.weights.values())) == 1:
            return tuple(paths), None
        return tuple(paths), tuple(round(self.weights[path], 12) for path in paths)


@dataclasses.dataclass
class WindowChoice:
    """The chosen candidate, why, and every candidate's figures on the validation files."""

    chosen: Candidate
    reason: str
    candidates: list[Candidate]
    validation: list[LoadedFile]  # new training files set aside to choose on
    validation_error: dict[str, float]
    training_seconds: dict[str, float]
    skipped: dict[str, str]  # window -> why it was not tried
    sample_share: float = 1.0  # share of each candidate's rows its comparison model learnt from
    sample_rows: dict[str, int] = dataclasses.field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        params = {f"window.{c.name}.{key}": value
                  for c in self.candidates for key, value in c.params.items()}
        return params | {"training_windows": ",".join(c.name for c in self.candidates),
                         "validation_files": len(self.validation),
                         "window_sample_share": round(self.sample_share, 6)}

    def metrics(self) -> dict[str, float]:
        return ({f"validation_error.{name}": error
                 for name, error in self.validation_error.items()}
                | {f"training_seconds.{name}": seconds
                   for name, seconds in self.training_seconds.items()}
                | {f"training_rows.{name}": rows for name, rows in self.sample_rows.items()})

    def tags(self) -> dict[str, str]:
        skipped = "; ".join(f"{name}: {why}" for name, why in self.skipped.items())
        return {"training_window": self.chosen.name, "training_window_reason": self.reason,
                "validation_file_names": ",".join(sorted(f.name for f in self.validation)),
                "skipped_windows": skipped or None}

    def file_facts(self, loaded: LoadedFile) -> dict[str, Any]:
        """What the manifest says of a file: in the chosen window, its weight, validation."""
        in_window = loaded.path in self._chosen_paths
        weight = (self.chosen.weights or {}).get(loaded.path, 1.0) if in_window else 0.0
        validation = loaded.path in self._validation_paths
        return {"in_window": in_window, "window_weight": weight, "validation": validation}

    # Sets, not scans: the manifest asks about every file of a history of years.
    @functools.cached_property
    def _chosen_paths(self) -> set[Path]:
        return {f.path for f in self.chosen.files}

    @functools.cached_property
    def _validation_paths(self) -> set[Path]:
        return {f.path for f in self.validation}

    def table(self) -> list[dict[str, Any]]:
        """One row per window, tried or skipped: the record behind the choice."""
        rows = [{"window": c.name, "chosen": c is self.chosen, "files": len(c.files),
                 "rows": sum(f.rows for f in c.files), **c.params,
                 "validation_error": self.validation_error.get(c.name),
                 "training_seconds": self.training_seconds.get(c.name),
                 "compared_on_rows": self.sample_rows.get(c.name)}
                for c in self.candidates]
        return rows + [{"window": name, "chosen": False, "skipped": why}
                       for name, why in self.skipped.items()]


def build_candidates(settings: Settings, domain: Domain, history: Sequence[LoadedFile],
                     new_training: Sequence[LoadedFile]) -> tuple[list[Candidate], dict]:
    """The configured windows over history and the new training files, and the skipped ones.

    A window that gives the same training set as one before it is skipped: it would cost a
    training and tie.
    """
    by_name = {f.name: f for f in history}
    # Newest first: the new training files, then history batch by batch, as archived.
    groups = [list(new_training)] + [[by_name[name] for name in group] for group in
                                     reversed(arrival_order(settings.used_dir,
                                                            [f.path for f in history]))]
    everything = [f for group in groups for f in group]
    candidates, skipped = [], {}
    for name in settings.training_windows:
        if name == "all":
            candidate = Candidate("all", everything, None, {"files": len(everything)})
        elif name == "recent":
            candidate = Candidate("recent", _recent(groups, settings.recent_files), None,
                                  {"max_files": settings.recent_files})
        elif name == "weighted":
            if not domain.accepts_sample_weight:
                skipped[name] = domain.no_weights_reason
                continue
            candidate = Candidate("weighted", everything,
                                  _recency_weights(groups, settings.recency_half_life),
                                  {"half_life_files": settings.recency_half_life})
        else:  # the settings accept only known names
            raise ValueError(f"unknown training window {name!r}")
        same = next((c.name for c in candidates if c.signature() == candidate.signature()),
                    None)
        if same:
            skipped[name] = f"same training set as {same!r}"
            continue
        candidates.append(candidate)
    return candidates, skipped


def _recent(groups: list[list[LoadedFile]], max_files: int) -> list[LoadedFile]:
    """The newest group whole, then whole earlier groups while the total stays in bounds,
    never the oldest: with every batch it would be the `all` window, skipped as a twin,
    and a short history (one batch of 8 files, say) would leave no window that learns a
    changed concept from the new files alone.

    Files of one batch arrived together and are equally recent: a batch is never split,
    since the only way to split it would be by name.
    """
    chosen = list(groups[0])
    for group in groups[1:-1]:
        if len(chosen) + len(group) > max_files:
            break
        chosen.extend(group)
    return chosen


def _recency_weights(groups: list[list[LoadedFile]], half_life: float) -> dict[Path, float]:
    """Per file: 0.5 ** (files that arrived after its batch / half_life)."""
    weights, arrived_after = {}, 0
    for group in groups:
        for loaded in group:
            weights[loaded.path] = 0.5 ** (arrived_after / half_life)
        arrived_after += len(group)
    return weights


def choose_validation(new_training: Sequence[LoadedFile], fraction: float,
                      seed: int) -> set[str]:
    """Whole new training files to choose the window on: at least one, never all.

    Seeded by the setting and these files, like the held-out split, with a stream of its own.
    Empty when fewer than two files leave nothing to both train and validate on.
    """
    import numpy as np

    names = sorted(f.name for f in new_training)
    if len(names) < 2:
        return set()
    count = min(len(names) - 1, max(1, round(len(names) * fraction)))
    generator = np.random.default_rng([seed, int(batch_key(new_training)[:15], 16), 1])
    return set(generator.choice(names, size=count, replace=False).tolist())


def _classes(candidate: Candidate, leave_out: set[Path], known: dict[Path, set]) -> int:
    """How many classes the candidate's files hold, validation files left out.

    `known` keeps each file's classes: the windows share their files, and reading the labels
    of years of history once is enough.
    """
    files = [f for f in candidate.files if f.path not in leave_out]
    for loaded in files:
        if loaded.path not in known:
            known[loaded.path] = set(loaded.labels.unique())
    return len(set().union(*(known[f.path] for f in files)))


def choose_window(settings: Settings, domain: Domain, history: Sequence[LoadedFile],
                  new_training: Sequence[LoadedFile], columns: Sequence[str]) -> WindowChoice:
    """Train each candidate without the validation files; keep the best on them.

    Falls back to all history, untried, when there is one candidate or too few new files.
    """
    candidates, skipped = build_candidates(settings, domain, history, new_training)
    fallback = candidates[0]  # "all": the settings require it, and it comes first
    validation_names = choose_validation(new_training, settings.validation_fraction,
                                         settings.seed)
    if len(candidates) == 1:
        return WindowChoice(fallback, "only one training window to choose from: all history "
                                      "plus the new training files", candidates, [], {}, {},
                            skipped)
    if not validation_names:
        return WindowChoice(fallback, f"{len(new_training)} new training file(s) are too few to "
                                      "set validation files aside: trained on all history plus "
                                      "the new training files, as without windows",
                            candidates, [], {}, {}, skipped)
    validation = [f for f in new_training if f.name in validation_names]
    leave_out = {f.path for f in validation}
    window_rows = {c.name: sum(f.rows for f in c.files if f.path not in leave_out)
                   for c in candidates}
    share = min(1.0, settings.window_sample_rows / max(max(window_rows.values()), 1))
    least = round(_MIN_SAMPLE_SHARE * settings.window_sample_rows)
    errors, seconds, sampled, classes = {}, {}, {}, {}
    for candidate in candidates:
        kept = max(share, min(1.0, least / max(window_rows[candidate.name], 1)))
        features, labels, weights = candidate.training_set(columns, leave_out, kept,
                                                           settings.seed)
        if kept < 1.0 and labels.nunique() < _classes(candidate, leave_out, classes):
            # A class rare enough to miss the sample: learn from every row rather than
            # compare a window on a model that cannot predict that class.
            features, labels, weights = candidate.training_set(columns, leave_out)
        sampled[candidate.name] = len(labels)
        started = time.perf_counter()
        with heartbeat(log, f"training window {candidate.name!r} to compare it: "
                            f"{len(labels):,} rows"):
            model = domain.train(features, labels, random_state=settings.seed,
                                 sample_weight=weights, threads=settings.threads)
        seconds[candidate.name] = time.perf_counter() - started
        errors[candidate.name] = error_on(domain, validation,
                                          predict_files(model, validation, columns))
        log.info("window %s: %d files, %s %.4f on %d validation files", candidate.name,
                 len(candidate.files) - len(validation), domain.error_metric_name,
                 errors[candidate.name], len(validation))
    sign = 1.0 if domain.lower_error_is_better else -1.0
    chosen = fallback
    for candidate in candidates[1:]:
        if sign * (errors[candidate.name] - errors[chosen.name]) < -_TOLERANCE:
            chosen = candidate
    figures = ", ".join(f"{name} {error:.4f}" for name, error in errors.items())
    rows = sum(f.rows for f in validation)
    sampling = ("" if share >= 1.0 else
                f", each window's model trained on the same {share:.2%} of its rows (at least "
                f"{least:,} rows)")
    reason = (f"window {chosen.name!r} has the best {domain.error_metric_name} on "
              f"{len(validation)} validation files ({rows} rows) set aside from the new "
              f"training files{sampling}: {figures}")
    return WindowChoice(chosen, reason, candidates, validation, errors, seconds, skipped,
                        share, sampled)
