"""The columnar copy of history: each CSV of `used_gts/` kept once more as the table it parses to.

Parsing years of CSVs again every night is the cost that grows without bound. So each file in
history also gets `used_gts/.columnar/<sha256>.arrow`: the table pyarrow parsed from the
file's bytes, as an Arrow IPC file, before any column was renamed or cast. Everything after
the parse (header repairs, the domain's prepare_file, the checks) runs on it as on the CSV,
so a file reads the same either way. A copy is written when its file is archived, and for a
file of history that has none (history from before the copies, or placed by hand) when the
retraining first reads it.

The CSVs stay the source of truth. A copy is used only when the ledger's entry for the file
still describes it (size, mtime, inode and ctime unchanged: ledger.stat_fields), and the copy
says that it was parsed from that entry's sha256 by this version of pyarrow, whose type
inference made the table. Otherwise the CSV is read, and the copy written again. A copy that
cannot be written (a full disk) costs speed, never a cycle: the warning says so.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from pathlib import Path
from typing import Callable, Collection, Iterable

from retraining.datafiles import FileFacts, LoadedFile, load_file, loaded_from_table, shown_name
from retraining.errors import DataError
from retraining.ledger import read_ledger, stat_fields
from retraining.statefiles import own_folder, write_atomically

log = logging.getLogger(__name__)

COPY_FOLDER = ".columnar"
# Bumped when what a copy holds changes: copies of another format are read from the CSV again.
_FORMAT = b"1"
# Uncompressed: a file of 5,000 rows is read in a quarter of the time LZ4 takes to decompress
# it, for about 1.3 times the CSV's size on disk (LZ4: 0.7).
_COMPRESSION = None
_COPY_NAME = re.compile(r"^[0-9a-f]{64}\.arrow(\.part)?$")


class ColumnarHistory:
    """History's files read through their columnar copies; missing copies written as read.

    `writable` False (a dry run) reads the copies there are and writes none.
    """

    def __init__(self, used_dir: Path, writable: bool):
        self.used_dir = used_dir
        self.folder = used_dir / COPY_FOLDER
        self.writable = writable
        if os.path.lexists(self.folder):
            own_folder(self.folder)  # never read or written through a link planted there
        # The newest entry of each name describes the file of that name now, if any does.
        self.entries = {entry["name"]: entry for entry in read_ledger(used_dir)}
        self.from_copy = self.from_csv = self.written = 0

    def load(self, path: Path, label_column: str, prepare_file: Callable,
             known_columns: Collection[str] = ()) -> LoadedFile:
        """The file, as datafiles.load_file reads it; from its copy where one matches."""
        entry, status = self._entry(path)
        table = self._read_copy(path, entry["sha256"]) if entry is not None else None
        if table is not None:
            facts = FileFacts(path=path, sha256=entry["sha256"],
                              identity=(status.st_ino, status.st_size, status.st_mtime_ns),
                              content_sha256=entry["content_sha256"])
            try:
                loaded = loaded_from_table(table, facts, label_column, prepare_file,
                                           known_columns=known_columns)
            except DataError:
                # Read again from the CSV below, which raises the same problem with its
                # evidence (the line, the bytes) quoted from the file.
                pass
            else:
                self.from_copy += 1
                return loaded
        parsed: dict = {}
        loaded = load_file(path, label_column, prepare_file, known_columns=known_columns,
                           on_parsed=lambda sha256, parsed_table: parsed.update(
                               sha256=sha256, table=parsed_table))
        self.from_csv += 1
        if entry is not None and parsed["sha256"] == entry["sha256"]:
            self.write(parsed["sha256"], parsed["table"])
        return loaded

    def write(self, sha256: str, table) -> None:
        """Keep `table`, parsed from a file whose bytes hash to `sha256`, as its copy."""
        import pyarrow as pa

        if not self.writable:
            return
        metadata = {b"columnar.format": _FORMAT, b"columnar.source_sha256": sha256.encode(),
                    b"columnar.pyarrow": pa.__version__.encode()}
        table = table.replace_schema_metadata(metadata)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema,
                             options=pa.ipc.IpcWriteOptions(compression=_COMPRESSION)) as writer:
            writer.write_table(table)
        try:
            own_folder(self.folder)
            write_atomically(self.folder / f"{sha256}.arrow", sink.getvalue().to_pybytes())
        except OSError as error:
            # The copy only saves time: history is still read, from its CSVs. Said once, and
            # no more copies are tried in this run.
            log.warning("history's columnar copy in %s could not be written (%s); history is "
                        "read from its CSV files until it can", self.folder,
                        os.strerror(error.errno) if error.errno else error)
            self.writable = False
            return
        self.written += 1

    def prune(self, history: Iterable[Path]) -> int:
        """Remove the copies of files no longer in history (quarantined, removed by hand),
        and partial copies a kill left; return how many. Only names this module makes are
        touched."""
        if not self.writable or not os.path.lexists(self.folder):
            return 0
        keep = {f"{self.entries[path.name]['sha256']}.arrow" for path in history
                if path.name in self.entries}
        removed = 0
        for name in os.listdir(self.folder):
            if _COPY_NAME.match(name) and name not in keep:
                with contextlib.suppress(FileNotFoundError):  # another process removed it
                    os.unlink(self.folder / name)
                    removed += 1
        return removed

    def summary(self) -> str:
        return (f"{self.from_copy:,} from the columnar copy, {self.from_csv:,} from CSV"
                + (f", {self.written:,} copies written" if self.written else ""))

    def _entry(self, path: Path):
        """The ledger's entry for `path` when it still describes the file, and its stat."""
        status = os.stat(path)
        entry = self.entries.get(path.name)
        if entry is None or not entry.get("content_sha256") or any(
                entry.get(key) != value for key, value in stat_fields(status).items()):
            return None, status
        return entry, status

    def _read_copy(self, path: Path, sha256: str):
        import pyarrow as pa

        copy = self.folder / f"{sha256}.arrow"
        try:
            descriptor = os.open(copy, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            log.warning("%s is a symbolic link; %s is read from its CSV", copy,
                        shown_name(path))
            return None
        try:
            with os.fdopen(descriptor, "rb") as handle:
                reader = pa.ipc.open_file(pa.py_buffer(handle.read()))
                metadata = reader.schema.metadata or {}
                if metadata.get(b"columnar.format") != _FORMAT \
                        or metadata.get(b"columnar.source_sha256") != sha256.encode() \
                        or metadata.get(b"columnar.pyarrow") != pa.__version__.encode():
                    return None
                # The table exactly as the CSV parses: without the copy's own metadata.
                return reader.read_all().replace_schema_metadata(None)
        except (pa.ArrowInvalid, OSError) as error:
            log.warning("the columnar copy of %s cannot be read (%s); read from its CSV and "
                        "written again", shown_name(path), error)
            return None


def copy_archived(used_dir: Path, arrivals: Iterable[dict]) -> None:
    """Write the copies of files just archived (`arrivals`: their ledger entries).

    Each CSV is parsed again, a few files a night, so the copy is of the bytes that are in
    history now.
    """
    import hashlib

    import pyarrow as pa
    import pyarrow.csv as pcsv

    history = ColumnarHistory(used_dir, writable=True)
    for arrival in arrivals:
        with open(used_dir / arrival["name"], "rb") as handle:
            payload = handle.read()
        # Bytes that changed after the cycle read them get no copy from here; the next
        # retraining reads that file from its CSV.
        if hashlib.sha256(payload).hexdigest() == arrival["sha256"]:
            history.write(arrival["sha256"], pcsv.read_csv(pa.BufferReader(payload)))
        if not history.writable:
            break
