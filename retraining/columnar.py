"""The columnar copy of history: each CSV of `used_gts/` kept once more as the table it parses to.

Parsing years of CSVs again every night is the cost that grows without bound. So each file in
history also gets `used_gts/.columnar/<sha256>-<crc32>.arrow`: the table pyarrow parsed from
the file's bytes, as an Arrow IPC file, before any column was renamed or cast. Everything
after the parse (header repairs, the domain's prepare_file, the checks) runs on it as on the
CSV, so a file reads the same either way. A copy is written when its file is archived, and
for a file of history that has none (history from before the copies, or placed by hand) when
the retraining first reads it.

The CSVs stay the source of truth. A copy is used only when the ledger's entry for the file
still describes it (size, mtime, inode and ctime unchanged: ledger.stat_fields), the copy's
bytes still have the CRC-32 in its name, and it says that it was parsed from that entry's
sha256 by this version of pyarrow, whose type inference made the table. Otherwise the CSV is
read, and the copy written again. Only a folder and files of this program's own user, which
no one else can write, are trusted: anything else there makes the copy off, not the cycle.
A copy only saves time, so nothing about it ever fails a cycle: a copy that cannot be
written (a full disk, a folder that is not ours) is one warning and a slower read, and no
copy takes the last of the disk (a reserve stays free for the store and the archive).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import stat
import time
import zlib
from pathlib import Path
from typing import Callable, Collection, Iterable

from retraining.datafiles import (FileFacts, LoadedFile, load_file, loaded_from_table,
                                  parsed_csv, shown_name)
from retraining.errors import DataError, NeedsAttention
from retraining.ledger import read_ledger, stat_fields
from retraining.statefiles import open_own_file

log = logging.getLogger(__name__)

COPY_FOLDER = ".columnar"
# Bumped when what a copy holds changes: copies of another format are read from the CSV again.
_FORMAT = b"2"
# Uncompressed: a file of 5,000 rows is read in a quarter of the time LZ4 takes to decompress
# it, for about 1.3 times the CSV's size on disk (LZ4: 0.7).
_COMPRESSION = None
# <sha256 of the CSV>-<CRC-32 of the copy's bytes>.arrow; CRC-32 because it is checked on
# every read and zlib's is the fastest hash in the standard library (a bit flipped on disk is
# what it is for: who may write the folder is checked apart).
_COPY_NAME = re.compile(r"^(?P<source>[0-9a-f]{64})-(?P<crc>[0-9a-f]{8})\.arrow$")
# A copy being written: its final name, the writer's pid and a random token, so two
# processes never share one (register_first_model.py may read history beside a cycle).
_PARTIAL_NAME = re.compile(r"^[0-9a-f]{64}-[0-9a-f]{8}\.arrow\.[0-9]+-[0-9a-f]{8}\.part$")
_FORMAT_1_NAME = re.compile(r"^[0-9a-f]{64}\.arrow(\.part)?$")
# A partial copy older than this was left by a kill: writing one takes milliseconds.
_ABANDONED_AFTER_S = 3600
# Copies never leave the disk with less free than this (the smaller of the two): the store,
# the ledger and the archive need the room more than a faster read does.
_RESERVE_BYTES = 1 << 30
_RESERVE_SHARE = 0.05

# Folders whose copies could not be written in this process: tried, and said, once.
_unwritable: set[Path] = set()
_said: set[tuple[Path, str]] = set()


class ColumnarHistory:
    """History's files read through their columnar copies; missing copies written as read.

    `writable` False (a dry run) reads the copies there are and writes or removes none.
    """

    def __init__(self, used_dir: Path, writable: bool):
        self.used_dir = used_dir
        self.folder = used_dir / COPY_FOLDER
        self.writable = writable
        # The newest entry of each name describes the file of that name now, if any does.
        self.entries = {entry["name"]: entry for entry in read_ledger(used_dir)}
        self.from_copy = self.from_csv = self.written = 0
        # Source sha256 -> names of its copies; None when the folder is not to be used.
        self.copies: dict[str, list[str]] | None = self._list_copies()

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
            self.write(parsed["sha256"], parsed["table"], shown_name(path))
        return loaded

    def write(self, sha256: str, table, shown: str) -> None:
        """Keep `table`, parsed from the file `shown` whose bytes hash to `sha256`, as its
        copy."""
        import pyarrow as pa

        if not self.writable or self.copies is None or self.folder in _unwritable:
            return
        metadata = {b"columnar.format": _FORMAT, b"columnar.source_sha256": sha256.encode(),
                    b"columnar.pyarrow": pa.__version__.encode()}
        table = table.replace_schema_metadata(metadata)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema,
                             options=pa.ipc.IpcWriteOptions(compression=_COMPRESSION)) as writer:
            writer.write_table(table)
        payload = sink.getvalue()
        name = f"{sha256}-{zlib.crc32(payload):08x}.arrow"
        try:
            self._make_folder()
            self._keep_reserve(payload.size)
            _write_new(self.folder / name, payload)
        except (IsADirectoryError, NeedsAttention) as error:
            # Something of another's at this one name (a folder, a link): this copy only.
            log.warning("no columnar copy of %s was made (%s); it is read from its CSV",
                        shown, _why(error))
            return
        except (OSError, _NotWritten) as error:
            # The copy only saves time: history is still read, from its CSVs. Said once, and
            # no more copies are tried by this process.
            _unwritable.add(self.folder)
            self._say_once("unwritable", "history's columnar copy in %s could not be "
                           "written (%s); history is read from its CSV files until it can",
                           self.folder, _why(error))
            return
        for other in self.copies.get(sha256, []):
            if other != name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.folder / other)
        self.copies[sha256] = [name]
        self.written += 1

    def prune(self, history: Iterable[Path]) -> int:
        """Remove the copies of files no longer in history (quarantined, removed by hand),
        partial copies a kill left and copies of an earlier format; return how many. Only
        names this module makes are touched. For the cycle, under its lock on history: a
        partial copy is removed only once it is old enough to be a kill's."""
        if not self.writable or self.copies is None or not os.path.lexists(self.folder):
            return 0
        keep = {self.entries[path.name]["sha256"] for path in history
                if path.name in self.entries}
        removed = 0
        now = time.time()
        for name in os.listdir(self.folder):
            copy = _COPY_NAME.match(name)
            with contextlib.suppress(FileNotFoundError):  # another process removed it
                if copy is not None:
                    stale = copy["source"] not in keep
                elif _PARTIAL_NAME.match(name):
                    stale = now - os.lstat(self.folder / name).st_mtime > _ABANDONED_AFTER_S
                else:
                    stale = _FORMAT_1_NAME.match(name) is not None
                if stale:
                    os.unlink(self.folder / name)
                    removed += 1
        return removed

    def copied_table(self, path: Path):
        """The table `path` parses to, read from its copy if one still matches; else None."""
        entry, _ = self._entry(path)
        return self._read_copy(path, entry["sha256"]) if entry is not None else None

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

    def _list_copies(self) -> dict[str, list[str]] | None:
        if not os.path.lexists(self.folder):
            return {}
        try:
            problem = _untrusted(os.lstat(self.folder), "folder")
            names = os.listdir(self.folder) if problem is None else []
        except OSError as error:
            problem = _why(error)
        if problem is not None:
            self._say_once("off", "history's columnar copy is off: %s is %s; history is read "
                           "from its CSV files (remove %s, and the next cycle makes the copy "
                           "again)", self.folder, problem, self.folder)
            return None
        copies: dict[str, list[str]] = {}
        for name in names:
            match = _COPY_NAME.match(name)
            if match is not None:
                copies.setdefault(match["source"], []).append(name)
        return copies

    def _make_folder(self) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.folder, 0o755)
        problem = _untrusted(os.lstat(self.folder), "folder")
        if problem is not None:
            raise _NotWritten(f"{self.folder} is {problem}")

    def _keep_reserve(self, size: int) -> None:
        disk = os.statvfs(self.folder)
        free = disk.f_bavail * disk.f_frsize
        reserve = min(_RESERVE_BYTES, int(disk.f_blocks * disk.f_frsize * _RESERVE_SHARE))
        if free - size < reserve:
            raise _NotWritten(f"{free / 1e6:,.0f} MB free on its disk, and copies keep "
                          f"{reserve / 1e6:,.0f} MB free")

    def _read_copy(self, path: Path, sha256: str):
        for name in (self.copies or {}).get(sha256, ()):
            table = self._read_one(path, name, sha256)
            if table is not None:
                return table
        return None

    def _read_one(self, path: Path, name: str, sha256: str):
        import pyarrow as pa

        copy = self.folder / name
        try:
            # NONBLOCK: a FIFO at the name would otherwise hang the cycle on open.
            descriptor = os.open(copy, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                                 | os.O_CLOEXEC)
        except FileNotFoundError:  # removed since the folder was listed
            return None
        except OSError as error:
            return self._unusable(path, copy, "a symbolic link" if error.errno == errno.ELOOP
                                  else _why(error))
        try:
            with os.fdopen(descriptor, "rb") as handle:
                problem = _untrusted(os.fstat(handle.fileno()), "file")
                if problem is not None:
                    return self._unusable(path, copy, problem)
                os.set_blocking(handle.fileno(), True)
                payload = handle.read()
            if f"{zlib.crc32(payload):08x}" != _COPY_NAME.match(name)["crc"]:
                return self._unusable(path, copy, "changed on disk: its bytes no longer have "
                                                  "the CRC-32 in its name")
            reader = pa.ipc.open_file(pa.py_buffer(payload))
            metadata = reader.schema.metadata or {}
            if metadata.get(b"columnar.format") != _FORMAT \
                    or metadata.get(b"columnar.source_sha256") != sha256.encode() \
                    or metadata.get(b"columnar.pyarrow") != pa.__version__.encode():
                return None  # made by another version: written again, quietly
            table = reader.read_all()
            table.validate(full=True)  # what pyarrow would otherwise trust, and crash on
            # The table exactly as the CSV parses: without the copy's own metadata.
            return table.replace_schema_metadata(None)
        except (pa.ArrowException, OSError) as error:
            return self._unusable(path, copy, _why(error))

    def _unusable(self, path: Path, copy: Path, problem: str) -> None:
        log.warning("the columnar copy of %s cannot be used (%s: %s); read from its CSV and "
                    "written again", shown_name(path), copy.name, problem)
        return None

    def _say_once(self, what: str, message: str, *args) -> None:
        if (self.folder, what) not in _said:
            _said.add((self.folder, what))
            log.warning(message, *args)


class _NotWritten(Exception):
    """A copy is not written: why, in words."""


def _untrusted(status: os.stat_result, kind: str) -> str | None:
    """Why a copy folder or file with this (l)stat is not to be trusted, or None."""
    if stat.S_ISLNK(status.st_mode):
        return "a symbolic link"
    if kind == "folder" and not stat.S_ISDIR(status.st_mode):
        return "not a folder"
    if kind == "file" and not stat.S_ISREG(status.st_mode):
        return "not a plain file"
    if status.st_uid != os.geteuid():
        return f"owned by user id {status.st_uid}, not by this program's ({os.geteuid()})"
    if status.st_mode & 0o022:
        return f"writable by other users (mode {stat.filemode(status.st_mode)})"
    return None


def _write_new(path: Path, payload) -> None:
    """Write `payload` to `path` through a partial file of this process's own, removed if the
    write fails, so a failed copy never keeps the disk full."""
    partial = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    descriptor = open_own_file(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


def _why(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, NeedsAttention):
        return error.cause
    return str(error)


def copy_archived(used_dir: Path, arrivals: Iterable[dict]) -> None:
    """Write the copies of files just archived (`arrivals`: their ledger entries).

    Each CSV is parsed again, a few files a night, so the copy is of the bytes that are in
    history now. Called after the batch is archived: nothing here may fail the cycle.
    """
    import hashlib

    import pyarrow as pa

    history = ColumnarHistory(used_dir, writable=True)
    for arrival in arrivals:
        if history.copies is None or history.folder in _unwritable:
            break
        try:
            with open(used_dir / arrival["name"], "rb") as handle:
                payload = handle.read()
            # Bytes that changed after the cycle read them get no copy from here; the next
            # retraining reads that file from its CSV.
            if hashlib.sha256(payload).hexdigest() == arrival["sha256"]:
                history.write(arrival["sha256"], parsed_csv(payload), arrival["name"])
        except (OSError, pa.ArrowInvalid, UnicodeDecodeError) as error:
            log.warning("no columnar copy of %s was made (%s); the next retraining reads "
                        "its CSV", arrival["name"], _why(error))
