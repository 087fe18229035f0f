"""Benchmark: one retraining cycle on years of history (20 million rows in 4,000 files).

    /path/to/python bench/years_of_history.py --work-dir DIR [--rows 20000000] [--threads 1]
                                              [--training-windows all]

Generates seeded history as bench/history_read.py does (20 features, 5,000 rows a file) and
40 new files of a drifted regime, registers a first model trained on 20 of the history
files (register_first_model.py checks it on all of the history: its wall time and peak
memory are reported), and enters history in the ledger, as years of archived cycles would
have. Then runs
pipeline_orchestrator.py with its defaults (--error-threshold 0, so that it retrains), twice:
the first night after an upgrade, when history has no columnar copy yet (each file is read
from its CSV and its copy written), and the next night, with another 40 new files and the
copies in place. Reports each night's wall time, the process's peak memory (os.wait4), the
summary's timings, and the history read rate in MB of CSV per second. Results go to
bench/results/years-<time>.json. With --work-dir the generated data are kept and reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

NEW_FILES = 40


def generate_new(new_dir: Path, seed: int = 1) -> None:
    """NEW_FILES files of the drifted regime in `new_dir`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from bench.history_read import ROWS_PER_FILE
    from bench.run_bench import readings

    generator = np.random.default_rng(seed)
    new_dir.mkdir(parents=True, exist_ok=True)
    for index in range(NEW_FILES):
        frame = readings(ROWS_PER_FILE, 1.0, generator)
        pcsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False),
                       new_dir / f"batch_{index:04d}.csv", pcsv.WriteOptions(quoting_style="none"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--threads", default="1",
                        help="OMP_NUM_THREADS for the cycle ('' leaves it unset)")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--training-windows", default=None,
                        help="passed to the cycle (default: the cycle's own default windows)")
    args = parser.parse_args(argv)

    from bench.history_read import generate
    from bench.run_bench import child_env, machine, measure, prepare_workspace, write_results

    data = args.work_dir / f"data_{args.rows}"
    started = time.perf_counter()
    generate(data / "history", args.rows)
    if not (data / "new").exists():
        generate_new(data / "new")
    csv_mb = sum(path.stat().st_size for path in (data / "history").glob("*.csv")) / 1e6
    print(f"history: {csv_mb:,.0f} MB of CSV ({time.perf_counter() - started:.0f} s to make)",
          flush=True)
    env = child_env(args.threads)
    root = args.work_dir / "workspace"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(root.parent / (root.name + ".snapshot"), ignore_errors=True)
    # No copies yet: the first night is the first after an upgrade to the columnar copy.
    space, _, registered = prepare_workspace(root, data / "history", data / "new", env,
                                             copies=False)
    registration = {"wall": registered["wall_s"], "peak_mb": registered["peak_rss_mb"]}
    print(f"register_first_model.py: {registration['wall']:.1f} s, peak "
          f"{registration['peak_mb']:,.0f} MB", flush=True)

    nights = {}
    for night in ("first", "later"):
        if night == "later":  # the next night: another batch, history's copies in place
            generate_new(space.new_dir, seed=2)
        windows = ("--training-windows", args.training_windows) if args.training_windows else ()
        result = measure([sys.executable, "pipeline_orchestrator.py", *space.flags(),
                          "--error-threshold", "0", "--json", *windows], env, timeout=7200)
        if result["exit"] != 0:
            raise SystemExit(f"the {night} night failed:\n{result['stderr_tail']}")
        summary = json.loads(result["stdout"])
        timings = summary["timings"]
        nights[night] = {"wall": result["wall_s"], "peak_mb": result["peak_rss_mb"],
                         "outcome": summary["outcome"],
                         "window": summary.get("training_window"), "timings": timings,
                         "history_mb_per_s": round(csv_mb / timings["history"], 1)}
        print(f"{night} night: {summary['outcome']} ({summary.get('training_window')}), "
              f"{result['wall_s']:.1f} s, peak {result['peak_rss_mb']:,.0f} MB, history read in "
              f"{timings['history']:.1f} s ({csv_mb / timings['history']:,.0f} MB/s); "
              f"timings {timings}", flush=True)
    results = {"rows": args.rows, "csv_mb": csv_mb, "threads": args.threads or "unset",
               "training_windows": args.training_windows or "default",
               "registration": registration, "nights": nights, "machine": machine()}
    out = write_results("years-", results)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
