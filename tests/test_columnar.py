"""The columnar copy of history: read instead of the CSV while the file is unchanged, never
trusted once it is not, and never a reason for a cycle to fail."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retraining.columnar import COPY_FOLDER, ColumnarHistory, copy_reserve
from retraining.datafiles import list_data_files, load_file
from retraining.errors import DataError
from retraining.ledger import history_content
from tests.conftest import (
    PROJECT_DIR,
    Workspace,
    cycle,
    machine_files,
    new_workspace,
    register_pickle,
    snapshot,
    train_on_folder,
    write_csvs,
)

GOOD = machine_files(1, drift=0.0, seed=7, rows=40)[0].to_csv(index=False).encode()


def _keep(frame, path):
    return frame


def _history(folder, files: dict[str, bytes]):
    """`files` written into `folder` and entered in its ledger, as a cycle enters them."""
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    history_content(folder, list_data_files(folder), record_unknown=True)
    return list_data_files(folder)


def _read(folder, known_columns=(), writable=True):
    history = ColumnarHistory(folder, writable=writable)
    loaded = [history.load(path, "label", _keep, known_columns=known_columns)
              for path in list_data_files(folder)]
    return history, loaded


def _copies(folder) -> list[str]:
    return sorted(os.listdir(folder / COPY_FOLDER))


def _copy_of(folder, sha256: str) -> Path:
    [copy] = (folder / COPY_FOLDER).glob(f"{sha256}-*.arrow")
    return copy


def _put_copy(folder, sha256: str, payload: bytes) -> Path:
    """`payload` as the copy of the file with `sha256`, under the name its own CRC-32 gives
    (what a copy changed by a bug rather than by the disk would look like)."""
    _copy_of(folder, sha256).unlink()
    copy = folder / COPY_FOLDER / f"{sha256}-{zlib.crc32(payload):08x}.arrow"
    copy.write_bytes(payload)
    return copy


def _give_away(path: Path) -> None:
    """`path` made another user's (nobody's), as only root can: cron often runs as root."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(path, 65534, 65534)


def _same_file(read_from_copy, read_from_csv) -> None:
    pd.testing.assert_frame_equal(read_from_copy.features, read_from_csv.features)
    pd.testing.assert_series_equal(read_from_copy.labels, read_from_csv.labels)
    for fact in ("path", "sha256", "content_sha256", "identity", "dropped_rows", "header",
                 "label_read_kind", "file_rows", "renamed_columns"):
        assert getattr(read_from_copy, fact) == getattr(read_from_csv, fact), fact


def _outcome(path, known_columns, load):
    try:
        return load(path, "label", _keep, known_columns=known_columns), None
    except DataError as error:
        return None, error.cause


_CELLS = st.sampled_from([b"", b"TRUE", b"false", b"1", b"2.5", b"NaN", b"x", b"1e400",
                          b"\xe9t\xe9", b'"a,b"'])


@st.composite
def history_files(draw) -> bytes:
    """A small CSV a person could have put into history: any header, any cells."""
    header = draw(st.lists(st.sampled_from([b"label", b" label", b"ground+AF8-truth", b"a",
                                            b"b", b"c", b"a"]), min_size=1, max_size=4))
    rows = draw(st.lists(st.lists(_CELLS, min_size=len(header), max_size=len(header)),
                         max_size=6))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    bom = draw(st.sampled_from([b"", b"\xef\xbb\xbf"]))
    return bom + ending.join([b",".join(header), *(b",".join(row) for row in rows)]) + ending


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=history_files(), known=st.sampled_from([(), ("a",), ("label", "b")]))
def test_a_file_reads_the_same_from_its_copy_as_from_its_csv(tmp_path_factory, content, known):
    folder = tmp_path_factory.mktemp("used_gts")
    [path] = _history(folder, {"history.csv": content})
    from_csv, csv_problem = _outcome(path, known, load_file)

    first = ColumnarHistory(folder, writable=True)
    through_copy, first_problem = _outcome(path, known, first.load)
    second = ColumnarHistory(folder, writable=True)
    again, second_problem = _outcome(path, known, second.load)

    assert first_problem == second_problem == csv_problem
    if csv_problem is None:
        assert (first.from_csv, first.written, second.from_copy) == (1, 1, 1)
        _same_file(through_copy, from_csv)
        _same_file(again, from_csv)


def test_history_reads_from_copies_the_second_time_and_finds_the_same_rows(tmp_path):
    folder = tmp_path / "used_gts"
    frames = machine_files(3, drift=0.0, seed=8, rows=50)
    _history(folder, {f"h{i}.csv": frame.to_csv(index=False).encode()
                      for i, frame in enumerate(frames)})

    first, from_csv = _read(folder)
    second, from_copies = _read(folder)

    assert (first.from_csv, first.written, second.from_copy, second.from_csv) == (3, 3, 3, 0)
    assert [name.split("-")[0] for name in _copies(folder)] == sorted(
        loaded.sha256 for loaded in from_csv)
    for copy, csv in zip(from_copies, from_csv, strict=True):
        _same_file(copy, csv)


def test_a_file_changed_in_place_is_read_from_its_csv_not_from_its_old_copy(tmp_path):
    folder = tmp_path / "used_gts"
    [path] = _history(folder, {"h.csv": GOOD})
    _read(folder)
    old_status = os.stat(path)
    # Same length, same mtime (touch -r), other labels: only the ctime tells.
    changed = GOOD.replace(b",worn\n", b",WORN\n").replace(b",ok\n", b",OK\n")
    assert changed != GOOD and len(changed) == len(GOOD)
    path.write_bytes(changed)
    os.utime(path, ns=(old_status.st_atime_ns, old_status.st_mtime_ns))

    stale_ledger, [loaded] = _read(folder)

    assert stale_ledger.from_copy == 0
    assert set(loaded.labels) <= {"WORN", "OK"}
    # Once the ledger knows the new content, its copy is written and read.
    history_content(folder, [path], record_unknown=True)
    _read(folder)
    fresh, [again] = _read(folder)
    assert fresh.from_copy == 1 and set(again.labels) <= {"WORN", "OK"}
    fresh.prune([path])
    assert _copies(folder) == [_copy_of(folder, again.sha256).name]


def test_copies_read_ahead_are_checked_as_any_and_the_reader_ends_with_the_reading(
        tmp_path, caplog, monkeypatch):
    """As read_history reads them: the coming copies read, and their CRC-32 checked, by a
    thread ahead of the file loaded, never more than the byte budget ahead (here less than
    one file's), and nothing left reading once the reading ends."""
    import threading

    import retraining.columnar as columnar

    monkeypatch.setattr(columnar, "_READ_AHEAD_BYTES", 1)
    folder = tmp_path / "used_gts"
    frames = machine_files(30, drift=0.0, seed=8, rows=50)
    paths = _history(folder, {f"h{i:02d}.csv": frame.to_csv(index=False).encode()
                              for i, frame in enumerate(frames)})
    _, from_csv = _read(folder)  # writes the copies
    damaged = _copy_of(folder, from_csv[17].sha256)
    intact = damaged.read_bytes()
    damaged.write_bytes(intact[:200] + bytes([intact[200] ^ 0x10]) + intact[201:])

    history = ColumnarHistory(folder, writable=False)
    loaded = []
    with caplog.at_level(logging.WARNING, logger="retraining.columnar"), \
            history.reading_ahead(paths):
        for number, path in enumerate(paths):
            loaded.append(history.load(path, "label", _keep))
            if number == 5:
                # Five files ahead: not read yet, since the budget holds one copy at a time.
                _copy_of(folder, from_csv[10].sha256).unlink()

    assert (history.from_copy, history.from_csv) == (28, 2)
    assert "the columnar copy of h17.csv cannot be used" in caplog.text and "CRC-32" in caplog.text
    for ahead, csv in zip(loaded, from_csv, strict=True):
        _same_file(ahead, csv)
    assert not [thread for thread in threading.enumerate()
                if thread.name.startswith("columnar-read-ahead")]


def test_a_damaged_copy_is_read_from_the_csv_and_written_again(tmp_path, caplog):
    folder = tmp_path / "used_gts"
    [path] = _history(folder, {"h.csv": GOOD})
    _, [original] = _read(folder)
    copy = _copy_of(folder, original.sha256)
    intact = copy.read_bytes()
    # Cut short, and one byte changed anywhere (a value, an offset into the text, the footer).
    damaged = [intact[:100], *(intact[:at] + bytes([intact[at] ^ 0x10]) + intact[at + 1:]
                              for at in range(0, len(intact), max(1, len(intact) // 40)))]
    for content in damaged:
        copy.write_bytes(content)
        caplog.clear()

        with caplog.at_level(logging.WARNING, logger="retraining.columnar"):
            history, [loaded] = _read(folder)

        assert history.from_csv == 1 and history.written == 1
        assert "the columnar copy of h.csv cannot be used" in caplog.text
        assert "CRC-32" in caplog.text
        _same_file(loaded, original)
        assert copy.read_bytes() == intact and _read(folder)[0].from_copy == 1


_BAD_OFFSETS = """
import json, logging, sys, zlib
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import pyarrow as pa
from retraining.columnar import COPY_FOLDER, ColumnarHistory, copy_reserve
from retraining.datafiles import list_data_files
logging.basicConfig(level=logging.WARNING)
folder = Path(sys.argv[1])
[copy] = (folder / COPY_FOLDER).glob("*.arrow")
source = pa.ipc.open_file(copy.read_bytes())
table = source.read_all()
sink = pa.BufferOutputStream()
with pa.ipc.new_file(sink, source.schema) as writer:
    writer.write_table(table.combine_chunks())
payload = sink.getvalue().to_pybytes()
offsets = table.column("label").combine_chunks().buffers()[1].to_pybytes()
# The label's offsets into its text, one far past the end (the last kept, so that a reader's
# quick checks pass): pyarrow reads what they point at unless the table is validated.
wild = offsets[:4] + (1 << 30).to_bytes(4, "little") + offsets[8:]
assert payload.count(offsets) == 1
payload = payload.replace(offsets, wild)
copy.unlink()
(copy.parent / f"{copy.name.split('-')[0]}-{zlib.crc32(payload):08x}.arrow").write_bytes(payload)
history = ColumnarHistory(folder, writable=True)
[loaded] = [history.load(path, "label", lambda frame, path: frame)
            for path in list_data_files(folder)]
print(json.dumps({"from_copy": history.from_copy, "labels": sorted(set(loaded.labels))}))
"""


def test_a_copy_with_wild_offsets_is_refused_not_a_crash(tmp_path):
    folder = tmp_path / "used_gts"
    _history(folder, {"h.csv": GOOD})
    _, [original] = _read(folder)

    done = subprocess.run([sys.executable, "-c", _BAD_OFFSETS, str(folder), str(PROJECT_DIR)],
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr  # a segfault is -11
    assert json.loads(done.stdout) == {"from_copy": 0,
                                       "labels": sorted(set(original.labels))}
    assert "the columnar copy of h.csv cannot be used" in done.stderr


def test_prepare_file_may_change_the_frame_it_is_given_in_place(tmp_path):
    folder = tmp_path / "used_gts"
    [path] = _history(folder, {"h.csv": GOOD})

    def clip_in_place(frame, path):
        column = frame.columns[0]
        frame.loc[frame[column] > frame[column].median(), column] = -1.0
        frame.iloc[0, 0] = 0.0
        return frame

    from_csv = load_file(path, "label", clip_in_place)
    history = ColumnarHistory(folder, writable=True)
    first = history.load(path, "label", clip_in_place)
    again = ColumnarHistory(folder, writable=True)
    second = again.load(path, "label", clip_in_place)

    assert (history.from_csv, again.from_copy) == (1, 1)
    assert (from_csv.features.iloc[:, 0] == -1.0).any()
    _same_file(first, from_csv)
    _same_file(second, from_csv)


def test_a_copy_made_by_another_pyarrow_or_of_other_bytes_is_not_used(tmp_path):
    folder = tmp_path / "used_gts"
    _history(folder, {"h.csv": GOOD})
    _, [original] = _read(folder)
    table = pa.ipc.open_file(_copy_of(folder, original.sha256).read_bytes()).read_all()
    wrong_rows = table.slice(0, 1)  # what a copy from other bytes would hold
    for metadata in ({**table.schema.metadata, b"columnar.pyarrow": b"0.0.1"},
                     {**table.schema.metadata, b"columnar.source_sha256": b"0" * 64}):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, wrong_rows.schema.with_metadata(metadata)) as writer:
            writer.write_table(wrong_rows.replace_schema_metadata(metadata))
        _put_copy(folder, original.sha256, sink.getvalue().to_pybytes())

        history, [loaded] = _read(folder)

        assert history.from_copy == 0 and loaded.rows == original.rows


@pytest.mark.parametrize("planted", ["link", "file", "open folder", "another's folder"])
def test_a_copy_folder_that_is_not_ours_turns_the_copy_off_not_the_reading(tmp_path, caplog,
                                                                            planted):
    folder, elsewhere = tmp_path / "used_gts", tmp_path / "elsewhere"
    [path] = _history(folder, {"h.csv": GOOD})
    copies = folder / COPY_FOLDER
    elsewhere.mkdir()
    if planted == "link":
        copies.symlink_to(elsewhere)
    elif planted == "file":
        copies.write_text("a person's notes")
    else:
        copies.mkdir()
        if planted == "open folder":
            copies.chmod(0o777)
        else:
            _give_away(copies)

    with caplog.at_level(logging.WARNING, logger="retraining.columnar"):
        for writable in (True, False):
            history, [loaded] = _read(folder, writable=writable)
            assert history.from_csv == 1 and history.written == 0 and loaded.rows == 40
            assert history.prune([path]) == 0

    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and "history's columnar copy is off" in warnings[0], warnings
    assert os.listdir(elsewhere) == []
    if planted == "file":
        assert copies.read_text() == "a person's notes"
    elif planted != "link":
        assert os.listdir(copies) == []


def test_what_is_not_a_copy_of_ours_at_a_copy_name_is_not_read(tmp_path, caplog):
    """A FIFO (which would hang an open without O_NONBLOCK), a folder, another user's file and
    one that others may write: each is read from the CSV, with a warning, and nothing hangs."""
    folder = tmp_path / "used_gts"
    paths = _history(folder, {f"h{i}.csv": GOOD.replace(b",ok\n", f",ok{i}\n".encode())
                              for i in range(4)})
    _, originals = _read(folder)
    names = [_copy_of(folder, original.sha256) for original in originals]
    for name in names[:2]:
        name.unlink()
    os.mkfifo(names[0])
    names[1].mkdir()
    _give_away(names[2])
    names[3].chmod(0o666)

    with caplog.at_level(logging.WARNING, logger="retraining.columnar"):
        history, loaded = _read(folder)

    assert history.from_copy == 0 and history.from_csv == 4
    for again, original in zip(loaded, originals, strict=True):
        _same_file(again, original)
    assert "not a plain file" in caplog.text and "owned by user id 65534" in caplog.text
    assert "writable by other users" in caplog.text
    assert "no columnar copy of h1.csv was made (Is a directory)" in caplog.text
    # Copies of ours replaced the FIFO, the other's file and the open one; the folder stays.
    history.prune(paths)
    assert _read(folder)[0].from_copy == 3 and names[1].is_dir()


def test_copies_of_files_gone_from_history_are_removed_and_nothing_else(tmp_path):
    folder = tmp_path / "used_gts"
    paths = _history(folder, {"a.csv": GOOD, "b.csv": GOOD.replace(b",ok\n", b",OK\n")})
    _read(folder)
    copies = folder / COPY_FOLDER
    (copies / "notes.txt").write_text("a person's own file")
    (copies / f"{'e' * 64}.arrow").write_bytes(b"a copy of the first format")
    left = copies / f"{'e' * 64}-0badc0de.arrow.4242-0123abcd.part"
    writing = copies / f"{'d' * 64}-0badc0de.arrow.4343-4567cdef.part"
    left.write_bytes(b"cut by a kill, hours ago")
    writing.write_bytes(b"being written by another process now")
    two_hours_ago = time.time() - 7200
    os.utime(left, (two_hours_ago, two_hours_ago))
    paths[1].unlink()  # quarantined, or removed by hand

    history, [kept] = _read(folder)
    removed = history.prune(list_data_files(folder))

    assert removed == 3
    assert _copies(folder) == sorted([_copy_of(folder, kept.sha256).name, "notes.txt",
                                      writing.name])


def test_only_the_cycle_removes_copies(tmp_path):
    """register_first_model.py may read history while a cycle runs: it removes nothing."""
    import argparse

    from retraining.config import build_settings
    from retraining.domain import load_domain
    from retraining.screening import read_history

    folder = tmp_path / "used_gts"
    paths = _history(folder, {"a.csv": GOOD, "b.csv": GOOD.replace(b",ok\n", b",OK\n")})
    _read(folder)
    before = _copies(folder)
    paths[1].unlink()
    settings = build_settings(PROJECT_DIR, argparse.Namespace(used_dir=str(folder)), {})
    domain = load_domain(settings.domain_file)

    read_history(settings, domain, folder)
    assert _copies(folder) == before
    read_history(settings, domain, folder, prune_copies=True)
    assert len(_copies(folder)) == 1


_FULL_DISK = """
import json, logging, resource, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from retraining.columnar import ColumnarHistory
from retraining.datafiles import list_data_files
logging.basicConfig(level=logging.WARNING)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
history = ColumnarHistory(Path(sys.argv[1]), writable=True)
rows = [history.load(path, "label", lambda frame, path: frame).rows
        for path in list_data_files(Path(sys.argv[1]))]
print(json.dumps({"rows": rows, "from_csv": history.from_csv, "written": history.written}))
"""


def test_a_full_disk_costs_the_copies_not_the_history(tmp_path):
    folder = tmp_path / "used_gts"
    frames = machine_files(3, drift=0.0, seed=9, rows=200)
    _history(folder, {f"h{i}.csv": frame.to_csv(index=False).encode()
                      for i, frame in enumerate(frames)})

    done = subprocess.run([sys.executable, "-c", _FULL_DISK, str(folder), str(PROJECT_DIR)],
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"rows": [200, 200, 200], "from_csv": 3, "written": 0}
    warnings = [line for line in done.stderr.splitlines() if "could not be written" in line]
    assert len(warnings) == 1 and "File too large" in warnings[0], done.stderr
    assert _copies(folder) == []  # the partial copy that failed did not stay to fill the disk
    history, _ = _read(folder)  # with room again: written
    assert [name.split("-")[0] for name in _copies(folder)] == sorted(
        entry["sha256"] for entry in history.entries.values())


def test_a_retraining_reads_history_and_the_archived_batch_from_copies(production, capsys,
                                                                       caplog):
    write_csvs(production.new_dir, "drifted", machine_files(10, drift=1.0, seed=21))
    code, summary = cycle(production, capsys, "--error-threshold", "0")
    assert code == 0 and summary["outcome"] in ("promoted", "rejected"), summary
    copies = set(os.listdir(production.used_dir / COPY_FOLDER))
    assert len(copies) == 18  # the 8 files of history, read and copied; the 10 archived

    write_csvs(production.new_dir, "later", machine_files(10, drift=1.0, seed=22))
    with caplog.at_level(logging.INFO, logger="retraining.screening"):
        code, summary = cycle(production, capsys, "--error-threshold", "0")

    assert code == 0 and summary["outcome"] in ("promoted", "rejected"), summary
    assert "history: 18 files read, 18 from the columnar copy, 0 from CSV" in caplog.text


def test_no_columnar_history_and_a_dry_run_write_no_copy(production, capsys):
    copies = production.used_dir / COPY_FOLDER
    write_csvs(production.new_dir, "drifted", machine_files(10, drift=1.0, seed=21))
    code, summary = cycle(production, capsys, "--error-threshold", "0", "--no-columnar-history")
    assert code == 0 and summary["archived_files"], summary
    assert not copies.exists()

    # The ledger knows all of history now: only the dry run keeps the copies from being made.
    write_csvs(production.new_dir, "later", machine_files(10, drift=1.0, seed=22))
    code, summary = cycle(production, capsys, "--error-threshold", "0", "--dry-run")
    assert code == 0 and summary["outcome"] in ("promoted", "rejected"), summary
    assert not copies.exists()

    code, summary = cycle(production, capsys, "--error-threshold", "0")
    assert code == 0 and summary["outcome"] in ("promoted", "rejected"), summary
    assert len(os.listdir(copies)) == 28


def mount_tmpfs(folder: Path, options: str) -> None:
    """A filesystem of its own at `folder` (tmpfs with `options`), unmounted by the caller."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"{options},mode=0755", "tmpfs",
                           str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"a filesystem of its own cannot be mounted here: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """150 MB of their own, for data folders that fill up."""
    mount = tmp_path / "small_disk"
    mount_tmpfs(mount, "size=150m,nr_inodes=1200")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def _free(folder) -> int:
    disk = os.statvfs(folder)
    return disk.f_bavail * disk.f_frsize


def _cycle_on(disk: Path, tmp_path: Path, capsys) -> tuple[Workspace, dict]:
    """Data folders on `disk`, the store beside: history of 8 files, production trained on
    it, 10 new files; returns the workspace and every data file's bytes."""
    space = new_workspace(disk, store_root=tmp_path)
    write_csvs(space.used_dir, "history", machine_files(8, drift=0.0, seed=1))
    register_pickle(space, train_on_folder(space.used_dir), capsys)
    write_csvs(space.new_dir, "drifted", machine_files(10, drift=1.0, seed=21))
    return space, {**snapshot(space.used_dir), **snapshot(space.new_dir)}


def _fully_archived(space: Workspace, data: dict, code: int, summary: dict) -> None:
    assert code == 0 and summary["outcome"] in ("promoted", "rejected"), summary
    assert len(summary["archived_files"]) == 10
    assert snapshot(space.used_dir) == data


@pytest.mark.parametrize("short_of", ["bytes", "inodes"])
def test_copies_never_take_the_last_of_the_disk_nor_fail_the_cycle(small_disk, tmp_path, capsys,
                                                                   caplog, short_of):
    space, data = _cycle_on(small_disk, tmp_path, capsys)
    one_file = max(len(content) for content in data.values())
    reserve_bytes, reserve_inodes = copy_reserve(os.statvfs(small_disk))
    # Room for about three copies above the reserve copies keep for everything else.
    if short_of == "bytes":
        (small_disk / "filler").write_bytes(
            b"\0" * (_free(small_disk) - reserve_bytes - 4 * one_file))
    else:
        fillers = small_disk / "fillers"
        fillers.mkdir()
        # The locks, the ledger and the copies' folder take four of them first.
        for index in range(os.statvfs(small_disk).f_favail - reserve_inodes - 8):
            (fillers / str(index)).touch()

    with caplog.at_level(logging.WARNING, logger="retraining.columnar"):
        code, summary = cycle(space, capsys, "--error-threshold", "0")

    _fully_archived(space, data, code, summary)
    copies = _copies(space.used_dir)
    assert 0 < len(copies) < 18 and all(name.endswith(".arrow") for name in copies), copies
    warnings = [record.getMessage() for record in caplog.records
                if "could not be written" in record.getMessage()]
    said = {"bytes": "MB free on its disk", "inodes": "inodes free on its disk"}[short_of]
    assert len(warnings) == 1 and said in warnings[0], caplog.text
    left = os.statvfs(small_disk)
    # What the ledger and the archive took of the reserve, no more.
    assert _free(small_disk) >= reserve_bytes - 1_000_000
    assert left.f_favail >= reserve_inodes - 10


@pytest.fixture
def read_only_copies(production):
    """history's copies made, then their folder made read-only (a disk remounted ro)."""
    write_csvs(production.new_dir, "drifted", machine_files(10, drift=1.0, seed=21))
    copies = production.used_dir / COPY_FOLDER
    copies.mkdir()
    done = subprocess.run(["mount", "--bind", str(copies), str(copies)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"a folder cannot be bind-mounted here: {done.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(copies)], check=True)
        yield production
    finally:
        subprocess.run(["umount", "--lazy", str(copies)], check=True)


def test_a_read_only_copy_folder_costs_the_copies_not_the_cycle(read_only_copies, capsys,
                                                                caplog):
    with caplog.at_level(logging.WARNING, logger="retraining.columnar"):
        code, summary = cycle(read_only_copies, capsys, "--error-threshold", "0")

    assert code == 0 and len(summary["archived_files"]) == 10, summary
    assert "Read-only file system" in caplog.text


def test_folders_at_copy_names_cost_those_copies_not_the_cycle(production, capsys, caplog):
    copies = production.used_dir / COPY_FOLDER
    history_000 = hashlib.sha256((production.used_dir / "history_000.csv").read_bytes())
    stray = [copies / f"{'0' * 64}-00000000.arrow",  # of no file in history: pruned
             copies / f"{history_000.hexdigest()}-deadbeef.arrow"]  # replaced when written
    for folder in stray:
        folder.mkdir(parents=True)
    write_csvs(production.new_dir, "drifted", machine_files(10, drift=1.0, seed=21))

    code, summary = cycle(production, capsys, "--error-threshold", "0")

    assert code == 0 and len(summary["archived_files"]) == 10, summary
    assert all(folder.is_dir() for folder in stray)
    assert len(_copies(production.used_dir)) == 18 + len(stray)


def test_a_copy_folder_swapped_for_a_link_while_history_is_read_is_not_followed(tmp_path):
    folder, other = tmp_path / "used_gts", tmp_path / "other_project" / "used_gts"
    other.parent.mkdir()
    _history(other, {"theirs.csv": GOOD})
    _read(other)
    theirs = _copies(other)
    paths = _history(folder, {"a.csv": GOOD.replace(b",ok\n", b",OK\n")})
    _read(folder)
    history = ColumnarHistory(folder, writable=True)

    # A co-user with write access to used_gts/ swaps the folder for a link to another's.
    (folder / COPY_FOLDER).rename(folder / ".columnar.moved")
    (folder / COPY_FOLDER).symlink_to(other / COPY_FOLDER)
    [loaded] = [history.load(path, "label", _keep) for path in paths]
    history.prune([])  # as if every file had left history

    assert _copies(other) == theirs and loaded.rows == 40
    assert history.from_copy == 1  # from the folder it opened, wherever it is now


_SWAPPED_FOR = """
import json, logging, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from retraining.columnar import copy_archived
from retraining.ledger import read_ledger
logging.basicConfig(level=logging.WARNING)
folder = Path(sys.argv[1])
arrivals = read_ledger(folder)
for entry in arrivals:  # what a co-user put at the names just archived
    path = folder / entry["name"]
    path.unlink()
    if entry["name"] == "fifo.csv":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
copy_archived(folder, arrivals)
print(json.dumps(sorted(os.listdir(folder / ".columnar"))))
"""


def test_what_replaces_an_archived_file_is_not_copied_nor_waited_on(tmp_path):
    folder = tmp_path / "used_gts"
    _history(folder, {"fifo.csv": GOOD, "device.csv": GOOD.replace(b",ok\n", b",OK\n")})
    (folder / COPY_FOLDER).mkdir()

    done = subprocess.run([sys.executable, "-c", _SWAPPED_FOR, str(folder), str(PROJECT_DIR)],
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    assert done.stderr.count("no columnar copy of") == 2, done.stderr


def test_copies_are_for_their_owner_alone(tmp_path):
    folder = tmp_path / "used_gts"
    [path] = _history(folder, {"h.csv": GOOD})
    path.chmod(0o600)  # rows not everyone may read
    history_content(folder, [path], record_unknown=True)

    _read(folder)

    assert stat.S_IMODE((folder / COPY_FOLDER).stat().st_mode) == 0o700
    assert [stat.S_IMODE((folder / COPY_FOLDER / name).stat().st_mode)
            for name in _copies(folder)] == [0o600]


def test_a_ledger_that_cannot_be_trusted_turns_the_copy_off_not_the_reading(tmp_path, caplog):
    from retraining.ledger import LEDGER_NAME

    folder = tmp_path / "used_gts"
    paths = _history(folder, {"a.csv": GOOD, "b.csv": GOOD.replace(b",ok\n", b",OK\n")})
    ledger = folder / LEDGER_NAME
    good = ledger.read_text()
    # Hand edits: not an object, no name, a sha256 that is not one, a byte not UTF-8.
    ledger.write_bytes(good.encode() + b'[]\n{"sha256": "x"}\n'
                       + b'{"name": "b.csv", "sha256": ["a"], "size": 1}\n')
    history, loaded = _read(folder)
    assert history.from_csv == 2 and [f.rows for f in loaded] == [40, 40]
    # What a hand edit made unusable is passed over: b.csv's earlier entry still describes it.
    assert _read(folder)[0].from_copy == 2

    ledger.write_bytes(good.encode() + b'{"name": "\xe9"}\n')
    os.link(ledger, tmp_path / "backup.jsonl")  # cp -al of the folder, say
    with caplog.at_level(logging.WARNING, logger="retraining.columnar"):
        history, loaded = _read(folder)

    assert history.copies is None and history.from_csv == 2
    assert "history's columnar copy is off: the ledger cannot be read" in caplog.text
    assert [f.rows for f in loaded] == [40, 40] and history.prune(paths) == 0


def test_a_cycle_with_a_link_at_the_copy_folder_runs_and_writes_nothing_through_it(
        production, capsys, caplog, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (production.used_dir / COPY_FOLDER).symlink_to(elsewhere)
    write_csvs(production.new_dir, "drifted", machine_files(10, drift=1.0, seed=21))

    with caplog.at_level(logging.WARNING, logger="retraining.columnar"):
        code, summary = cycle(production, capsys, "--error-threshold", "0")

    assert code == 0 and summary["outcome"] in ("promoted", "rejected"), summary
    assert len(summary["archived_files"]) == 10 and os.listdir(elsewhere) == []
    assert "history's columnar copy is off" in caplog.text and "a symbolic link" in caplog.text


def test_a_file_read_from_its_copy_keeps_none_of_the_copys_bytes_alive(tmp_path):
    # Every column of a copy is a slice of one buffer of the file's bytes; pandas keeps text
    # as Arrow arrays without copying, so a file's labels would keep all of them alive: on
    # 20M rows of history, 7.9 GB where the CSVs' read took 4.6.
    folder = tmp_path / "used_gts"
    frame = machine_files(1, drift=0.0, seed=7, rows=400)[0]
    frame["site"] = ["north", "south"] * 200  # a text feature as well
    _history(folder, {"h.csv": frame.to_csv(index=False).encode()})
    _read(folder)

    history, [loaded] = _read(folder)

    assert history.from_copy == 1
    for series in (loaded.labels, loaded.features["site"]):
        arrow = pa.array(series.array)
        chunks = arrow.chunks if isinstance(arrow, pa.ChunkedArray) else [arrow]
        assert all(buffer is None or buffer.parent is None
                   for chunk in chunks for buffer in chunk.buffers()), series.name
