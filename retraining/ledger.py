"""The history ledger: which content `used_gts/` holds, and in what order it arrived.

One JSON line per archived file in `used_gts/.history_ledger.jsonl`, appended when a batch is
archived. It keeps the arrival order of history apart from file names and modification times,
which copying a folder changes, and lets a re-delivered file be recognised by its content
without reading history again. Standard library only: the trigger step reads nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterable, Mapping

from retraining.statefiles import own_file

log = logging.getLogger(__name__)

LEDGER_NAME = ".history_ledger.jsonl"
# What tells the file an entry describes from one changed since: ctime cannot be set back by
# `touch -r`, `cp -p` or `rsync -a`, and a copied folder has other inodes.
_SAME_FILE = ("size", "mtime_ns", "ino", "ctime_ns")


def stat_fields(status: os.stat_result) -> dict[str, int]:
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "ino": status.st_ino,
            "ctime_ns": status.st_ctime_ns}


def read_ledger(used_dir: Path) -> list[dict]:
    """Every entry, oldest first."""
    path = used_dir / LEDGER_NAME
    if not os.path.lexists(path):
        return []
    with own_file(path, os.O_RDONLY, "r") as handle:
        lines = handle.read().splitlines()
    entries = []
    for number, line in enumerate(lines, start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):  # a cut last line is an append a kill cut short
                log.warning("line %d of %s is not JSON; it is ignored", number, path)
    return entries


def record_batch(used_dir: Path, archive_id: str, arrivals: Iterable[Mapping]) -> None:
    """Append the arrivals of one archive; repeating it appends only what is missing.

    `arrivals` are dicts with name, arrived_as, sha256 and `stat_fields` of the file in
    `used_dir`. The batch shares one sequence number, greater than any before: files that
    arrived together are equally recent.
    """
    entries = read_ledger(used_dir)
    mine = [entry for entry in entries if entry.get("archive_id") == archive_id]
    sequence = mine[0]["sequence"] if mine else max(
        (entry.get("sequence", 0) for entry in entries), default=0) + 1
    recorded = {entry["name"] for entry in mine}
    archived_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _append(used_dir, [{"sequence": sequence, "archive_id": archive_id,
                        "archived_at": archived_at, **arrival}
                       for arrival in arrivals if arrival["name"] not in recorded])


def history_content(used_dir: Path, history: Iterable[Path], *,
                    record_unknown: bool) -> dict[str, str]:
    """Content hash -> name of every file in `history` (the data files of `used_dir`).

    The content hash (datafiles.content_sha256) leaves out line endings, a BOM and trailing
    newlines, so history saved again by another tool is still recognised. It comes from the
    ledger when the file is still the one its entry describes. Any other file (history placed
    by hand, copied, changed since, or entered before the ledger kept this hash) is hashed
    and, with `record_unknown`, entered in the ledger, so it is hashed once, not every night.
    It keeps the arrival of an entry with the same content, else it counts as older than any
    batch.
    """
    from retraining.datafiles import content_sha256

    entries = read_ledger(used_dir)
    by_name = {entry["name"]: entry for entry in entries}
    arrival_of = {}
    for entry in entries:
        arrival_of[entry["sha256"]] = max(arrival_of.get(entry["sha256"], 0),
                                          entry.get("sequence", 0))
    content, unknown = {}, []
    for path in history:
        status = os.stat(path)
        entry = by_name.get(path.name)
        same_file = entry is not None and all(entry.get(key) == value
                                              for key, value in stat_fields(status).items())
        if same_file and entry.get("content_sha256"):
            content[entry["content_sha256"]] = path.name
            continue
        payload = path.read_bytes()
        sha256, rows_sha256 = hashlib.sha256(payload).hexdigest(), content_sha256(payload)
        content[rows_sha256] = path.name
        known = entry if same_file else {}
        unknown.append({"sequence": known.get("sequence", arrival_of.get(sha256, 0)),
                        "archive_id": known.get("archive_id"), "name": path.name,
                        "arrived_as": known.get("arrived_as"), "sha256": sha256,
                        "content_sha256": rows_sha256, **stat_fields(status)})
    if unknown and record_unknown:
        _append(used_dir, unknown)
    return content


def arrival_order(used_dir: Path, history: Iterable[Path]) -> list[list[str]]:
    """The names in `history` grouped by arrival, oldest group first.

    Files the ledger does not know (history that was there before it) form the oldest group.
    """
    sequence_of = {entry["name"]: entry.get("sequence", 0) for entry in read_ledger(used_dir)}
    groups: dict[int, list[str]] = {}
    for path in history:
        groups.setdefault(sequence_of.get(path.name, 0), []).append(path.name)
    return [sorted(groups[sequence]) for sequence in sorted(groups)]


def _append(used_dir: Path, entries: list[dict]) -> None:
    if not entries:
        return
    path = used_dir / LEDGER_NAME
    with own_file(path, os.O_RDWR | os.O_CREAT, "r+b") as ledger:
        # An append cut short by a kill left a partial line: drop it, or the next line would
        # be glued to it and lost as well. Its entries are appended again below.
        size = ledger.seek(0, os.SEEK_END)
        if size:
            ledger.seek(max(0, size - 65536))
            tail = ledger.read()
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                if cut < 0 and len(tail) < size:  # a cut line longer than the tail read
                    ledger.seek(0)
                    tail = ledger.read()
                    cut = tail.rfind(b"\n")
                ledger.truncate(size - len(tail) + cut + 1)
        ledger.seek(0, os.SEEK_END)
        ledger.write(("\n".join(json.dumps(entry, sort_keys=True) for entry in entries)
                      + "\n").encode())
        ledger.flush()
        os.fsync(ledger.fileno())
