"""Data drift: how far the new files' features have moved from the training history.

Per feature, a two-sample test of the new rows against a reference sample of `used_gts/`:
Kolmogorov-Smirnov for numbers (booleans are numbers here: the reader turns them into
0.0/1.0), chi-squared on the category counts for categories. A column of free text (most
values distinct, several words each) has no categories to count: it is tested twice
instead, as `<column>.length` (KS on words per document) and `<column>.vocabulary`
(chi-squared on how often the reference's commonest words occur, the rest pooled, so new
words show as a growing "other"). A feature drifts when its p-value is
under `p_value` *and* its effect size reaches `min_effect`: with thousands of rows a test
rejects shifts far too small to matter, so significance alone would flag nearly every
feature every night. Both effect sizes lie in [0, 1]: the KS statistic (the largest gap
between the two cumulative distributions) and Cramér's V of the category table.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Callable, Sequence

# The reference is a seeded sample of the history, not all of it: history grows every night,
# and reading it whole to test six columns would make monitoring cost grow with it. Tests
# on 20,000 reference rows already resolve shifts far below the effect floor.
REFERENCE_MAX_FILES = 40
REFERENCE_MAX_ROWS = 20_000
_MISSING = "<missing>"
# Up to this product of the two samples' sizes, KS p-values are exact (see _ks_drift).
EXACT_KS_CELLS = 1_000_000
# Free text: in the reference, at least this share of the values distinct, with at least
# this many words on average. Categories (machine types, product codes) are neither.
TEXT_DISTINCT_SHARE = 0.5
TEXT_MEAN_WORDS = 3.0
# The words counted one by one in the vocabulary test; the rest are one "other" count.
VOCABULARY_WORDS = 200
# Words as scikit-learn's TfidfVectorizer finds them by default: two or more word characters
# (its pattern without the (?u) flag, which pandas' Arrow-backed strings do not take).
_WORD = r"\b\w\w+\b"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # "numeric", "categorical" or "text"
    test: str  # "ks" or "chi2"
    statistic: float
    p_value: float
    effect: float  # KS statistic or Cramér's V, in [0, 1]
    drifted: bool
    reference_rows: int
    new_rows: int


@dataclasses.dataclass(frozen=True)
class DriftReport:
    features: list[FeatureDrift]
    reference_files: int
    reference_rows: int
    seconds: float

    @property
    def share(self) -> float:
        """Share of tested features that drifted; 0 when nothing could be tested."""
        tested = [feature for feature in self.features if not math.isnan(feature.p_value)]
        return sum(feature.drifted for feature in tested) / len(tested) if tested else 0.0

    @property
    def drifted_features(self) -> list[str]:
        return [feature.feature for feature in self.features if feature.drifted]

    def rows(self) -> list[dict]:
        return [dataclasses.asdict(feature) for feature in self.features]


def reference_sample(history_paths: Sequence[Path], label_column: str, prepare_file: Callable,
                     seed: int, columns: Sequence[str] = (), load: Callable | None = None):
    """Features of a seeded sample of history files, at most REFERENCE_MAX_ROWS rows.

    Returns (features, number of files read). Read with the project's reader (`load`, as
    datafiles.load_file; the columnar copy's where there is one) and the domain's hook, so
    the columns are those the model sees.
    """
    import numpy as np
    import pandas as pd

    from retraining.datafiles import load_file
    from retraining.errors import DataError

    load = load or load_file

    generator = np.random.default_rng(seed)
    chosen = list(history_paths)
    if len(chosen) > REFERENCE_MAX_FILES:
        picks = generator.choice(len(chosen), size=REFERENCE_MAX_FILES, replace=False)
        chosen = [chosen[index] for index in sorted(picks)]
    files = []
    for path in chosen:
        try:
            # Knowing the columns, a mangled header is read as the retrain reads it.
            files.append(load(path, label_column, prepare_file, known_columns=columns))
        except DataError as error:
            # Drift only informs the decision: a history file the reader now rejects (a
            # changed prepare_file) must not stop every healthy cycle. Retraining reports it.
            log.warning("drift reference leaves out %s: %s", path.name, error.cause)
    if not files:
        return pd.DataFrame(), 0
    features = pd.concat([loaded.features for loaded in files], ignore_index=True)
    if len(features) > REFERENCE_MAX_ROWS:
        features = features.sample(n=REFERENCE_MAX_ROWS, random_state=seed, ignore_index=True)
    return features, len(files)


def measure_drift(reference, new, columns: Sequence[str], p_value: float,
                  min_effect: float) -> list[FeatureDrift]:
    """Test every column of `new` against `reference` (two DataFrames)."""
    found = []
    for column in columns:
        if column not in reference.columns or column not in new.columns:
            continue
        if is_free_text(reference[column]):
            found.extend(_text_drift(column, reference[column], new[column], p_value,
                                     min_effect))
        else:
            found.append(_feature_drift(column, reference[column], new[column], p_value,
                                        min_effect))
    return found


def is_free_text(values) -> bool:
    """Whether a column holds documents rather than categories (see TEXT_* above)."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values):
        return False
    present = values.dropna().astype(str)
    if present.empty:
        return False
    words = present.str.count(_WORD)
    return (present.nunique() >= TEXT_DISTINCT_SHARE * len(present)
            and float(words.mean()) >= TEXT_MEAN_WORDS)


def _text_drift(name: str, reference, new, p_value: float,
                min_effect: float) -> list[FeatureDrift]:
    """Length and vocabulary of a free-text column, each tested as its own feature."""
    import numpy as np

    reference_text = reference.dropna().astype(str).str.lower()
    new_text = new.dropna().astype(str).str.lower()
    rows = len(reference_text), len(new_text)
    if min(rows) == 0:
        return [_untested(f"{name}.length", "text", "ks", *rows),
                _untested(f"{name}.vocabulary", "text", "chi2", *rows)]
    length = _ks_drift(f"{name}.length", "text",
                       reference_text.str.count(_WORD).to_numpy(float),
                       new_text.str.count(_WORD).to_numpy(float), p_value, min_effect)
    reference_words = reference_text.str.findall(_WORD).explode().dropna().value_counts()
    new_words = new_text.str.findall(_WORD).explode().dropna().value_counts()
    kept = reference_words.index[:VOCABULARY_WORDS]
    table = np.array([
        [*reference_words.reindex(kept, fill_value=0), reference_words.drop(kept).sum()],
        [*new_words.reindex(kept, fill_value=0), new_words.drop(kept, errors="ignore").sum()],
    ], dtype=float)
    return [length, _chi2_drift(f"{name}.vocabulary", "text", table, rows, p_value,
                                min_effect)]


def _feature_drift(name: str, reference, new, p_value: float,
                   min_effect: float) -> FeatureDrift:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(reference) and pd.api.types.is_numeric_dtype(new):
        return _ks_drift(name, "numeric", reference.dropna().to_numpy(dtype=float),
                         new.dropna().to_numpy(dtype=float), p_value, min_effect)
    # Missing values are a category of their own: a sensor that stops reporting is drift.
    reference_counts = reference.astype("string").fillna(_MISSING).value_counts()
    new_counts = new.astype("string").fillna(_MISSING).value_counts()
    table = pd.concat([reference_counts, new_counts], axis=1).fillna(0).to_numpy(float).T
    rows = int(reference_counts.sum()), int(new_counts.sum())
    return _chi2_drift(name, "categorical", table, rows, p_value, min_effect)


def _ks_drift(name: str, kind: str, reference_values, new_values, p_value: float,
              min_effect: float) -> FeatureDrift:
    """Kolmogorov-Smirnov of two samples of numbers; its statistic is the effect."""
    from scipy import stats

    rows = len(reference_values), len(new_values)
    if min(rows) == 0:
        return _untested(name, kind, "ks", *rows)
    # scipy's exact p-value is for samples too small for the limit distribution. Past
    # EXACT_KS_CELLS the limit's is within 2% of it for p from 0.005 to 0.02, around the
    # default drift p-value, and 6% from 0.001 to 0.1 (measured from 101 x 10,000 to
    # 2,000 x 3,000 rows), while the exact one costs time in n * m once the
    # new rows drifted: 0.3 s per feature at 9,000 against 10,000 rows, against 2 ms.
    # Below it, scipy chooses as it would.
    method = "auto" if rows[0] * rows[1] <= EXACT_KS_CELLS else "asymp"
    result = stats.ks_2samp(reference_values, new_values, method=method)
    statistic, probability = float(result.statistic), float(result.pvalue)
    return FeatureDrift(name, kind, "ks", statistic, probability, statistic,
                        probability < p_value and statistic >= min_effect, *rows)


def _chi2_drift(name: str, kind: str, table, rows: tuple[int, int], p_value: float,
                min_effect: float) -> FeatureDrift:
    """Chi-squared of a 2 x k table of counts (reference, new); Cramér's V is the effect."""
    import numpy as np
    from scipy import stats

    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or min(rows) == 0 or (table.sum(axis=1) == 0).any():
        # One category in both samples, or nothing counted on a side: nothing can have
        # shifted between them.
        return FeatureDrift(name, kind, "chi2", 0.0, 1.0, 0.0, False, *rows)
    result = stats.chi2_contingency(table, correction=False)
    statistic, probability = float(result.statistic), float(result.pvalue)
    # Cramér's V for a 2 x k table: sqrt(chi2 / n).
    effect = float(np.sqrt(statistic / table.sum()))
    return FeatureDrift(name, kind, "chi2", statistic, probability, effect,
                        probability < p_value and effect >= min_effect, *rows)


def _untested(name: str, kind: str, test: str, reference_rows: int,
              new_rows: int) -> FeatureDrift:
    nan = float("nan")
    return FeatureDrift(name, kind, test, nan, nan, nan, False, reference_rows, new_rows)


def drift_report(history_paths: Sequence[Path], new_features, columns: Sequence[str], *,
                 label_column: str, prepare_file: Callable, seed: int, p_value: float,
                 min_effect: float, load: Callable | None = None) -> DriftReport:
    """Drift of `new_features` against a sample of the history, with the time it took."""
    import time

    started = time.perf_counter()
    reference, files = reference_sample(history_paths, label_column, prepare_file, seed,
                                        columns, load)
    features = measure_drift(reference, new_features, columns, p_value, min_effect) \
        if files else []
    return DriftReport(features, files, len(reference), time.perf_counter() - started)


def write_drift_csv(path: Path, report: DriftReport) -> None:
    import pandas as pd

    columns = [field.name for field in dataclasses.fields(FeatureDrift)]
    pd.DataFrame(report.rows(), columns=columns).to_csv(path, index=False)
