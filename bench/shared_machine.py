"""A cycle on a shared machine: beside CPU-bound processes, with no setting from the user.

    /path/to/python bench/shared_machine.py [--sizes 30000,1000000] [--repeats 3] [--busy N]

For each size, seeded data as bench/run_bench.py makes it (20 features, 200 files, 40 of them
new and drifted) and a first model registered; then the promoting cycle of run_bench.py
(--training-windows all, --error-threshold 0), each way below `--repeats` times, the ways
interleaved, medians reported. Each run is a process of its own, as cron starts it:

- auto:     as a user runs it: no OMP_NUM_THREADS, no --threads (retraining/threads.py
            gives the libraries the cores other processes leave free, before each fit);
- one:      OMP_NUM_THREADS=1, the one-thread cycle;
- default:  OMP_NUM_THREADS=<cores>: what the libraries do by themselves, as before.

each on an idle machine and beside `--busy` processes that spin on the CPU (default: as many
as this process may use cores). The targets: loaded, auto within 1.3x of loaded, one; idle,
auto within 1.10x of idle, default. 30,000 rows is the demo's size. Results go to
bench/results/shared-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from bench.run_bench import (  # noqa: E402
    child_env,
    generate,
    machine,
    prepare_workspace,
    run_cycle,
    write_results,
)
from retraining.threads import PERSONS_THREAD_SETTINGS, usable_cores  # noqa: E402

WAYS = ("auto", "one", "default")


@contextlib.contextmanager
def busy_neighbours(count: int):
    """`count` processes that keep a core busy each, for as long as the block runs."""
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(count)]
    try:
        time.sleep(1.0 if count else 0.0)  # running, and seen as running, before we start
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait()


def way_env(way: str, cores: int) -> dict:
    env = child_env({"auto": None, "one": "1", "default": str(cores)}[way])
    if way == "auto":  # as a user runs it, whatever the environment of the one benchmarking
        for name in PERSONS_THREAD_SETTINGS:
            env.pop(name, None)
    return env


def bench_size(rows: int, repeats: int, busy: int, work: Path, cores: int) -> dict:
    print(f"\n== {rows:,} rows", file=sys.stderr, flush=True)
    history, new = generate(work / "data", rows, seed=rows % 1000)
    space, _, _ = prepare_workspace(work / "space", history, new, child_env("1"))
    runs: dict[str, list[float]] = {f"{load}_{way}": [] for load in ("idle", "loaded")
                                    for way in WAYS}
    for repeat in range(repeats):
        for load, neighbours in (("idle", 0), ("loaded", busy)):
            for way in WAYS:
                key = f"{load}_{way}"
                with busy_neighbours(neighbours):
                    result = run_cycle(space, way_env(way, cores))
                runs[key].append(result["wall_s"])
                print(f"  {key:16s} repeat {repeat + 1}: {result['wall_s']:.1f} s",
                      file=sys.stderr, flush=True)
    medians = {key: statistics.median(walls) for key, walls in runs.items()}
    return {"rows": rows, "busy_neighbours": busy, "medians_s": medians, "walls_s": runs,
            "loaded_auto_over_one": medians["loaded_auto"] / medians["loaded_one"],
            "loaded_default_over_one": medians["loaded_default"] / medians["loaded_one"],
            "idle_auto_over_default": medians["idle_auto"] / medians["idle_default"],
            "idle_one_over_default": medians["idle_one"] / medians["idle_default"]}


def print_table(results: dict) -> None:
    info = results["machine"]
    print(f"machine: {info['cpus']} CPUs ({info['cpu_model']}), {info['ram_gib']} GiB; "
          f"{results['repeats']} interleaved runs each, medians")
    print("| rows | beside | auto s | one thread s | default threads s | auto / one "
          "(target <= 1.3) | default / one | idle: auto / default (target <= 1.10) |")
    print("|---|---|---|---|---|---|---|---|")
    for size in results["sizes"]:
        m = size["medians_s"]
        print(f"| {size['rows']:,} | {size['busy_neighbours']} busy | {m['loaded_auto']:.1f} | "
              f"{m['loaded_one']:.1f} | {m['loaded_default']:.1f} | "
              f"{size['loaded_auto_over_one']:.2f} | {size['loaded_default_over_one']:.2f} | "
              f"{size['idle_auto_over_default']:.2f} ({m['idle_auto']:.1f} vs "
              f"{m['idle_default']:.1f} s) |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="30000,1000000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, default=None,
                        help="CPU-bound processes beside the loaded runs (default: the cores)")
    args = parser.parse_args(argv)

    cores = usable_cores()
    busy = cores if args.busy is None else args.busy
    results = {"machine": machine(), "repeats": args.repeats, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="shared-") as folder:
        for rows in (int(size) for size in args.sizes.split(",")):
            work = Path(folder) / str(rows)
            work.mkdir()
            results["sizes"].append(bench_size(rows, args.repeats, busy, work, cores))
    out = write_results("shared-", results)
    print_table(results)
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
