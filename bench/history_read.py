"""Benchmark: reading years of history, from its CSVs and from its columnar copy.

    /path/to/python bench/history_read.py [--rows 5000000] [--repeats 3] [--work-dir DIR]

Generates seeded history as bench/run_bench.py makes it (20 features, 5,000 rows a file, so
5M rows are 1,000 files), enters it in the ledger and writes its columnar copy once. Then,
`--repeats` times, interleaved, each in a process of its own (imports not timed):

- csv:       the retraining's history step (screening.read_history: every file read, its
             header repaired, prepared by the domain, checked) with --no-columnar-history;
- copy:      the same step reading the columnar copy (retraining/columnar.py);
- parse:     only reading each CSV's bytes and parsing them with pyarrow: the part the copy
             replaces, with no pandas, no domain, no checks;
- copy_read: only reading each copy into an Arrow table, as the retraining does (its
             CRC-32 checked, the table validated).

each with the page cache warm, and cold (every file of history dropped from the cache with
posix_fadvise before the process starts). Beside them, this machine's sequential read rate:
a 1 GiB file read cold, and warm. Rates are in MB of CSV per second. Results go to
bench/results/history-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

ROWS_PER_FILE = 5_000
SIDES = ("csv", "copy", "parse", "copy_read")


def generate(used_dir: Path, rows: int, seed: int = 0) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from bench.run_bench import readings

    generator = np.random.default_rng(seed)
    used_dir.mkdir(parents=True, exist_ok=True)
    for index in range(max(1, rows // ROWS_PER_FILE)):
        path = used_dir / f"history_{index:05d}.csv"
        if path.exists():
            continue
        frame = readings(ROWS_PER_FILE, 0.0, generator)
        pcsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), path,
                       pcsv.WriteOptions(quoting_style="none"))


def settings_for(used_dir: Path, columnar: bool):
    from retraining.config import build_settings

    work = used_dir.parent
    args = argparse.Namespace(used_dir=str(used_dir), new_dir=str(work / "new_gts"),
                              quarantine_dir=str(work / "quarantine"),
                              columnar_history=columnar)
    return build_settings(PROJECT_DIR, args, {})


def child(side: str, used_dir: Path) -> dict:
    """One measured side, in this process; returns its seconds and what it read."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from retraining.columnar import ColumnarHistory
    from retraining.datafiles import list_data_files
    from retraining.domain import load_domain
    from retraining.screening import read_history

    settings = settings_for(used_dir, columnar=side != "csv")
    domain = load_domain(settings.domain_file)
    paths = list_data_files(used_dir)
    started = time.perf_counter()
    if side in ("csv", "copy"):
        history = read_history(settings, domain, used_dir)
        rows = sum(loaded.rows for loaded in history.files)
    elif side == "parse":
        rows = sum(pcsv.read_csv(pa.BufferReader(path.read_bytes())).num_rows
                   for path in paths)
    else:  # as the retraining reads a copy: its CRC-32 checked, the table validated
        copies = ColumnarHistory(used_dir, writable=False)
        with copies.reading_ahead(paths):  # as read_history reads them
            rows = sum(copies.copied_table(path).num_rows for path in paths)
    return {"seconds": time.perf_counter() - started, "rows": rows}


def drop_from_cache(folder: Path) -> None:
    """Every file under `folder` out of the page cache (its pages written first)."""
    for root, _, names in os.walk(folder):
        for name in names:
            drop_file_from_cache(Path(root, name))


def drop_file_from_cache(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def sequential_read_rate(folder: Path, size: int = 1 << 30) -> dict:
    """MB/s reading a file of `size` bytes once dropped from the page cache, and once in it."""
    path = folder / "sequential.bin"
    chunk = os.urandom(1 << 24)
    with open(path, "wb") as handle:
        for _ in range(size // len(chunk)):
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    rates = {}
    for state in ("cold", "warm"):
        if state == "cold":
            drop_file_from_cache(path)
        started = time.perf_counter()
        with open(path, "rb", buffering=0) as handle:
            while handle.read(1 << 23):
                pass
        rates[state] = size / 1e6 / (time.perf_counter() - started)
    path.unlink()
    return rates


def measure(side: str, used_dir: Path, cold: bool) -> dict:
    if cold:
        drop_from_cache(used_dir)
    done = subprocess.run([sys.executable, __file__, "--child", side, "--work-dir",
                           str(used_dir.parent)], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{side} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, help="keep the generated history here")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.work_dir / "used_gts")))
        return 0

    from bench.run_bench import machine, write_results
    from retraining.datafiles import list_data_files
    from retraining.ledger import history_content

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="history-bench-"))
    used_dir = work / "used_gts"
    for folder in ("new_gts", "quarantine"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    generate(used_dir, args.rows)
    paths = list_data_files(used_dir)
    history_content(used_dir, paths, record_unknown=True)
    csv_mb = sum(path.stat().st_size for path in paths) / 1e6
    print(f"history: {len(paths):,} files, {csv_mb:,.0f} MB of CSV "
          f"({time.perf_counter() - started:.0f} s to make)", flush=True)
    written = measure("copy", used_dir, cold=False)  # the first read writes the copies
    copy_mb = sum(entry.stat().st_size for entry in (used_dir / ".columnar").iterdir()) / 1e6
    print(f"columnar copy: {copy_mb:,.0f} MB, written by the first read in "
          f"{written['seconds']:.1f} s", flush=True)
    disk = sequential_read_rate(work)
    print(f"sequential read: {disk['cold']:,.0f} MB/s cold, {disk['warm']:,.0f} MB/s warm",
          flush=True)

    runs = {(side, state): [] for state in ("warm", "cold") for side in SIDES}
    for repeat in range(args.repeats):
        for state in ("warm", "cold"):
            for side in SIDES:
                result = measure(side, used_dir, cold=state == "cold")
                runs[side, state].append(result["seconds"])
                print(f"  run {repeat + 1} {state:4} {side:9} {result['seconds']:7.2f} s "
                      f"({result['rows']:,} rows)", flush=True)

    table = []
    for state in ("warm", "cold"):
        csv_seconds = statistics.median(runs["csv", state])
        parse_seconds = statistics.median(runs["parse", state])
        for side in SIDES:
            seconds = statistics.median(runs[side, state])
            table.append({"state": state, "side": side, "seconds": round(seconds, 3),
                          "csv_mb_per_s": round(csv_mb / seconds, 1),
                          "csv_over_this": round(csv_seconds / seconds, 2),
                          "parse_over_this": round(parse_seconds / seconds, 2),
                          "runs": [round(value, 3) for value in runs[side, state]]})
    print(f"\n{args.rows:,} rows, {len(paths):,} files, {csv_mb:,.0f} MB of CSV, copy "
          f"{copy_mb:,.0f} MB; medians of {args.repeats}")
    print("| cache | side | s | MB of CSV/s | csv side / this | parse / this |")
    print("|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['state']} | {row['side']} | {row['seconds']:.2f} | "
              f"{row['csv_mb_per_s']:,.0f} | {row['csv_over_this']:.2f} | "
              f"{row['parse_over_this']:.2f} |")
    print(f"sequential read of this machine: {disk['cold']:,.0f} MB/s cold, "
          f"{disk['warm']:,.0f} MB/s warm")
    results = {"rows": args.rows, "files": len(paths), "csv_mb": csv_mb, "copy_mb": copy_mb,
               "sequential_read_mb_per_s": disk, "table": table, "machine": machine()}
    out = write_results("history-", results)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
