"""The columnar copy of history: read instead of the CSV while the file is unchanged, never
trusted once it is not, and never a reason for a cycle to fail."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retraining.columnar import COPY_FOLDER, ColumnarHistory
from retraining.datafiles import list_data_files, load_file
from retraining.errors import DataError, NeedsAttention
from retraining.ledger import history_content
from tests.conftest import PROJECT_DIR, cycle, machine_files, write_csvs

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
    assert sorted(os.listdir(folder / COPY_FOLDER)) == sorted(
        f"{loaded.sha256}.arrow" for loaded in from_csv)
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
    assert os.listdir(folder / COPY_FOLDER) == [f"{again.sha256}.arrow"]


def test_a_damaged_copy_is_read_from_the_csv_and_written_again(tmp_path, caplog):
    folder = tmp_path / "used_gts"
    [path] = _history(folder, {"h.csv": GOOD})
    _, [original] = _read(folder)
    copy = folder / COPY_FOLDER / f"{original.sha256}.arrow"
    copy.write_bytes(copy.read_bytes()[:100])

    with caplog.at_level(logging.WARNING, logger="retraining.columnar"):
        history, [loaded] = _read(folder)

    assert history.from_csv == 1 and history.written == 1
    assert "the columnar copy of h.csv cannot be read" in caplog.text
    _same_file(loaded, original)
    assert _read(folder)[0].from_copy == 1


def test_a_copy_made_by_another_pyarrow_or_of_other_bytes_is_not_used(tmp_path):
    folder = tmp_path / "used_gts"
    [path] = _history(folder, {"h.csv": GOOD})
    _, [original] = _read(folder)
    copy = folder / COPY_FOLDER / f"{original.sha256}.arrow"
    table = pa.ipc.open_file(copy.read_bytes()).read_all()
    wrong_rows = table.slice(0, 1)  # what a copy from other bytes would hold
    for metadata in ({**table.schema.metadata, b"columnar.pyarrow": b"0.0.1"},
                     {**table.schema.metadata, b"columnar.source_sha256": b"0" * 64}):
        with pa.ipc.new_file(copy, wrong_rows.schema.with_metadata(metadata)) as writer:
            writer.write_table(wrong_rows.replace_schema_metadata(metadata))

        history, [loaded] = _read(folder)

        assert history.from_copy == 0 and loaded.rows == original.rows


def test_a_link_planted_at_the_copy_folder_is_refused_and_nothing_written_through_it(
        tmp_path):
    folder, elsewhere = tmp_path / "used_gts", tmp_path / "elsewhere"
    _history(folder, {"h.csv": GOOD})
    elsewhere.mkdir()
    (folder / COPY_FOLDER).symlink_to(elsewhere)

    for writable in (True, False):
        with pytest.raises(NeedsAttention, match="is a symbolic link"):
            ColumnarHistory(folder, writable=writable)

    assert os.listdir(elsewhere) == []


def test_copies_of_files_gone_from_history_are_removed_and_nothing_else(tmp_path):
    folder = tmp_path / "used_gts"
    paths = _history(folder, {"a.csv": GOOD, "b.csv": GOOD.replace(b",ok\n", b",OK\n")})
    _read(folder)
    (folder / COPY_FOLDER / "notes.txt").write_text("a person's own file")
    (folder / COPY_FOLDER / f"{'e' * 64}.arrow.part").write_bytes(b"cut by a kill")
    paths[1].unlink()  # quarantined, or removed by hand

    history, [kept] = _read(folder)
    removed = history.prune(list_data_files(folder))

    assert removed == 2
    assert sorted(os.listdir(folder / COPY_FOLDER)) == [f"{kept.sha256}.arrow", "notes.txt"]


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
    history, _ = _read(folder)  # with room again: written, and the partial one cleared
    history.prune(list_data_files(folder))
    assert sorted(os.listdir(folder / COPY_FOLDER)) == sorted(
        f"{entry['sha256']}.arrow" for entry in history.entries.values())


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
