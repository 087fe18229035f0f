"""Benchmark: how much memory the project's `train_model` takes above the frame it is given.

    /path/to/python bench/fit_memory.py [--rows 1000000] [--threads 1]

Makes `--rows` seeded rows of the benchmarks' data (bench/run_bench.py's readings: 18
numbers and 2 categories), then, each in a process of its own so that no freed memory is
reused, measures the resident memory a fit adds at its peak above what the process held
just before it (sampled every 20 ms):

- train_model: train_classification_model.train_model on the frame, as the cycle calls it;
- trees:       its HistGradientBoostingClassifier alone, fitted on the matrix the
               preprocessing already made (that matrix is held before the fit starts).

The difference is what the preprocessing in front of the trees costs. It tells which part of
a cycle's peak is the domain's fit, which no cycle can avoid, at any number of rows: bytes a
row times rows. Results go to bench/results/fit-memory-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

SIDES = ("train_model", "trees")


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def added_at_peak(work) -> float:
    """MB of resident memory `work()` adds at its peak above what was held before it."""
    before, peak, done = resident_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_mb())
            done.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], resident_mb()) - before


def one_side(side: str, rows: int) -> dict:
    import numpy as np

    from bench.run_bench import readings
    from train_classification_model import train_model

    frame = readings(rows, 0.0, np.random.default_rng(0))
    labels = frame.pop("label")
    if side == "train_model":
        added = added_at_peak(lambda: train_model(frame, labels, random_state=0))
        given = frame.memory_usage(deep=True).sum() / 2**20
    else:
        pipeline = train_model(frame.head(50_000), labels.head(50_000), random_state=0)
        matrix = pipeline[:-1].transform(frame)
        del frame
        trees = pipeline[-1]
        added = added_at_peak(lambda: trees.fit(matrix, labels))
        given = matrix.nbytes / 2**20
    return {"given_mb": round(given, 1), "added_mb": round(added, 1),
            "added_bytes_per_row": round(added * 2**20 / rows)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", default="1",
                        help="OMP_NUM_THREADS for the fits ('' leaves it unset)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one process's side
    args = parser.parse_args(argv)
    if args.side:
        print(json.dumps(one_side(args.side, args.rows)))
        return 0

    from bench.run_bench import child_env, machine, write_results

    results = {"rows": args.rows, "threads": args.threads or "unset", "machine": machine()}
    for side in SIDES:
        done = subprocess.run([sys.executable, __file__, "--side", side, "--rows", str(args.rows)],
                              env=child_env(args.threads), capture_output=True, text=True,
                              cwd=PROJECT_DIR, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{side} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        results[side] = json.loads(done.stdout)
        print(f"{side}: given {results[side]['given_mb']:,.0f} MB, adds "
              f"{results[side]['added_mb']:,.0f} MB at its peak "
              f"({results[side]['added_bytes_per_row']} bytes a row)", flush=True)
    out = write_results("fit-memory-", results)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
