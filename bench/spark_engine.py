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
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

def measure_cycle(command: list[str], env: dict) -> dict:
    """Run one cycle: wall time, its own peak RSS, its tree's sampled peak (the JVM's)."""
    from bench.run_bench import measure

    result = measure(command, env, tree=True)
    if result["exit"] != 0:
        raise SystemExit(f"{' '.join(command[:2])} failed (exit {result['exit']}):\n"
                         f"{result['stderr_tail']}")
    summary = json.loads(result["stdout"].strip().splitlines()[-1])
    return {"wall_s": round(result["wall_s"], 2), "peak_rss_mb": round(result["peak_rss_mb"]),
            "tree_peak_rss_mb": round(result["tree_peak_rss_mb"]),
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
            measured[engine] = result = measure_cycle(
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
