"""Data files: finding them, reading each once, and splitting a batch by whole file.

Listing needs only the standard library, so the trigger step stays fast; pyarrow and pandas
are imported when files are actually read.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Sequence

from retraining.errors import DataError, UsageError, raise_if_stopped

log = logging.getLogger(__name__)

# Names a writer uses while a file is still being written (see README: safe writer protocol).
_IN_PROGRESS_SUFFIXES = (".tmp", ".part")


def list_data_files(folder: Path, settle_seconds: float = 0.0) -> list[Path]:
    """CSV files directly in `folder`, sorted by name, that look complete.

    Hidden and in-progress names are skipped, and so are files modified in the last
    `settle_seconds`: a writer that does not rename may still be appending to them.
    """
    if not folder.is_dir():
        raise UsageError(f"data folder {folder} does not exist",
                         fix=f"create it (mkdir -p {folder}) or point the flag at the right one")
    settled_before = time.time() - settle_seconds
    return sorted(
        path for path in folder.iterdir()
        if not path.name.startswith(".")
        and not path.name.endswith(_IN_PROGRESS_SUFFIXES)
        and path.suffix.lower() == ".csv"
        and path.is_file()
        and (settle_seconds <= 0 or path.stat().st_mtime <= settled_before)
    )


def shown_name(path: Path) -> str:
    """The file's name as text any log, JSON or MLflow tag can hold.

    A name that is not valid UTF-8 is shown with its odd bytes escaped (\\xe9).
    """
    return os.fsencode(path.name).decode("utf-8", "backslashreplace")


def name_is_text(path: Path) -> bool:
    """Whether the name is valid UTF-8: lineage, tags and the ledger name files by text."""
    return shown_name(path) == path.name


def content_sha256(payload: bytes) -> str:
    """sha256 of a CSV's rows: line endings, a UTF-8 BOM and trailing newlines left out.

    A file saved again by another tool (Windows line endings, Excel's BOM) holds the same
    rows; its raw hash differs, this one does not.
    """
    if payload.startswith(b"\xef\xbb\xbf"):
        payload = payload[3:]
    payload = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").rstrip(b"\n")
    return hashlib.sha256(payload).hexdigest()


def settling_files(folder: Path, settle_seconds: float) -> list[Path]:
    """The data files `list_data_files` leaves out only because they are still settling.

    Counted for the skip reason: files just copied in would otherwise look absent.
    """
    if settle_seconds <= 0:
        return []
    # Settled first: a file arriving between the two listings counts as settling, as it is.
    settled = set(list_data_files(folder, settle_seconds))
    return [path for path in list_data_files(folder) if path not in settled]

def file_identity(status: os.stat_result) -> tuple:
    """What tells one version of a file from another without reading it again."""
    return (status.st_ino, status.st_size, status.st_mtime_ns)


@dataclasses.dataclass
class LoadedFile:
    """One data file read once: its identity and its rows."""

    path: Path
    sha256: str
    features: Any  # pandas.DataFrame
    labels: Any  # pandas.Series
    dropped_rows: int  # rows whose label was missing
    identity: tuple  # (inode, size, mtime) when read: a file replaced since is not archived
    row_count: int = 0  # set when the rows are released
    # The hash of the rows, whatever the line endings, a BOM or trailing newlines: what
    # tells a re-delivered file (see content_sha256).
    content_sha256: str = ""
    # The label column's kind as the CSV had it, before booleans became 0/1 (see load_file).
    label_read_kind: str | None = None
    # Whether each row's index is its data row in the file (0 = the line after the header).
    # False when prepare_file made rows of its own (aggregated them, set an index).
    file_rows: bool = True
    # Header names read as another, expected name (see normalised_header): found -> used.
    renamed_columns: dict = dataclasses.field(default_factory=dict)
    # The header as the file has it, label included: the evidence reasons quote.
    header: list = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def shown_name(self) -> str:
        return shown_name(self.path)

    @property
    def rows(self) -> int:
        return self.row_count if self.labels is None else len(self.labels)

    def release(self) -> None:
        """Drop the rows, keeping the identity and the row count (for a file read only to be
        stacked with others)."""
        self.row_count = self.rows
        self.features = self.labels = None

    def manifest_entry(self, role: str) -> dict[str, Any]:
        entry = {"name": self.name, "sha256": self.sha256, "rows": self.rows,
                 "dropped_rows": self.dropped_rows, "role": role}
        return entry | ({"renamed_columns": self.renamed_columns} if self.renamed_columns
                        else {})


def load_file(path: Path, label_column: str, prepare_file: Callable,
              labels_required: bool = True, known_columns: Collection[str] = (),
              on_parsed: Callable | None = None) -> LoadedFile:
    """Read, hash and prepare one CSV from a single read of its bytes.

    Booleans become 0.0/1.0 (NaN where missing) so that a column has one type whether or
    not a file happens to have a gap in it. Rows with a missing label are dropped and counted.
    With `labels_required` False (files to predict on), every row is kept and the label
    column may be absent; `labels` is then all missing where there is none. A header name
    that is the label column or one of `known_columns` but for stray spaces or a UTF-7
    escape is read as that name (see normalised_header), and the rename is logged.
    `on_parsed(sha256, table)` is given the table pyarrow parsed, before anything else is
    done to it (the columnar copy of history keeps it; retraining/columnar.py).
    """
    import pyarrow as pa

    with open(path, "rb") as handle:
        status = os.fstat(handle.fileno())
        payload = handle.read()
    sha256 = hashlib.sha256(payload).hexdigest()
    facts = FileFacts(path=path, sha256=sha256, identity=file_identity(status),
                      content_sha256=content_sha256(payload))
    try:
        table = parsed_csv(payload)
    except (pa.ArrowInvalid, UnicodeDecodeError) as error:
        raise _unreadable(path, error, payload) from None
    loaded = loaded_from_table(table, facts, label_column, prepare_file, labels_required,
                               known_columns, payload)
    if on_parsed is not None:
        on_parsed(sha256, table)
    return loaded


def parsed_csv(payload: bytes):
    """The pyarrow table a CSV's bytes parse to, with pyarrow's type inference; the one
    parse every reader of data files (and the columnar copy of history) shares."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    return pcsv.read_csv(pa.BufferReader(payload))  # a UTF-8 BOM is skipped here


@dataclasses.dataclass(frozen=True)
class FileFacts:
    """What tells one version of a file from another: where the rows of a table came from."""

    path: Path
    sha256: str
    identity: tuple  # (inode, size, mtime)
    content_sha256: str


def loaded_from_table(table, facts: FileFacts, label_column: str, prepare_file: Callable,
                      labels_required: bool = True, known_columns: Collection[str] = (),
                      payload: bytes | None = None) -> LoadedFile:
    """The file `facts` describes, from the table pyarrow parsed from its bytes (see load_file).

    `payload`, the CSV's bytes, is what errors quote their evidence from; without it (a
    table from the columnar copy) an error only names the problem, so a caller that has the
    CSV should read it again to report one.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    path = facts.path
    name = shown_name(path)
    try:
        found_header = table.column_names
        header, renamed = normalised_header(found_header, {label_column, *known_columns})
        if renamed:
            table = table.rename_columns(header)
            log.warning("%s: read the column%s %s", name, "s" * (len(renamed) > 1),
                        ", ".join(f"{found!r} as {used!r}" for found, used in renamed.items()))
        counts = collections.Counter(header)
        repeated = sorted(column for column, count in counts.items() if count > 1)
        if repeated:
            raise DataError(f"{name} has the column {repeated[0]!r} "
                            f"{counts[repeated[0]]} times (header: {_quoted_list(header)})",
                            fix=f"give each column of {path} its own name",
                            kind="repeated_column")
        label_read_kind = None
        if label_column in counts:
            label_read_kind = _arrow_kind(table.schema.field(label_column).type)
        for index, field in enumerate(table.schema):
            if pa.types.is_binary(field.type):  # what pyarrow makes of text that is not UTF-8
                raise pa.ArrowInvalid(f"column {field.name!r} has text that is not UTF-8"
                                      f"{_first_non_utf8(payload or b'')}")
            if pa.types.is_boolean(field.type) or pa.types.is_null(field.type):
                table = table.set_column(index, field.name,
                                         pc.cast(table[field.name], pa.float64()))
        # Column names are decoded only here: a header that is not UTF-8 fails late. Not
        # split_blocks: its columns without gaps would be read-only views of Arrow's buffers,
        # and prepare_file may change the frame in place.
        frame = table.to_pandas()
        frame.index.name = _READER_INDEX
    except (pa.ArrowInvalid, UnicodeDecodeError) as error:
        raise _unreadable(path, error, payload) from None
    try:
        frame = prepare_file(frame, path)
    except Exception as error:  # the user's hook: report its own message, whatever it raised
        raise_if_stopped(error)
        raise DataError(f"prepare_file rejected {name}: {type(error).__name__}: {error}",
                        fix=f"fix {path} or the prepare_file hook",
                        kind=f"prepare_file: {type(error).__name__}: {error}") from error
    # Against the table, not the frame given to prepare_file, which it may have changed.
    data_rows = _data_rows(frame, table)
    file_rows = data_rows is not None
    # An index the domain set (an object id, a group key) must not pass for row numbers in
    # reasons or in predictions: rows it made are counted from 0 in their prepared order.
    frame = frame.set_axis(data_rows if file_rows else range(len(frame)))
    facts = {"path": path, "sha256": facts.sha256, "identity": facts.identity,
             "content_sha256": facts.content_sha256, "label_read_kind": label_read_kind,
             "file_rows": file_rows, "renamed_columns": renamed, "header": found_header}
    if not labels_required:
        import pandas as pd

        labels = frame[label_column] if label_column in frame.columns \
            else pd.Series(float("nan"), index=frame.index)
        return LoadedFile(features=frame.drop(columns=[label_column], errors="ignore"),
                          labels=labels, dropped_rows=0, **facts)
    if label_column not in frame.columns:
        raise DataError(f"{name} has no label column {label_column!r} (header: "
                        f"{_quoted_list(found_header)})",
                        fix="add the column or set --label-column to the right name",
                        kind="no_label_column")
    labelled = frame[label_column].notna()
    dropped_rows = int((~labelled).sum())
    if dropped_rows:
        frame = frame[labelled]
    labels = _restore_integer_labels(frame[label_column])
    if len(labels) == 0:
        what = (f"only a header ({_quoted_list(found_header)})" if dropped_rows == 0 else
                f"{dropped_rows} data rows, none with a value in {label_column!r}")
        raise DataError(f"{name} has no labelled rows: {what}", fix=f"fix or remove {path}",
                        kind="unlabelled")
    features = frame.copy(deep=False)  # no column copied: its label column goes
    del features[label_column]
    return LoadedFile(features=features, labels=labels, dropped_rows=dropped_rows, **facts)


def _unreadable(path: Path, error: Exception, payload: bytes | None) -> DataError:
    where = _parse_error_place(payload) if payload and "parse error" in str(error) else None
    return DataError(f"{shown_name(path)} is not a readable CSV file ({_first_line(error)}"
                     f"{'; ' + where if where else ''})",
                     fix=f"fix or remove {path}", kind="unreadable")


def normalised_header(names: Sequence[str], known: Collection[str]
                      ) -> tuple[list[str], dict[str, str]]:
    """The header with each name that is unambiguously a known name written another way
    read as that name; and the renames (found -> used).

    Two ways a tool mangles a header are undone: stray spaces (and a BOM that was not at the
    file's start), and UTF-7, which writes `ground_truth` as `ground+AF8-truth`. Only
    towards a known name that the header does not already hold, and that no other name of
    it would become: anything else stays as it is, for the checks to name.
    """
    candidates = {}
    for name in names:
        if name in known:
            continue
        for candidate in (name.replace("\ufeff", "").strip(), _utf7_decoded(name)):
            if candidate in known and candidate != name:
                candidates[name] = candidate
                break
    targets = list(candidates.values())
    renamed = {found: used for found, used in candidates.items()
               if used not in names and targets.count(used) == 1}
    return [renamed.get(name, name) for name in names], renamed


def _utf7_decoded(name: str) -> str | None:
    if "+" not in name or not name.isascii():
        return None
    try:
        decoded = name.encode("ascii").decode("utf-7")
    except UnicodeDecodeError:
        return None
    return decoded.strip() if decoded.isprintable() else None


# The name of the index the reader gives prepare_file. A filter, a sort, a new column or
# groupby().transform keep it; an aggregate renumbered from 0, which an unnamed 0, 1, 2...
# cannot tell from the file's first rows, does not.
_READER_INDEX = "data_row"


def _data_rows(prepared, table):
    """The file's data row (0 = the line after the header) of each row prepare_file
    returned, or None where it made rows of its own (aggregated them).

    They are the reader's index where prepare_file kept it. An index of the domain's own
    (an object id) on all the file's rows, in their order and with the file's values in
    every column it kept, leaves their positions as the data rows.
    """
    import pandas as pd

    index, read_rows = prepared.index, table.num_rows
    if index.name == _READER_INDEX and index.dtype.kind in "iu" and index.is_unique \
            and (len(index) == 0 or (index.min() >= 0 and index.max() < read_rows)):
        return index.rename(None)
    if len(prepared) == read_rows and _holds_file_values(prepared, table):
        return pd.RangeIndex(read_rows)
    return None


def _holds_file_values(prepared, table) -> bool:
    """Whether every column `prepared` shares with the file holds the file's values, row
    for row (and there is such a column)."""
    shared = [column for column in prepared.columns if column in table.column_names]
    return bool(shared) and all(
        prepared[column].reset_index(drop=True).equals(table.column(column).to_pandas())
        for column in shared)


def _arrow_kind(arrow_type) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_integer(arrow_type):
        return "integer"
    if pa.types.is_floating(arrow_type) or pa.types.is_null(arrow_type):
        return "number"
    return "text"


def _quoted_list(names, most: int = 12) -> str:
    names = [str(name) for name in names]
    shown = ", ".join(repr(name) for name in names[:most])
    return f"[{shown}{', ...' if len(names) > most else ''}] ({len(names)} columns)"


def _restore_integer_labels(labels):
    # An integer label column with a gap is read as float; once the gaps are dropped it must be
    # integer again, or class 1 and class 1.0 would differ from one file to the next.
    if labels.dtype.kind == "f" and (labels % 1 == 0).all():
        return labels.astype("int64")
    return labels


def _first_non_utf8(payload: bytes) -> str:
    """Where the first bytes that are not UTF-8 are: the line, and the bytes around them."""
    for number, line in enumerate(payload.splitlines(), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            around = line[max(0, error.start - 10):error.end + 10]
            return f", first on line {number}: {around!r}"
    return ""


def _parse_error_place(payload: bytes) -> str | None:
    """The line a CSV parse error is on, found with the standard library's reader: pyarrow
    names the row's text but not where it is."""
    import csv
    import io

    reader = csv.reader(io.StringIO(payload.decode("utf-8", "replace"), newline=""),
                        strict=True)
    try:
        header = next(reader, None)
        for fields in reader:
            if fields and header is not None and len(fields) != len(header):
                return (f"line {reader.line_num} has {len(fields)} fields where the header "
                        f"has {len(header)}")
    except csv.Error as error:
        return f"line {reader.line_num}: {error}"
    return None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def load_files(paths: Iterable[Path], label_column: str,
               prepare_file: Callable) -> list[LoadedFile]:
    return [load_file(path, label_column, prepare_file) for path in paths]


def release_rows(files: Iterable[LoadedFile]) -> None:
    """Drop the rows of files already stacked elsewhere, and give their memory back.

    pyarrow allocated those rows, and its allocator keeps freed blocks for later reads: a
    million rows of history kept 130 MB resident through the fit that followed. Asking it to
    return them makes the cycle's peak that of the work itself.
    """
    import pyarrow as pa

    for loaded in files:
        loaded.release()
    pa.default_memory_pool().release_unused()


def label_kind(labels) -> str:
    return "integer" if labels.dtype.kind in "iu" else "number" if labels.dtype.kind in "fc" \
        else "boolean" if labels.dtype.kind == "b" else "text"


def check_columns(files: Sequence[LoadedFile], expected: Sequence[str] | None = None) -> list[str]:
    """Return the feature columns every file shares; a file that differs raises DataError.

    `expected` is the production model's input schema when known, else the first file's.
    Labels must be of one kind too: a stray text label would turn class 1 into "1".
    """
    reference = list(expected) if expected else list(files[0].features.columns)
    kinds = {label_kind(loaded.labels) for loaded in files}
    if len(kinds) > 1:
        majority = max(kinds, key=lambda kind: sum(label_kind(f.labels) == kind for f in files))
        odd = next(f for f in files if label_kind(f.labels) != majority)
        raise DataError(f"{odd.name} has {label_kind(odd.labels)} labels where the other "
                        f"files have {majority} labels",
                        fix=f"fix the label values in {odd.path}")
    for loaded in files:
        problem = column_problem(loaded, reference)
        if problem:
            raise DataError(f"{loaded.name} {problem}", fix=f"fix or remove {loaded.path}")
    return reference


def column_problem(loaded: LoadedFile, reference: Sequence[str],
                   source: str = "expected") -> str | None:
    """What is wrong with a file's feature columns against `reference`, or None."""
    columns = set(loaded.features.columns)
    if columns == set(reference):
        return None
    missing, unexpected = sorted(set(reference) - columns), sorted(columns - set(reference))
    differences = ", ".join([*([f"missing {missing}"] if missing else []),
                             *([f"unexpected {unexpected}"] if unexpected else [])])
    return (f"has other feature columns than {source} ({differences}; header found: "
            f"{_quoted_list(loaded.header or loaded.features.columns)})")


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a file must hold to be used, and who says so: the production model, or most of
    the history files (see retraining/screening.py)."""

    source: str  # "the production model" or "40 of 44 history files", for the reasons
    columns: list[str] | None  # feature columns; None: not known
    kinds: dict[str, str] | None  # column -> "number" or "text"
    classes: list | None  # labels outside them are refused; None: not checked
    class_kind: str | None  # the labels' kind once read: integer, number or text
    label_kind: str | None  # as the CSVs held them (boolean, for TRUE/FALSE); None: unknown
    labels_shown: str = ""  # how the reasons show the expected labels
    by_model: bool = False  # the production model says so, rather than most files

    @property
    def takes_numbers(self) -> str:
        return f"{self.source} takes a number" if self.by_model \
            else f"{self.source} hold numbers"

    @classmethod
    def of_production(cls, production) -> Expected:
        import pandas as pd

        classes = getattr(production.model, "classes_", None)
        if classes is None:
            return cls("the production model", production.input_columns,
                       production.input_kinds, None, None, production.label_kind, by_model=True)
        class_kind = label_kind(pd.Series(classes))
        return cls("the production model", production.input_columns, production.input_kinds,
                   classes.tolist(), class_kind, production.label_kind,
                   f"the production model's classes are {production.label_kind or class_kind} "
                   f"({_classes_shown(classes)})", by_model=True)


def check_file(loaded: LoadedFile, expected: Expected) -> None:
    """Raise DataError when a file does not hold what `expected` says; may fix what is
    unambiguous: a column taken as text that this file happens to hold as numbers is turned
    into text, and one taken as numbers but read as text with no value that is not a number
    is turned into numbers."""
    name, fix = loaded.shown_name, f"fix or remove {loaded.path}"
    if expected.columns is not None and (
            problem := column_problem(loaded, expected.columns, expected.source)):
        raise DataError(f"{name} {problem}", fix=fix, kind=f"columns: {problem}")
    kinds = {column: kind for column, kind in (expected.kinds or {}).items()
             if column in loaded.features.columns}
    dtypes = loaded.features.dtypes
    infinite = _columns_with_infinity(loaded.features, kinds, dtypes)
    for column, kind in kinds.items():
        held_as_numbers = dtypes[column].kind in "biufc"
        if (kind == "number") == held_as_numbers and column not in infinite:
            continue  # text held as text, or finite numbers: nothing to look at
        _check_cell_kinds(loaded, column, kind, expected.takes_numbers)
    if expected.class_kind is None:
        return
    kind, read = loaded.label_read_kind or label_kind(loaded.labels), label_kind(loaded.labels)
    # TRUE/FALSE arrive as 0/1, so they must be refused by what the CSV held: only labels 0
    # and 1 learnt from booleans (or whose kind was not recorded) take them; 0, 1, 2 never.
    boolean_refused = kind == "boolean" and (
        expected.classes is not None and not set(expected.classes) <= {0, 1}
        or expected.label_kind not in (None, "boolean"))
    if read != expected.class_kind or boolean_refused:
        raise DataError(f"{name} has {kind} labels ({_label_counts(loaded.labels, kind)}) "
                        f"where {expected.labels_shown}",
                        fix=f"fix the label values in {loaded.path}", kind=f"label kind: {kind}")
    if expected.classes is not None:
        unseen = sorted(set(loaded.labels.unique().tolist()) - set(expected.classes), key=str)
        if unseen:
            # Scored as errors, a new class would look like drift; trained on, it would be
            # promoted unchecked. A person decides whether it is a typo or a new class.
            raise DataError(f"{name} has labels the production model has never seen: "
                            f"{unseen[:5]} ({_label_counts(loaded.labels, kind)}; a typo, or a "
                            "new class: then register a model that knows it)", fix=fix)


def check_new_file(loaded: LoadedFile, expected: Expected, taken: dict[str, str]) -> None:
    """Raise DataError when a new file cannot join the batch (see check_file); `taken` maps
    the content already consumed or in the batch to where it is."""
    check_file(loaded, expected)
    if loaded.content_sha256 in taken:
        raise DataError(f"{loaded.shown_name} has the same content as "
                        f"{taken[loaded.content_sha256]}, already taken",
                        fix=f"remove {loaded.path} if it is a re-delivery", kind="redelivery")


def _columns_with_infinity(features, kinds: dict[str, str], dtypes) -> set[str]:
    """The columns taken as numbers, and held as numbers, that have an infinite cell: found
    in one pass over all of them, not a column at a time (years of history are checked)."""
    import numpy as np

    numeric = [column for column, kind in kinds.items()
               if kind == "number" and dtypes[column].kind in "biufc"]
    if not numeric:
        return set()
    values = features[numeric].to_numpy(dtype=float, na_value=np.nan)
    return {column for column, found in zip(numeric, np.isinf(values).any(axis=0),
                                            strict=True) if found}


def _check_cell_kinds(loaded: LoadedFile, column: str, kind: str, takes_numbers: str) -> None:
    """Every cell of `column` is of the kind the model takes: a number, finite, or text."""
    import numpy as np
    import pandas as pd

    values = loaded.features[column]
    fix = f"fix the column {column!r} of {loaded.path}, or remove the file"
    if kind == "text":
        if values.dtype.kind in "biufc":
            loaded.features[column] = _as_text(values)
        return
    if values.dtype.kind not in "biufc":
        numbers = pd.to_numeric(values, errors="coerce")
        odd = values.notna() & numbers.isna()
        if odd.any():
            where = values.index[odd.to_numpy()]
            raise DataError(f"{loaded.shown_name} has the value {values[where[0]]!r} in column "
                            f"{column!r} on {_row(loaded, where[0])}, where {takes_numbers} "
                            f"({int(odd.sum())} such cells)", fix=fix,
                            kind="cell")
        loaded.features[column] = values = numbers
    infinite = np.isinf(values.to_numpy(dtype=float, na_value=np.nan))
    if infinite.any():
        where = values.index[infinite]
        raise DataError(f"{loaded.shown_name} has {values[where[0]]} in column {column!r} on "
                        f"{_row(loaded, where[0])}: the model takes finite numbers only "
                        f"({int(infinite.sum())} such cells)", fix=fix, kind="cell")


def _row(loaded: LoadedFile, index: int) -> str:
    """Where a row is, for a person: its 1-based data row in the file, or, when prepare_file
    made rows of its own, its 1-based place among them."""
    return (f"data row {index + 1}" if loaded.file_rows
            else f"row {index + 1} of what prepare_file returned")


def _as_text(values):
    """Numbers as the text a person wrote: 3 rather than 3.0; gaps stay gaps."""
    import numpy as np

    def text(value):
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    return values.astype(object).map(text).where(values.notna(), np.nan)


def _label_counts(labels, kind: str, most: int = 5) -> str:
    counts = labels.value_counts()
    shown = ", ".join(f"{_label_shown(value, kind)} x{count}"
                      for value, count in counts.head(most).items())
    return f"seen: {shown}{', ...' if len(counts) > most else ''}"


def _label_shown(value, kind: str) -> str:
    if kind == "boolean":
        return "TRUE" if value else "FALSE"
    return repr(value.item() if hasattr(value, "item") else value)


def _classes_shown(classes, most: int = 10) -> str:
    values = [value.item() if hasattr(value, "item") else value for value in classes[:most]]
    return ", ".join(map(repr, values)) + (", ..." if len(classes) > most else "")


def labels_read_kind(files: Sequence[LoadedFile]) -> str | None:
    """The kind most files' labels had as read (boolean, integer, number, text)."""
    kinds = [loaded.label_read_kind for loaded in files if loaded.label_read_kind]
    return max(set(kinds), key=kinds.count) if kinds else None


def concat_files(files: Sequence[LoadedFile], columns: Sequence[str] | None = None):
    """Features and labels of several files stacked, in one column order."""
    import pandas as pd

    columns = list(columns) if columns else list(files[0].features.columns)
    features = pd.concat([loaded.features[columns] for loaded in files], ignore_index=True)
    labels = pd.concat([loaded.labels for loaded in files], ignore_index=True)
    return features, labels


def batch_key(files: Sequence[LoadedFile]) -> str:
    """Hash of the batch's names and contents: the same files give the same key."""
    digest = hashlib.sha256()
    for loaded in sorted(files, key=lambda item: item.name):
        digest.update(f"{loaded.name}\0{loaded.sha256}\n".encode())
    return digest.hexdigest()


def write_manifest(path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"files": entries}, indent=1, sort_keys=True))
