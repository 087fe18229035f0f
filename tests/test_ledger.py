"""The history ledger: arrival order and content of history, kept through kills and copies."""

from __future__ import annotations

import os
import shutil

from retraining.archive import archive_files
from retraining.datafiles import list_data_files, load_file
from retraining.ledger import LEDGER_NAME, arrival_order, history_content, read_ledger


def _archive(new, used, names, text):
    for name in names:
        (new / name).write_text(f"f,label\n{text}{name},y\n")
    loaded = [load_file(new / name, "label", lambda frame, path: frame) for name in names]
    return archive_files(loaded, used)


def _folders(tmp_path):
    new, used = tmp_path / "new", tmp_path / "used"
    new.mkdir(), used.mkdir()
    return new, used


def test_batches_keep_their_arrival_order_whatever_their_names(tmp_path):
    new, used = _folders(tmp_path)
    _archive(new, used, ["z_first.csv", "y_first.csv"], "1")
    _archive(new, used, ["a_second.csv"], "2")

    order = arrival_order(used, list_data_files(used))

    assert order == [["y_first.csv", "z_first.csv"], ["a_second.csv"]]


def test_arrival_order_survives_copying_the_folder(tmp_path):
    new, used = _folders(tmp_path)
    _archive(new, used, ["b.csv"], "1")
    _archive(new, used, ["a.csv"], "2")
    copy = tmp_path / "copy"
    shutil.copytree(used, copy)  # new inodes: every entry must be checked again
    (copy / "a.csv").rename(copy / "renamed.csv")

    history_content(copy, list_data_files(copy), record_unknown=True)

    assert arrival_order(copy, list_data_files(copy)) == [["b.csv"], ["renamed.csv"]]


def test_history_edited_in_place_with_its_old_time_is_hashed_again(tmp_path):
    new, used = _folders(tmp_path)
    _archive(new, used, ["a.csv"], "1")
    path = used / "a.csv"
    status = os.stat(path)
    original = path.read_bytes()
    path.write_bytes(original.replace(b"1a", b"9a"))  # same size
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))  # as rsync -a would

    content = history_content(used, list_data_files(used), record_unknown=False)

    from retraining.datafiles import content_sha256
    assert content_sha256(path.read_bytes()) in content
    assert content_sha256(original) not in content


def test_an_append_cut_short_is_repaired_not_glued_to_the_next(tmp_path):
    new, used = _folders(tmp_path)
    _archive(new, used, ["a.csv"], "1")
    with open(used / LEDGER_NAME, "a") as ledger:
        ledger.write('{"archive_id": "cut sh')  # a kill in the middle of an append

    _archive(new, used, ["b.csv"], "2")

    assert [entry["name"] for entry in read_ledger(used)] == ["a.csv", "b.csv"]
    assert arrival_order(used, list_data_files(used)) == [["a.csv"], ["b.csv"]]
