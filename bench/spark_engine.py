"""Benchmark: the Spark engine beside the default engine, on the same data and the same cycle.

    /path/to/python bench/spark_engine.py --work-dir DIR [--sizes 5000000,20000000]
                                          [--spark-master local[*]] [--engines default,spark]

For each size it generates seeded data as bench/run_bench.py does (20 features, 200 files:
160 of history, 40 new and drifted), registers a first model, and runs
pipeline_orchestrator.py once per engine against the same restored workspace, with
--training-windows all (one fit) and --error-threshold 0 (so that it retrains): the default
engine (train_model, scikit-learn, in the cycle's process) and the Spark engine
(train_spark_model, Spark MLlib on --spark-master; local mode by default, the JVM on this
machine). Reported per engine: wall time, the seconds of each phase, the peak RSS of the
cycle's Python process (os.wait4) and the peak RSS of its whole process tree (the Python
driver and, in local mode, Spark's JVM, sampled from /proc every quarter second), the outcome
and the challenger's held-out error. Where two sizes are measured, the cross-over: the rows
at which the lines wall = a + b * rows of the two engines meet. Results go to
bench/results/spark-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 1e6 if hasattr(os, "sysconf") else 4096 / 1e6


def _tree_rss_mb(root: int) -> float:
    """RSS of `root` and all its descendants now, from /proc."""
    parents, rss = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            pages = int(Path(entry.path, "statm").read_text().split()[1])
        except OSError:  # the process ended between the listing and the read
            continue
        # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        rss[int(entry.name)] = pages * PAGE_MB
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    return sum(rss.get(pid, 0.0) for pid in tree)


def measure_tree(command: list[str], env: dict) -> dict:
    """Run one process: wall time, its own peak RSS (os.wait4), its tree's sampled peak."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=PROJECT_DIR)
        peak, done = [0.0], threading.Event()

        def sample():
            while not done.wait(0.25):
                peak[0] = max(peak[0], _tree_rss_mb(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(command[:2])} failed (exit {code}):\n{stderr[-3000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "tree_peak_rss_mb": round(max(peak[0], usage.ru_maxrss / 1024)),
            "outcome": summary["outcome"], "challenger_error": summary.get("challenger_error"),
            "production_error": summary.get("production_error"),
            "timings": summary.get("timings", {})}


def crossover(sizes: list[dict], engines: list[str]) -> dict | None:
    """Where wall = a + b * rows of the default and the Spark engine meet, from the first and
    last size (None when fewer than two sizes or either engine is missing)."""
    if len(sizes) < 2 or not {"default", "spark"} <= set(engines):
        return None
    first, last = sizes[0], sizes[-1]
    lines = {}
    for engine in ("default", "spark"):
        slope = ((last[engine]["wall_s"] - first[engine]["wall_s"])
                 / (last["rows"] - first["rows"]))
        lines[engine] = (first[engine]["wall_s"] - slope * first["rows"], slope)
    (a_default, b_default), (a_spark, b_spark) = lines["default"], lines["spark"]
    result = {"seconds_per_million_rows": {name: round(b * 1e6, 2)
                                           for name, (_, b) in lines.items()},
              "fixed_seconds": {name: round(a, 1) for name, (a, _) in lines.items()}}
    if b_spark >= b_default:
        result["rows"] = None
        result["meaning"] = "the Spark engine is slower per row here: no cross-over"
    else:
        rows = (a_spark - a_default) / (b_default - b_spark)
        result["rows"] = round(rows)
        result["meaning"] = ("the Spark engine is faster above this many rows"
                             if rows > 0 else "the Spark engine is faster at every size")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000000,20000000")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--spark-master", default="local[*]")
    parser.add_argument("--engines", default="default,spark")
    parser.add_argument("--threads", default=None,
                        help="OMP_NUM_THREADS for the cycle (default: the cycle's own choice)")
    args = parser.parse_args(argv)
    from bench.run_bench import child_env, generate, machine, prepare_workspace, write_results

    engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    env = child_env(args.threads)
    sizes = []
    for rows in sorted(int(size) for size in args.sizes.split(",")):
        data = args.work_dir / f"data_{rows}"
        if not data.exists():
            generate(data, rows, seed=rows % 1000)
        space, _, _ = prepare_workspace(args.work_dir / f"workspace_{rows}", data / "history",
                                        data / "new", env)
        measured = {"rows": rows}
        for engine in engines:
            space.restore()
            flags = ["--engine", engine, "--training-windows", "all", "--error-threshold", "0",
                     "--json"]
            if engine == "spark":
                flags += ["--spark-master", args.spark_master]
            measured[engine] = result = measure_tree(
                [sys.executable, "pipeline_orchestrator.py", *space.flags(), *flags], env)
            print(f"{rows:>11,} rows  {engine:<7}  {result['wall_s']:8.1f} s  python peak "
                  f"{result['peak_rss_mb']:7,} MB  tree peak {result['tree_peak_rss_mb']:7,} MB"
                  f"  {result['outcome']} (challenger {result['challenger_error']}, "
                  f"production {result['production_error']})  train "
                  f"{result['timings'].get('train')} s", flush=True)
        sizes.append(measured)
        space.restore()
    results = {"spark_master": args.spark_master, "engines": engines, "sizes": sizes,
               "crossover": crossover(sizes, engines), "machine": machine()}
    if results["crossover"]:
        print(f"cross-over: {results['crossover']}")
    out = write_results("spark-", results)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
