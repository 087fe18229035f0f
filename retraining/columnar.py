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
The folder is opened once and everything in it is done through that descriptor, so a folder
swapped for a link while history is read is never followed. Copies are readable by their
owner only (a copy must not show rows the CSV's permissions hide).
A copy only saves time, so nothing about it ever fails a cycle: a copy that cannot be
written (a full disk, a folder that is not ours) is one warning and a slower read, and no
copy takes the last of the disk or of its inodes (a reserve stays free for the store and the
archive).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import logging
import os
import re
import secrets
import stat
import time
import weakref
import zlib
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator, Sequence

from retraining.datafiles import (
    FileFacts,
    LoadedFile,
    load_file,
    loaded_from_table,
    parsed_csv,
    shown_name,
)
from retraining.errors import DataError, RetrainingError
from retraining.ledger import read_ledger, stat_fields

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
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A partial copy older than this was left by a kill: writing one takes milliseconds.
_ABANDONED_AFTER_S = 3600
# What copies leave free on their disk (copy_reserve): the store, its artifacts, the ledger
# and the archive, often on the same disk, need the room more than a faster read does.
_RESERVE_SHARE = 0.05
_RESERVE_BYTES = (100_000_000, 1 << 30)  # 5% of the disk, within these bounds
_RESERVE_INODES = (1_000, 10_000)
# A copy holds at most a few times its CSV's bytes (an int64 for a one-digit cell, 4 bytes of
# offsets for a one-letter string); anything far larger at a copy's name is not read at all.
_LARGEST_COPY = (16, 1 << 20)  # times the CSV's size, plus

# How far ahead of the file read its copies are read (about 0.8 MB each at 5,000 rows of
# 20 features): enough to keep the disk and the checksum busy while one file is prepared;
# and at most this many bytes of CSV behind the copies waiting (one file alone, if larger).
_READ_AHEAD = 16
_READ_AHEAD_BYTES = 32 << 20

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# NONBLOCK: a FIFO at a name would otherwise hang the cycle on open.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

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
        self.from_copy = self.from_csv = self.written = 0
        self._descriptor: int | None = None
        # Source sha256 -> names of its copies; None when the copy is off.
        self.copies: dict[str, list[str]] | None = None
        self.entries = self._ledger_entries()
        if self.entries is not None:
            self._open_folder(create=False)
        self._upcoming: list[Path] = []
        self._position = self._ahead = 0
        # Copy name -> the size of its CSV, and its bytes being read (their CRC-32 checked)
        # by _reader; the copy of the file read last, whose read is let go at the next.
        self._fetching: dict[str, tuple[int, concurrent.futures.Future]] = {}
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._current: str | None = None

    @contextlib.contextmanager
    def reading_ahead(self, paths: Sequence[Path]) -> Iterator[None]:
        """For the block, `load` is asked for these files, in this order. A thread reads each
        one's copy, and checks its CRC-32, a few files ahead (_READ_AHEAD), while this one
        is prepared and checked: the disk and zlib (which lets go of the GIL) work beside
        pandas, instead of each file waiting for its read and its checksum in turn.

        When the block ends, the reads not begun are dropped, the thread ends, and no copy's
        bytes are kept; a block cut short (an error, a signal) does not wait for the one
        read in progress.
        """
        self._stop_reading()
        self._upcoming, self._position, self._ahead = list(paths), 0, 0
        finished = False
        try:
            yield
            finished = True
        finally:
            self._stop_reading(wait=finished)

    def _stop_reading(self, wait: bool = True) -> None:
        if self._reader is not None:
            self._reader.shutdown(wait=wait, cancel_futures=True)
            self._reader = None
        self._fetching.clear()
        self._upcoming, self._current = [], None

    def load(self, path: Path, label_column: str, prepare_file: Callable,
             known_columns: Collection[str] = ()) -> LoadedFile:
        """The file, as datafiles.load_file reads it; from its copy where one matches."""
        self._read_ahead(path)
        entry, status = self._entry(path)
        table = self._read_copy(path, entry) if entry is not None else None
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

    def copied_table(self, path: Path):
        """The table `path` parses to, read from its copy if one still matches; else None."""
        self._read_ahead(path)
        entry, _ = self._entry(path)
        return self._read_copy(path, entry) if entry is not None else None

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
            if self._descriptor is None:
                self._open_folder(create=True)
            if self._descriptor is None:  # refused, or gone again since it was made
                return
            self._keep_reserve(payload.size)
            self._write_new(name, payload)
        except (IsADirectoryError, FileExistsError) as error:
            # Something of another's at this one name (a folder): this copy only.
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
                self._remove(other)
        self.copies[sha256] = [name]
        self.written += 1

    def prune(self, history: Iterable[Path]) -> int:
        """Remove the copies of files no longer in history (quarantined, removed by hand),
        partial copies a kill left and copies of an earlier format; return how many. Only
        names this module makes, and only plain files, are touched. For the cycle, under its
        lock on history: a partial copy is removed only once it is old enough to be a
        kill's."""
        if not self.writable or self._descriptor is None:
            return 0
        keep = {self.entries[path.name]["sha256"] for path in history
                if path.name in self.entries}
        removed = 0
        now = time.time()
        try:
            names = os.listdir(self._descriptor)
        except OSError as error:
            self._say_once("prune", "copies of files no longer in history were not removed "
                           "from %s (%s)", self.folder, _why(error))
            return 0
        for name in names:
            copy = _COPY_NAME.match(name)
            if copy is not None:
                stale = copy["source"] not in keep
            elif _PARTIAL_NAME.match(name):
                status = self._stat(name)
                stale = status is not None and now - status.st_mtime > _ABANDONED_AFTER_S
            else:
                stale = _FORMAT_1_NAME.match(name) is not None
            if stale and self._remove(name):
                removed += 1
        return removed

    def summary(self) -> str:
        return (f"{self.from_copy:,} from the columnar copy, {self.from_csv:,} from CSV"
                + (f", {self.written:,} copies written" if self.written else ""))

    def _ledger_entries(self) -> dict[str, dict] | None:
        """The newest entry of each name, which describes the file of that name now if any
        does; entries a hand edit left unusable describe nothing. None: no ledger to go by."""
        try:
            entries = read_ledger(self.used_dir)
        except (RetrainingError, OSError, UnicodeDecodeError) as error:
            self._say_once("off", "history's columnar copy is off: the ledger cannot be read "
                           "(%s); history is read from its CSV files", _why(error))
            return None
        return {entry["name"]: entry for entry in entries
                if isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"])
                and isinstance(entry.get("content_sha256"), str) and entry["content_sha256"]
                and isinstance(entry.get("size"), int)}

    def _entry(self, path: Path):
        """The ledger's entry for `path` when it still describes the file, and its stat."""
        status = os.stat(path)
        entry = (self.entries or {}).get(path.name)
        if entry is None or any(entry.get(key) != value
                                for key, value in stat_fields(status).items()):
            return None, status
        return entry, status

    def _open_folder(self, create: bool) -> None:
        """Open the folder (made if `create`) and list its copies into `copies`; None there
        turns the copy off."""
        descriptor = None
        try:
            if create:
                try:
                    os.mkdir(self.folder, 0o700)
                except FileExistsError:
                    pass
            try:
                descriptor = os.open(self.folder, _FOLDER_FLAGS)
            except FileNotFoundError:  # made by the first copy written
                self.copies = {}
                return
            problem = _untrusted(os.fstat(descriptor), "folder")
            names = os.listdir(descriptor) if problem is None else []
        except OSError as error:
            problem = _why(error)
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                # Told apart after the fact, for the warning only: nothing was opened.
                link = os.path.islink(self.folder)
                problem = "a symbolic link" if link else "not a folder"
        if problem is not None:
            if descriptor is not None:
                os.close(descriptor)
            self._say_once("off", "history's columnar copy is off: %s is %s; history is read "
                           "from its CSV files (remove %s, and the next cycle makes the copy "
                           "again)", self.folder, problem, self.folder)
            self.copies = None
            return
        self._descriptor = descriptor
        weakref.finalize(self, os.close, descriptor)
        copies: dict[str, list[str]] = {}
        for name in names:
            match = _COPY_NAME.match(name)
            if match is not None:
                copies.setdefault(match["source"], []).append(name)
        self.copies = copies

    def _keep_reserve(self, size: int) -> None:
        disk = os.fstatvfs(self._descriptor)
        free, inodes = copy_reserve(disk)
        if disk.f_bavail * disk.f_frsize - size < free:
            raise _NotWritten(f"{disk.f_bavail * disk.f_frsize / 1e6:,.1f} MB free on its "
                              f"disk, and copies keep {free / 1e6:,.1f} MB free")
        if disk.f_files and disk.f_favail - 1 < inodes:
            raise _NotWritten(f"{disk.f_favail:,} inodes free on its disk, and copies keep "
                              f"{inodes:,} free")

    def _write_new(self, name: str, payload) -> None:
        """Write `payload` as `name` through a partial file of this process's own, removed if
        the write fails, so a failed copy never keeps the disk full."""
        partial = f"{name}.{os.getpid()}-{secrets.token_hex(4)}.part"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=self._descriptor)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, name, src_dir_fd=self._descriptor,
                       dst_dir_fd=self._descriptor)
        except BaseException:
            self._remove(partial)
            raise

    def _stat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self._descriptor, follow_symlinks=False)
        except OSError:
            return None

    def _remove(self, name: str) -> bool:
        """Remove one of the copies' own names; a failure is said once, never raised."""
        try:
            os.unlink(name, dir_fd=self._descriptor)
        except (FileNotFoundError, IsADirectoryError):
            # Gone already (another process), or a folder at the name: not ours to remove.
            return False
        except OSError as error:
            self._say_once("remove", "a columnar copy in %s could not be removed (%s)",
                           self.folder, _why(error))
            return False
        return True

    def _read_ahead(self, path: Path) -> None:
        upcoming = self._upcoming
        if self._position >= len(upcoming) or upcoming[self._position] != path:
            return  # not the order reading_ahead() gave (a file read again): nothing to start
        self._position += 1
        # Read already, or not wanted (its file changed since the ledger saw it): its bytes go.
        self._fetching.pop(self._current, None)
        self._current, _ = self._first_copy(path)
        pending = sum(size for size, _ in self._fetching.values())
        while self._ahead < min(self._position + _READ_AHEAD, len(upcoming)):
            name, size = self._first_copy(upcoming[self._ahead])
            if name is not None and name not in self._fetching:
                if pending and pending + size > _READ_AHEAD_BYTES:
                    break  # read once those before it are taken
                if not self._start_reading():
                    return
                self._ask_disk(name)
                self._fetching[name] = (size, self._reader.submit(self._fetch, name, size))
                pending += size
            self._ahead += 1

    def _first_copy(self, path: Path) -> tuple[str | None, int]:
        """The name of the copy the ledger's entry for `path` would be read from first, and
        the size of the CSV it describes; (None, 0) where there is none."""
        entry = (self.entries or {}).get(path.name)
        names = (self.copies or {}).get(entry["sha256"], ()) if entry else ()
        return (names[0], entry["size"]) if names else (None, 0)

    def _start_reading(self) -> bool:
        if self._reader is None:
            try:
                reader = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="columnar-read-ahead")
                reader.submit(int).result()  # a thread, now: one may not be left to start
            except RuntimeError as error:  # at the machine's or the user's thread limit
                self._say_once("reader", "history's columnar copies are read without reading "
                               "ahead: no thread could be started (%s)", error)
                self._upcoming = []
                return False
            self._reader = reader
        return True

    def _ask_disk(self, name: str) -> None:
        """Have the kernel read the copy now (posix_fadvise WILLNEED): many at once keep a
        cold disk busier than the one read _reader makes at a time."""
        if not hasattr(os, "posix_fadvise"):
            return
        try:
            descriptor = os.open(name, _READ_FLAGS, dir_fd=self._descriptor)
        except OSError:
            return  # a hint only: reading the copy meets the same fault and says it
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # a file system without read-ahead: the read itself still works
        finally:
            os.close(descriptor)

    def _fetch(self, name: str, source_size: int):
        """The copy's bytes, read through the folder's descriptor, or why it cannot be used:
        (payload, None), (None, problem), or (None, None) for a copy gone since listed."""
        try:
            descriptor = os.open(name, _READ_FLAGS, dir_fd=self._descriptor)
        except FileNotFoundError:  # removed since the folder was listed
            return None, None
        except OSError as error:
            return None, "a symbolic link" if error.errno == errno.ELOOP else _why(error)
        try:
            with os.fdopen(descriptor, "rb") as handle:
                status = os.fstat(handle.fileno())
                problem = _untrusted(status, "file")
                times, plus = _LARGEST_COPY
                if problem is None and status.st_size > times * source_size + plus:
                    problem = (f"{status.st_size:,} bytes, more than a copy of a file of "
                               f"{source_size:,} bytes can be")
                if problem is not None:
                    return None, problem
                os.set_blocking(handle.fileno(), True)
                payload = handle.read()
        except OSError as error:
            return None, _why(error)
        if f"{zlib.crc32(payload):08x}" != _COPY_NAME.match(name)["crc"]:
            return None, "changed on disk: its bytes no longer have the CRC-32 in its name"
        return payload, None

    def _read_copy(self, path: Path, entry: dict):
        for name in (self.copies or {}).get(entry["sha256"], ()):
            table = self._read_one(path, name, entry)
            if table is not None:
                return table
        return None

    def _read_one(self, path: Path, name: str, entry: dict):
        import pyarrow as pa

        fetching = self._fetching.pop(name, None)
        payload, problem = (fetching[1].result() if fetching is not None
                            else self._fetch(name, entry["size"]))
        if problem is not None:
            return self._unusable(path, name, problem)
        if payload is None:
            return None
        try:
            reader = pa.ipc.open_file(pa.py_buffer(payload))
            metadata = reader.schema.metadata or {}
            if metadata.get(b"columnar.format") != _FORMAT \
                    or metadata.get(b"columnar.source_sha256") != entry["sha256"].encode() \
                    or metadata.get(b"columnar.pyarrow") != pa.__version__.encode():
                return None  # made by another version: written again, quietly
            table = reader.read_all()
            table.validate(full=True)  # what pyarrow would otherwise trust, and crash on
            # The table exactly as the CSV parses: without the copy's own metadata.
            return _text_copied(table.replace_schema_metadata(None))
        except (pa.ArrowException, OSError) as error:
            return self._unusable(path, name, _why(error))

    def _unusable(self, path: Path, name: str, problem: str) -> None:
        log.warning("the columnar copy of %s cannot be used (%s: %s); read from its CSV and "
                    "written again", shown_name(path), name, problem)
        return None

    def _say_once(self, what: str, message: str, *args) -> None:
        if (self.folder, what) not in _said:
            _said.add((self.folder, what))
            log.warning(message, *args)


def copy_reserve(disk: os.statvfs_result) -> tuple[int, int]:
    """Bytes and inodes that copies leave free on a disk (statvfs): 5% of it, at least 100 MB
    and 1,000 inodes, at most 1 GiB and 10,000 inodes. A disk with no fixed count of inodes
    (f_files 0) is not held to one."""
    def bounded(share: float, bounds: tuple[int, int]) -> int:
        return min(bounds[1], max(bounds[0], int(share)))

    return (bounded(disk.f_blocks * disk.f_frsize * _RESERVE_SHARE, _RESERVE_BYTES),
            bounded(disk.f_files * _RESERVE_SHARE, _RESERVE_INODES))


class _NotWritten(Exception):
    """A copy is not written: why, in words."""


def _text_copied(table):
    """`table` with its text columns in buffers of their own.

    Read from a copy, every column is a slice of the one buffer holding the file's bytes,
    and pandas keeps text columns as Arrow arrays without copying them: a file's labels (or
    any text feature) would keep all of its bytes alive, twice the memory of the CSV read on
    years of history (7.9 GB against 4.6 at 20M rows).
    """
    import pyarrow as pa

    for index, column in enumerate(table.columns):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            owned = pa.chunked_array([pa.concat_arrays(column.chunks)] if column.num_chunks
                                     else [], type=column.type)
            table = table.set_column(index, table.schema.field(index), owned)
    return table


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


def _why(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, RetrainingError):
        return error.cause
    return str(error)


def copy_archived(used_dir: Path, arrivals: Iterable[dict]) -> None:
    """Write the copies of files just archived (`arrivals`: their ledger entries).

    Each CSV is parsed again, a few files a night, so the copy is of the bytes that are in
    history now. Called after the batch is archived: nothing here may fail the cycle, nor
    wait on what someone put at a file's name since (a FIFO, a link to a device).
    """
    import hashlib

    import pyarrow as pa

    history = ColumnarHistory(used_dir, writable=True)
    for arrival in arrivals:
        if history.copies is None or history.folder in _unwritable:
            break
        try:
            descriptor = os.open(used_dir / arrival["name"], _READ_FLAGS)
            with os.fdopen(descriptor, "rb") as handle:
                status = os.fstat(handle.fileno())
                if not stat.S_ISREG(status.st_mode) or status.st_size != arrival["size"]:
                    log.warning("no columnar copy of %s was made: it is not the file just "
                                "archived; the next retraining reads it from its CSV",
                                arrival["name"])
                    continue
                os.set_blocking(handle.fileno(), True)
                payload = handle.read()
            # Bytes that changed after the cycle read them get no copy from here; the next
            # retraining reads that file from its CSV.
            if hashlib.sha256(payload).hexdigest() == arrival["sha256"]:
                history.write(arrival["sha256"], parsed_csv(payload), arrival["name"])
        except (OSError, pa.ArrowInvalid, UnicodeDecodeError) as error:
            log.warning("no columnar copy of %s was made (%s); the next retraining reads "
                        "its CSV", arrival["name"], _why(error))
