"""Screening files before they are used: history checked like new files, bad ones set aside.

Training the first model, registering it and every retrain read the whole history. A real
project's history holds files exported by other tools: a mangled header, labels written
another way. One such file must stop neither the first night nor every retrain, and never
one file per run: every history file is checked, against the production model where there
is one, else against what most history files hold (never the alphabetically first, which
may be the odd one), and each unusable file is moved to quarantine/ with a reason that
quotes its evidence. With --strict-history nothing moves: one message lists them all.

When every file fails the same check that a setting decides (no column named like
--label-column), the cause is the setting: one message, and nothing moves.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from retraining.config import Settings
from retraining.datafiles import (
    Expected,
    LoadedFile,
    check_file,
    label_kind,
    list_data_files,
    load_file,
    shown_name,
)
from retraining.errors import DataError, NeedsAttention, UsageError
from retraining.progress import heartbeat

log = logging.getLogger("retraining.screening")

# Checks a setting can make every file fail alike; a bad cell, an unreadable file or a
# re-delivery in every file is still each file's own fault.
_SETTING_KINDS = ("no_label_column", "unlabelled", "columns", "label kind", "prepare_file")


@dataclasses.dataclass
class History:
    """The usable history files, read once, and the files set aside (summary entries)."""

    files: list[LoadedFile]
    quarantined: list[dict[str, Any]]
    expected: Expected  # what every usable file holds: the columns, their kinds, the labels

    @property
    def columns(self) -> list[str]:
        return list(self.expected.columns or [])


def read_history(settings: Settings, domain, folder: Path, production=None,
                 prune_copies: bool = False) -> History:
    """Read and check every data file of `folder`; set the unusable ones aside.

    `production` (the loaded production model) says what files must hold where it has a
    signature; otherwise most files decide. `prune_copies`: remove the columnar copies of
    files that left history, which only the cycle does, under its lock on history. Raises
    DataError with every unusable file when `settings.strict_history` is set, and
    NeedsAttention when no file is usable.
    """
    paths = list_data_files(folder)
    if not paths:
        return History([], [], Expected("no history files", None, None, None, None, None))
    known = production.input_columns if production is not None else None
    columnar = columnar_copy(settings, folder)
    load = columnar.load if columnar is not None else load_file
    reading = columnar.reading_ahead(paths) if columnar is not None else contextlib.nullcontext()
    loaded: list[LoadedFile] = []
    failures: list[tuple[Path, DataError]] = []
    # Years of history can take minutes to read: each line says how far it is.
    with heartbeat(log, lambda: f"reading history: {len(loaded) + len(failures):,} of "
                                f"{len(paths):,} files"), reading:
        for path in paths:
            try:
                loaded.append(load(path, settings.label_column, domain.prepare_file,
                                   known_columns=known or ()))
            except DataError as error:
                failures.append((path, error))
    expected = _expected(loaded, production)
    if known is None and expected.columns is not None:
        # A file that differs from most may only have a mangled header: read it again,
        # knowing the names most files hold (few files, so little is read twice).
        loaded = [_read_again(f, settings, domain, expected.columns, load) for f in loaded]
    if columnar is not None:
        pruned = columnar.prune(paths) if prune_copies else 0
        log.info("history: %d files read, %s%s", len(paths), columnar.summary(),
                 f", {pruned} copies of files no longer in history removed" if pruned else "")
    usable = []
    for history_file in loaded:
        try:
            check_file(history_file, expected)
        except DataError as error:
            failures.append((history_file.path, error))
            continue
        usable.append(history_file)
    failures.sort(key=lambda failure: failure[0])
    refuse_if_a_setting(settings, domain, folder, [error for _, error in failures],
                        usable=len(usable))
    if failures and settings.strict_history:
        listed = "; ".join(error.cause for _, error in failures)
        raise DataError(f"{len(failures)} of {len(paths)} files in {folder} are unusable: "
                        f"{listed}", fix="fix or remove them, or run without --strict-history "
                                         f"to move them to {settings.quarantine_dir.name}/")
    if not usable:
        raise NeedsAttention(f"none of the {len(paths)} files in {folder} is usable; the "
                             f"first: {failures[0][1].cause}", fix="fix the files")
    return History(usable, set_aside(settings, folder, failures), expected)


def columnar_copy(settings: Settings, folder: Path):
    """The columnar copy of `folder` when it is the history folder (retraining/columnar.py),
    else None. A dry run reads the copies there are and writes none."""
    from retraining.columnar import ColumnarHistory

    if not settings.columnar_history or folder.resolve() != settings.used_dir.resolve():
        return None
    return ColumnarHistory(folder, writable=not settings.dry_run)


def history_loader(settings: Settings, folder: Path) -> Callable:
    """How to read one file of `folder`, as datafiles.load_file: through the columnar copy
    where `folder` is history."""
    columnar = columnar_copy(settings, folder)
    return columnar.load if columnar is not None else load_file


def _read_again(history_file: LoadedFile, settings: Settings, domain,
                columns: Sequence[str], load: Callable) -> LoadedFile:
    if set(history_file.features.columns) == set(columns):
        return history_file
    again = load(history_file.path, settings.label_column, domain.prepare_file,
                 known_columns=columns)
    return again if again.renamed_columns else history_file


def _expected(files: Sequence[LoadedFile], production) -> Expected:
    """The production model's expectations where it has them, the rest by majority.

    A history file's labels are not checked against production's classes: a class that
    production never learnt may be what the next model must learn. Their kind is.
    """
    majority = expected_by_majority(files)
    if production is None:
        return majority
    own = Expected.of_production(production)
    if own.columns is None:
        return dataclasses.replace(majority, class_kind=own.class_kind or majority.class_kind,
                                   label_kind=own.label_kind or majority.label_kind,
                                   labels_shown=own.labels_shown or majority.labels_shown)
    return dataclasses.replace(own, classes=None, source="the production model's signature")


def expected_by_majority(files: Sequence[LoadedFile]) -> Expected:
    """What most files hold: feature columns, each column's kind, the labels' kind.

    A tie for the most common is no majority: a person must say which files are right.
    """
    if not files:
        return Expected("no usable files", None, None, None, None, None)
    total = len(files)
    header = _plurality(files, lambda f: frozenset(f.features.columns), "feature columns",
                        lambda value: f"{sorted(value)}")
    holding = [f for f in files if frozenset(f.features.columns) == header]
    columns = list(holding[0].features.columns)
    kinds = {}
    # Read from each file's dtypes once: a column taken out of a frame costs more than its kind.
    dtypes = [f.features.dtypes for f in holding]
    for column in columns:
        counts = collections.Counter(_column_kind(types[column]) for types in dtypes)
        kinds[column] = counts.most_common(1)[0][0]
    class_kind = _plurality(files, lambda f: label_kind(f.labels), "the kind of labels", str)
    of_kind = [f for f in files if label_kind(f.labels) == class_kind]
    read_kinds = collections.Counter(f.label_read_kind or class_kind for f in of_kind)
    read_kind = read_kinds.most_common(1)[0][0]
    values = collections.Counter()
    for history_file in of_kind:
        values.update(history_file.labels.unique().tolist())
    shown = ", ".join(repr(value) for value, _ in sorted(values.items(), key=str)[:10])
    return Expected(
        source=f"{len(holding)} of {total} history files", columns=columns, kinds=kinds,
        classes=None, class_kind=class_kind, label_kind=read_kind,
        labels_shown=f"{len(of_kind)} of {total} history files have {read_kind} labels "
                     f"({shown}{', ...' if len(values) > 10 else ''})")


def _column_kind(dtype) -> str:
    # An empty column is read as numbers whatever it holds elsewhere: it says nothing.
    if dtype.kind in "biufc":
        return "number"
    return "text"


def _plurality(files: Sequence[LoadedFile], key: Callable, what: str, show: Callable):
    counts = collections.Counter(key(f) for f in files)
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        tied = [value for value, count in ranked if count == ranked[0][1]]
        examples = "; ".join(
            f"{next(f.shown_name for f in files if key(f) == value)} and "
            f"{counts[value] - 1} more have {show(value)}" for value in tied[:3])
        raise NeedsAttention(f"the history files disagree on {what}, with no majority: "
                             f"{examples}",
                             fix="fix the files that are wrong, or move them out of the "
                                 "history folder")
    return ranked[0][0]


def set_aside(settings: Settings, folder: Path,
              failures: Sequence[tuple[Path, DataError]]) -> list[dict[str, Any]]:
    """Move each failed file to quarantine with its reason (not in a dry run); return the
    summary's entries."""
    from retraining.archive import check_one_filesystem, quarantine_file

    if failures and not settings.dry_run:
        check_one_filesystem(folder, folder, settings.quarantine_dir)
    quarantined = []
    for path, error in failures:
        entry = {"file": shown_name(path), "reason": error.cause, "quarantined_as": None}
        if not settings.dry_run:
            entry["quarantined_as"] = quarantine_file(path, error.cause,
                                                      settings.quarantine_dir)
        quarantined.append(entry)
    return quarantined


def refuse_if_a_setting(settings: Settings, domain, folder: Path,
                        errors: Sequence[DataError], usable: int) -> None:
    """Raise UsageError when no file is usable and every file that a setting could have
    failed (two or more) failed the same such check.

    Files that fail on their own (empty, not UTF-8, a bad cell) do not count either way:
    one empty file must not let a wrong --label-column quarantine every good file.
    """
    errors = [error for error in errors if error.kind.startswith(_SETTING_KINDS)]
    if usable or len(errors) < 2 or len({error.kind for error in errors}) != 1:
        return
    first = errors[0]
    fixes = {"no_label_column": f"set --label-column (or RETRAIN_LABEL_COLUMN) to the column "
                                f"that holds the labels; it is {settings.label_column!r} now",
             "unlabelled": "check --label-column: it names a column with no values",
             "columns": f"check prepare_file in {domain.source.name} and --model-name: the "
                        "production model takes other columns than every file has",
             "label kind": "check --label-column, or register a model trained on such labels",
             "prepare_file": f"fix prepare_file in {domain.source.name}"}
    fix = next(text for prefix, text in fixes.items() if first.kind.startswith(prefix))
    raise UsageError(f"all {len(errors)} readable files in {folder} fail the same way, so the "
                     f"cause is a setting, not the files; the first: {first.cause}",
                     fix=f"{fix}; no file was moved")
