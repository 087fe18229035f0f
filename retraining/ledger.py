"""The history ledger: which content `used_gts/` holds, and in what order it arrived.

One JSON line per archived file in `used_gts/.history_ledger.jsonl`, appended when a batch is
archived. It keeps the arrival order of history apart from file names and modification times,
which copying a folder changes, and lets a re-delivered file be recognised by its content
without reading history again. Standard library only: the trigger step reads nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterable, Mapping

LEDGER_NAME = ".history_ledger.jsonl"


def read_ledger(used_dir: Path) -> list[dict]:
    """Every entry, oldest first. A last line cut short by a crash is ignored."""
    path = used_dir / LEDGER_NAME
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # only an append killed halfway leaves a partial line
    return entries


def last_batch(used_dir: Path) -> str | None:
    entries = read_ledger(used_dir)
    return entries[-1].get("archive_id") if entries else None


def record_arrivals(used_dir: Path, archive_id: str, arrivals: Iterable[Mapping],
                    sequence: int | None = None) -> None:
    """Append one batch: `arrivals` are dicts with name, arrived_as, sha256, size, mtime_ns.

    The batch shares one sequence number, by default greater than any before: files that
    arrived together are equally recent. Sequence 0 is history older than the ledger.
    """
    if sequence is None:
        sequence = max((entry.get("sequence", 0) for entry in read_ledger(used_dir)),
                       default=0) + 1
    archived_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = [json.dumps({"sequence": sequence, "archive_id": archive_id,
                         "archived_at": archived_at, **arrival}, sort_keys=True)
             for arrival in arrivals]
    if not lines:
        return
    with open(used_dir / LEDGER_NAME, "a", encoding="utf-8") as ledger:
        ledger.write("\n".join(lines) + "\n")
        ledger.flush()
        os.fsync(ledger.fileno())


def consumed_content(used_dir: Path, history: Iterable[Path],
                     record_unknown: bool = True) -> dict[str, str]:
    """sha256 -> name of every file in `history` (the data files of `used_dir`).

    The hash comes from the ledger when the file still has the size and modification time it
    was recorded with. Any other file (history placed by hand, or changed since) is hashed,
    and with `record_unknown` entered in the ledger as older than any archived batch, so that
    it is hashed once, not every night.
    """
    recorded = {entry["name"]: entry for entry in read_ledger(used_dir)}
    content, unknown = {}, []
    for path in history:
        status = os.stat(path)
        entry = recorded.get(path.name)
        if entry and (entry.get("size"), entry.get("mtime_ns")) == (status.st_size,
                                                                    status.st_mtime_ns):
            content[entry["sha256"]] = path.name
            continue
        sha256 = _sha256(path)
        content[sha256] = path.name
        unknown.append({"name": path.name, "arrived_as": None, "sha256": sha256,
                        "size": status.st_size, "mtime_ns": status.st_mtime_ns})
    if unknown and record_unknown:
        record_arrivals(used_dir, "history the ledger did not know", unknown, sequence=0)
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
