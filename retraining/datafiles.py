"""Data files: finding them, reading each once, and splitting a batch by whole file.

Listing needs only the standard library, so the trigger step stays fast; pyarrow and pandas
are imported when files are actually read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from retraining.errors import DataError, UsageError

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

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def rows(self) -> int:
        return self.row_count if self.labels is None else len(self.labels)

    def release(self) -> None:
        """Drop the rows, keeping the identity and the row count (for a file read only to be
        stacked with others)."""
        self.row_count = self.rows
        self.features = self.labels = None

    def manifest_entry(self, role: str) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "rows": self.rows,
                "dropped_rows": self.dropped_rows, "role": role}


def load_file(path: Path, label_column: str, prepare_file: Callable,
              labels_required: bool = True) -> LoadedFile:
    """Read, hash and prepare one CSV from a single read of its bytes.

    Booleans become 0.0/1.0 (NaN where missing) so that a column has one type whether or
    not a file happens to have a gap in it. Rows with a missing label are dropped and counted.
    With `labels_required` False (files to predict on), every row is kept and the label
    column may be absent; `labels` is then all missing where there is none.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    with open(path, "rb") as handle:
        status = os.fstat(handle.fileno())
        payload = handle.read()
    identity = file_identity(status)
    sha256 = hashlib.sha256(payload).hexdigest()
    try:
        table = pcsv.read_csv(pa.BufferReader(payload))
        for index, field in enumerate(table.schema):
            if pa.types.is_binary(field.type):  # what pyarrow makes of text that is not UTF-8
                raise pa.ArrowInvalid(f"column {field.name!r} has text that is not UTF-8")
            if pa.types.is_boolean(field.type) or pa.types.is_null(field.type):
                table = table.set_column(index, field.name,
                                         pc.cast(table[field.name], pa.float64()))
        # Column names are decoded only here: a header that is not UTF-8 fails late.
        frame = table.to_pandas()
    except (pa.ArrowInvalid, UnicodeDecodeError) as error:
        raise DataError(f"{path.name} is not a readable CSV file ({_first_line(error)})",
                        fix=f"fix or remove {path}") from None
    try:
        frame = prepare_file(frame, path)
    except Exception as error:  # the user's hook: report its own message, whatever it raised
        raise DataError(f"prepare_file rejected {path.name}: {type(error).__name__}: {error}",
                        fix=f"fix {path} or the prepare_file hook") from error
    if not labels_required:
        import pandas as pd

        labels = frame[label_column] if label_column in frame.columns \
            else pd.Series(float("nan"), index=frame.index)
        return LoadedFile(path=path, sha256=sha256,
                          features=frame.drop(columns=[label_column], errors="ignore"),
                          labels=labels, dropped_rows=0, identity=identity)
    if label_column not in frame.columns:
        raise DataError(f"{path.name} has no label column {label_column!r}",
                        fix="add the column or set --label-column to the right name")
    labelled = frame[label_column].notna()
    dropped_rows = int((~labelled).sum())
    if dropped_rows:
        frame = frame[labelled]
    labels = _restore_integer_labels(frame[label_column])
    if len(labels) == 0:
        raise DataError(f"{path.name} has no labelled rows", fix=f"fix or remove {path}")
    features = frame.drop(columns=[label_column])
    return LoadedFile(path=path, sha256=sha256, features=features, labels=labels,
                      dropped_rows=dropped_rows, identity=identity)


def _restore_integer_labels(labels):
    # An integer label column with a gap is read as float; once the gaps are dropped it must be
    # integer again, or class 1 and class 1.0 would differ from one file to the next.
    if labels.dtype.kind == "f" and (labels % 1 == 0).all():
        return labels.astype("int64")
    return labels


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


def column_problem(loaded: LoadedFile, reference: Sequence[str]) -> str | None:
    """What is wrong with a file's feature columns against `reference`, or None."""
    columns = set(loaded.features.columns)
    if columns == set(reference):
        return None
    return (f"has different feature columns (missing {sorted(set(reference) - columns)}, "
            f"unexpected {sorted(columns - set(reference))})")


def file_problem(loaded: LoadedFile, columns: Sequence[str] | None, classes,
                 taken: dict[str, str]) -> str | None:
    """Why a new file cannot join the batch, or None.

    `columns` are the production model's inputs, `classes` its classes (None when unknown),
    and `taken` maps the content already consumed or in the batch to where it is.
    """
    import pandas as pd

    if columns is not None and (problem := column_problem(loaded, columns)):
        return problem
    if classes is not None:
        class_kind, kind = label_kind(pd.Series(classes)), label_kind(loaded.labels)
        if kind != class_kind:
            return f"has {kind} labels where the production model's classes are {class_kind}"
        unseen = sorted(set(loaded.labels.unique().tolist()) - set(classes.tolist()), key=str)
        if unseen:
            # Scored as errors, a new class would look like drift; trained on, it would be
            # promoted unchecked. A person decides whether it is a typo or a new class.
            return (f"has labels the production model has never seen: {unseen[:5]} (a typo, "
                    f"or a new class: then register a model that knows it)")
    if loaded.sha256 in taken:
        return f"has the same content as {taken[loaded.sha256]}, already taken"
    return None


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


def choose_heldout(files: Sequence[LoadedFile], fraction: float, seed: int,
                   seen_sha256: set[str] = frozenset()) -> set[str]:
    """Names of the new files held out for the comparison: whole files, at least one.

    Only files whose content neither model can have been trained on are eligible: not in
    `seen_sha256` (the history) and not duplicated within the batch. Seeded by the setting
    and the batch itself, so a rerun on the same batch holds out the same files.
    """
    import numpy as np

    counts: dict[str, int] = {}
    for loaded in files:
        counts[loaded.sha256] = counts.get(loaded.sha256, 0) + 1
    names = sorted(loaded.name for loaded in files
                   if loaded.sha256 not in seen_sha256 and counts[loaded.sha256] == 1)
    if not names:
        raise DataError("every new file repeats the content of another file or of history, "
                        "so no file is left that neither model has seen",
                        fix="remove the re-delivered files from new_gts/")
    count = min(len(names), max(1, round(len(files) * fraction)))
    generator = np.random.default_rng([seed, int(batch_key(files)[:15], 16)])
    return set(generator.choice(names, size=count, replace=False).tolist())


def write_manifest(path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"files": entries}, indent=1, sort_keys=True))
