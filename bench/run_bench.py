"""Benchmark: what a retraining cycle costs beyond the work itself, and how it scales.

    /path/to/python bench/run_bench.py [--sizes 100000,1000000,5000000] [--repeats 3] [--quick]

For each size it generates seeded data once (20 features, 200 files: 160 history, 40 new and
drifted) in a temporary folder, registers a first model trained on part of history, and then
measures, each in its own process, `--repeats` times, median reported:

- bare:  the work itself (bench/workloads.py bare): read every file with the product's reader,
         fit the default model, predict on the monitored and held-out files; no MLflow.
- naive: the obvious cycle (bench/workloads.py naive): copy files to a temporary folder,
         pandas' default reader, MLflow's default model logging.
- cycle: pipeline_orchestrator.py for real, retraining and promoting (--error-threshold 0),
         against a SQLite store restored to the same state before each run, with
         --training-windows all: the same fit as the bare work, so the ratio is the cycle's
         own cost.
- floor:  only what the cycle cannot skip, storing its models as it does (bench/workloads.py
         floor): MLflow's import and SQLite store, the production model loaded from the
         registry (skops), one version registered; bare + floor is the least it could take.
- windows: the same cycle with its default training windows: it also compares candidate
         windows (on a share of their rows) and may train the challenger on fewer rows than
         the bare work (the new regime only), so it is reported beside the targets, not in them.

Reported against the targets: the cycle's fixed cost (cycle minus bare wall, median of the
interleaved pairs), wall = a + b * rows fitted over the sizes for the bare work and the cycle
(the cycle's b against the bare work's), and peak memory against the bare work's.

Wall time and peak RSS are the child's own (os.wait4), imports included on every side: each
side is a process that cron (or a user) would start. Once, at the smallest size: a cycle
that skips for too few files, one that finds the lock held, and a cycle against a store with
`--versions` registered versions and as many past runs. Results go to bench/results/<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

FILES, NEW_FILES = 200, 40
HOLDOUT_FRACTION = 0.2
HELDOUT_FILES = round(NEW_FILES * HOLDOUT_FRACTION)
CYCLE_PHASES = ("trigger", "open", "monitor", "train", "log_register", "compare", "promote",
                "archive")


# --- data --------------------------------------------------------------------------------

def readings(rows: int, drift: float, generator):
    """The demo's machine readings (6 features) plus 12 sensors and 2 categories: 20 features."""
    import numpy as np

    from demo.generate_stream import readings as demo_readings

    frame = demo_readings(rows, drift, generator)
    label = frame.pop("label")
    for index in range(12):
        values = generator.normal(drift * (index % 3), 1.0 + index / 10, rows).round(3)
        values[generator.random(rows) < 0.01] = np.nan
        frame[f"sensor_{index:02d}"] = values
    frame["site"] = generator.choice([f"site_{i}" for i in range(8)], rows)
    frame["shift"] = generator.choice(["early", "late", "night"], rows)
    frame["label"] = label
    return frame


def generate(folder: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """history/ and new/ under `folder`: FILES files of rows/FILES rows each."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    generator = np.random.default_rng(seed)
    per_file = max(1, rows // FILES)
    history, new = folder / "history", folder / "new"
    history.mkdir(parents=True)
    new.mkdir()
    for index in range(FILES):
        is_new = index >= FILES - NEW_FILES
        frame = readings(per_file, 1.0 if is_new else 0.0, generator)
        path = (new / f"batch_{index:04d}.csv") if is_new \
            else (history / f"history_{index:04d}.csv")
        pcsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), path,
                       pcsv.WriteOptions(quoting_style="none"))
    return history, new


def copy_folder(source: Path, target: Path) -> None:
    # Copies, not hard links: the cycle treats a second link as an interrupted move.
    shutil.copytree(source, target, symlinks=True)


# --- processes ---------------------------------------------------------------------------

def measure(command: list[str], env: dict, timeout: float = 3600, tree: bool = False) -> dict:
    """Run one process; its wall time, its own peak RSS (os.wait4), exit code and stdout.

    `tree`: also its process tree's peak RSS (`tree_peak_rss_mb`), sampled from /proc every
    quarter second: what a JVM or a worker the process starts holds beside it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=PROJECT_DIR)
        peak, done = [0.0], threading.Event()

        def sample():
            while not done.wait(0.25):
                peak[0] = max(peak[0], tree_rss_mb(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        if tree:
            sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        done.set()
        if tree:
            sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    own_peak = usage.ru_maxrss / 1024
    return {"wall_s": wall, "peak_rss_mb": own_peak, "exit": process.returncode,
            "stdout": stdout, "stderr_tail": stderr[-3000:],
            **({"tree_peak_rss_mb": max(peak[0], own_peak)} if tree else {})}


def tree_rss_mb(root: int) -> float:
    """RSS of `root` and all its descendants now, from /proc."""
    page_mb = os.sysconf("SC_PAGE_SIZE") / 1e6
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
        rss[int(entry.name)] = pages * page_mb
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    return sum(rss.get(pid, 0.0) for pid in tree)


def child_env(threads: str | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RETRAIN_", "MLFLOW_"))}
    if threads:
        env["OMP_NUM_THREADS"] = threads
    env["PYTHONPATH"] = str(PROJECT_DIR)
    return env


class Workspace:
    """One cycle's folders and store, restored to the same state before every run."""

    def __init__(self, root: Path):
        self.root = root
        self.new_dir, self.used_dir = root / "new_gts", root / "used_gts"
        self.quarantine_dir, self.store = root / "quarantine", root / "store"
        self.tracking_uri = "sqlite:///" + str(self.store / "mlflow.db")
        self.snapshot = root.parent / (root.name + ".snapshot")

    def flags(self) -> list[str]:
        return ["--new-dir", str(self.new_dir), "--used-dir", str(self.used_dir),
                "--quarantine-dir", str(self.quarantine_dir), "--settle-seconds", "0",
                "--tracking-uri", self.tracking_uri, "--min-new-files", "10",
                "--holdout-fraction", str(HOLDOUT_FRACTION)]

    def save(self) -> None:
        shutil.rmtree(self.snapshot, ignore_errors=True)
        copy_folder(self.root, self.snapshot)

    def restore(self) -> None:
        from retraining.datafiles import list_data_files
        from retraining.ledger import history_content

        # Same absolute path every time: the store records its artifact folder by path.
        shutil.rmtree(self.root, ignore_errors=True)
        copy_folder(self.snapshot, self.root)
        # Copied files have new inodes and change times, so the ledger no longer describes
        # them and the cycle would hash all of history again: entered anew here, unmeasured,
        # as the files of a folder nobody copied are described every night.
        history_content(self.used_dir, list_data_files(self.used_dir), record_unknown=True)


def prepare_workspace(root: Path, history: Path, new: Path, env: dict,
                      copies: bool = True) -> tuple[Workspace, Path, dict]:
    """History and new files in place, a first model registered as production version 1;
    history in the ledger and, with `copies`, in its columnar copy. Returns the workspace,
    the model file and the registration's measurement (wall time, peak memory)."""
    from retraining.columnar import ColumnarHistory
    from retraining.datafiles import concat_files, list_data_files, load_files
    from retraining.ledger import history_content
    from train_classification_model import train_model

    space = Workspace(root)
    for folder in (space.new_dir, space.quarantine_dir, space.store):
        folder.mkdir(parents=True)
    copy_folder(history, space.used_dir)
    paths = list_data_files(history)[:20]  # a first model on older data: the new batch drifted
    files = load_files(paths, "label", lambda frame, path: frame)
    model = train_model(*concat_files(files), random_state=0)
    model_file = root.parent / "initial_model.pkl"
    with open(model_file, "wb") as handle:
        pickle.dump(model, handle)
    registered = measure([sys.executable, "register_first_model.py", "--used-dir",
                          str(space.used_dir), "--model-file", str(model_file),
                          "--tracking-uri", space.tracking_uri, "--json"], env)
    if registered["exit"] != 0:
        raise SystemExit("registering the first model failed:\n" + registered["stderr_tail"])
    # Steady state: history is in the ledger and has its columnar copy, as after any archived
    # cycle (the first cycle on hand-placed history hashes it and writes its copy once; that
    # is a one-off, not a nightly cost).
    history_content(space.used_dir, list_data_files(space.used_dir), record_unknown=True)
    if copies:
        columnar = ColumnarHistory(space.used_dir, writable=True)
        for path in list_data_files(space.used_dir):
            columnar.load(path, "label", lambda frame, path: frame)
    for path in sorted(new.iterdir()):
        shutil.copy(path, space.new_dir / path.name)
    space.save()
    return space, model_file, registered


# --- what is measured ----------------------------------------------------------------------

def run_bare(history: Path, new: Path, model_file: Path, env: dict) -> dict:
    result = measure([sys.executable, "bench/workloads.py", "bare", "--used-dir", str(history),
                      "--new-dir", str(new), "--model-file", str(model_file),
                      "--heldout-files", str(HELDOUT_FILES)], env)
    return _parsed(result, "bare work")


def run_naive(history: Path, new: Path, space: Workspace, env: dict) -> dict:
    space.restore()
    result = measure([sys.executable, "bench/workloads.py", "naive", "--used-dir", str(history),
                      "--new-dir", str(new), "--tracking-uri", space.tracking_uri,
                      "--heldout-files", str(HELDOUT_FILES)], env)
    return _parsed(result, "naive cycle")


def run_floor(history: Path, new: Path, space: Workspace, env: dict) -> dict:
    space.restore()  # it registers a version
    result = measure([sys.executable, "bench/workloads.py", "floor", "--used-dir", str(history),
                      "--new-dir", str(new), "--tracking-uri", space.tracking_uri,
                      "--heldout-files", str(HELDOUT_FILES)], env)
    return _parsed(result, "MLflow floor")


FLOOR_PHASES = ("open", "load_production", "log_register")
ONE_WINDOW = ("--training-windows", "all")


def run_cycle(space: Workspace, env: dict, restore: bool = True,
              extra: tuple[str, ...] = ONE_WINDOW) -> dict:
    if restore:
        space.restore()
    result = measure([sys.executable, "pipeline_orchestrator.py", *space.flags(),
                      "--error-threshold", "0", "--json", *extra], env)
    result = _parsed(result, "cycle")
    if result["summary"]["outcome"] != "promoted":
        raise SystemExit(f"the cycle did not promote: {result['summary']['reason']}")
    return result


def _parsed(result: dict, what: str) -> dict:
    if result["exit"] != 0:
        raise SystemExit(f"{what} failed (exit {result['exit']}):\n{result['stderr_tail']}")
    summary = json.loads(result.pop("stdout"))
    result.pop("stderr_tail")
    return {**result, "summary": summary, "timings": summary.get("timings", {})}


def median_of(runs: list[dict]) -> dict:
    """Median wall, peak RSS and per-phase seconds over repeated runs."""
    phases = sorted({name for run in runs for name in run["timings"]})
    windows = sorted({r["summary"].get("training_window") for r in runs} - {None})
    return {"wall_s": statistics.median(r["wall_s"] for r in runs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            **({"training_windows_chosen": windows} if windows else {}),
            "walls_s": [round(r["wall_s"], 2) for r in runs],
            "timings": {name: statistics.median(r["timings"].get(name, 0.0) for r in runs)
                        for name in phases}}


def bench_size(rows: int, repeats: int, work: Path, env: dict, naive: bool,
               windows: bool = True) -> dict:
    print(f"\n== {rows:,} rows: generating data", file=sys.stderr, flush=True)
    history, new = generate(work / "data", rows, seed=rows)
    space, model_file, _ = prepare_workspace(work / "workspace", history, new, env)
    runs = {"bare": [], "naive": [], "cycle": [], "windows": [], "floor": []}
    for repeat in range(repeats):
        # Interleaved, so a change in the machine's load falls on every side alike.
        print(f"   repeat {repeat + 1}/{repeats}", file=sys.stderr, flush=True)
        runs["bare"].append(run_bare(history, new, model_file, env))
        runs["cycle"].append(run_cycle(space, env))
        if windows:
            runs["windows"].append(run_cycle(space, env, extra=()))
        runs["floor"].append(run_floor(history, new, space, env))
        if naive:
            runs["naive"].append(run_naive(history, new, space, env))
    result = {"rows": rows, "files": FILES, "features": 20,
              "csv_mb": round(sum(p.stat().st_size for d in (history, new)
                                  for p in d.iterdir()) / 2**20, 1),
              **{side: median_of(found) for side, found in runs.items() if found}}
    cycle, bare = result["cycle"], result["bare"]
    result["cycle_over_bare_wall"] = cycle["wall_s"] / bare["wall_s"]
    result["cycle_over_bare_rss"] = cycle["peak_rss_mb"] / bare["peak_rss_mb"]
    # The cycle's fixed cost: what it takes beyond the same work, per interleaved pair of runs
    # (a change in the machine's load falls on both of a pair alike).
    result["fixed_cost_s"] = statistics.median(
        c["wall_s"] - b["wall_s"] for c, b in zip(runs["cycle"], runs["bare"], strict=True))
    result["cycle_us_per_row"] = cycle["wall_s"] / rows * 1e6
    result["bare_us_per_row"] = bare["wall_s"] / rows * 1e6
    # The least the cycle could take, storing models as it does: the bare work plus what it
    # cannot skip (the floor's own phases; its imports are the bare work's).
    floor_s = statistics.median(sum(r["timings"][p] for p in FLOOR_PHASES)
                                for r in runs["floor"])
    result["floor_s"] = floor_s
    result["floor_over_bare_wall"] = (bare["wall_s"] + floor_s) / bare["wall_s"]
    # With the evaluation report too (timed inside the cycle's compare step): the least the
    # cycle could take while writing what a reviewer reads.
    result["floor_and_report_over_bare_wall"] = ((bare["wall_s"] + floor_s
                                                  + cycle["timings"].get("report", 0.0))
                                                 / bare["wall_s"])
    if windows:
        result["windows_over_bare_wall"] = result["windows"]["wall_s"] / bare["wall_s"]
    if naive:
        result["naive_over_cycle_wall"] = result["naive"]["wall_s"] / cycle["wall_s"]
    result["_space"] = space
    return result


def bench_skips(space: Workspace, env: dict, repeats: int) -> dict:
    """Too few new files, and the lock held by another process: both must return at once."""
    from retraining.runlock import exclusive_run

    space.restore()
    few = [sys.executable, "pipeline_orchestrator.py", *space.flags(), "--min-new-files",
           "1000", "--json"]
    too_few = [measure(few, env) for _ in range(repeats)]
    assert all(json.loads(r["stdout"])["outcome"] == "skipped" for r in too_few)
    with exclusive_run(space.new_dir):
        locked = [measure([sys.executable, "pipeline_orchestrator.py", *space.flags(), "--json"],
                          env) for _ in range(repeats)]
    assert all(r["exit"] == 75 for r in locked), [r["stderr_tail"] for r in locked]
    return {"too_few_files_s": statistics.median(r["wall_s"] for r in too_few),
            "lock_held_s": statistics.median(r["wall_s"] for r in locked)}


def grow_registry(space: Workspace, versions: int) -> None:
    """`versions` more versions of the production model, and as many finished past runs."""
    import mlflow

    # The registry resolves a version's source through the global tracking URI.
    mlflow.set_tracking_uri(space.tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=space.tracking_uri)
    first = client.get_model_version("classifier", "1")
    experiment = client.get_experiment_by_name("classifier-retraining")
    for index in range(versions):
        run_name = ("ModelMonitoring", "ModelRetraining")[index % 2]
        run = client.create_run(experiment.experiment_id, run_name=run_name,
                                tags={"new_dir": str(space.new_dir),
                                      "batch_key": f"{index:064x}",
                                      "mlflow.runName": run_name})
        client.log_metric(run.info.run_id, "monitoring_error", 0.1)
        client.set_terminated(run.info.run_id)
        client.create_model_version("classifier", first.source, run_id=first.run_id,
                                    tags={"decision": "rejected"})


# As many earlier versions as the cycle judges beside its challenger by default
# (--earlier-versions): both registries give it the same work, one holds far more.
EARLIER_VERSIONS = 3


def grow_in_a_process(space: Workspace, versions: int, env: dict) -> None:
    """grow_registry in a process of its own: one in this process would keep MLflow's cached
    connection to a store that restoring the workspace has since replaced."""
    script = ("import sys; from pathlib import Path; from bench.run_bench import Workspace, "
              "grow_registry; grow_registry(Workspace(Path(sys.argv[1])), int(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", script, str(space.root), str(versions)], env=env,
                   cwd=PROJECT_DIR, check=True, capture_output=True)


def bench_registry(space: Workspace, env: dict, versions: int, repeats: int) -> dict:
    """The same cycle on a registry with EARLIER_VERSIONS rejected versions and on one with
    `versions`: growth is what the larger registry costs beyond judging the same three."""
    space.restore()
    grow_in_a_process(space, EARLIER_VERSIONS, env)
    space.save()
    fresh = [run_cycle(space, env) for _ in range(repeats)]
    space.restore()
    grow_in_a_process(space, versions - EARLIER_VERSIONS, env)
    space.save()
    grown = [run_cycle(space, env) for _ in range(repeats)]
    return {"versions": versions, "baseline_versions": EARLIER_VERSIONS,
            "fresh": median_of(fresh), "grown": median_of(grown),
            "grown_over_fresh_wall": (statistics.median(r["wall_s"] for r in grown)
                                      / statistics.median(r["wall_s"] for r in fresh))}


# --- report -------------------------------------------------------------------------------

def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    meminfo = Path("/proc/meminfo")
    memory = next((int(line.split()[1]) // 1024 // 1024 for line in
                   meminfo.read_text().splitlines()
                   if line.startswith("MemTotal")), None) if meminfo.exists() else None
    return {"cpus": os.cpu_count(), "cpu_model": model, "ram_gib": memory,
            "python": platform.python_version(), "load_average": os.getloadavg()}


def write_results(prefix: str, results: dict, **dumps) -> Path:
    """One run's results, as bench/results/<prefix><time>.json; returns its path."""
    out = PROJECT_DIR / "bench" / "results" / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, **dumps))
    return out


def print_table(results: dict) -> None:
    print(f"\nmachine: {results['machine']['cpus']} x {results['machine']['cpu_model']}, "
          f"{results['machine']['ram_gib']} GiB; OMP_NUM_THREADS={results['threads']}; "
          f"load before {results['load_before']}, after {results['machine']['load_average']}")
    print(f"repeats: {results['repeats']} (medians), once above {results['once_above']:,} "
          f"rows\n")
    header = ["rows", "side", "wall s", "peak MB", *CYCLE_PHASES]
    print(" | ".join(f"{h:>12}" for h in header))
    for size in results["sizes"]:
        for side in ("bare", "naive", "cycle", "windows"):
            if side not in size:
                continue
            found = size[side]
            phases = [f"{found['timings'].get(p, float('nan')):.2f}" for p in CYCLE_PHASES]
            if side == "bare":
                phases = [f"{found['timings'].get(p, float('nan')):.2f}" if p in
                          ("monitor", "train", "compare") else "-" for p in CYCLE_PHASES]
                phases[1] = f"{found['timings']['read']:.2f}"  # "open": reading, for bare
            elif side == "naive":
                phases = ["-", f"{found['timings']['read']:.2f}",
                          *(f"{found['timings'].get(p, float('nan')):.2f}" for p in
                            ("monitor", "train", "log_register", "compare")), "-", "-"]
            print(" | ".join(f"{v:>12}" for v in [f"{size['rows']:,}", side,
                                                   f"{found['wall_s']:.2f}",
                                                   f"{found['peak_rss_mb']:.0f}", *phases]))
        line = (f"   fixed cost (cycle - bare, median of pairs) {size['fixed_cost_s']:.2f} s "
                f"(target <= 3); cycle/bare wall {size['cycle_over_bare_wall']:.3f}, peak "
                f"memory {size['cycle_over_bare_rss']:.3f} (target <= 1.10)")
        if "naive_over_cycle_wall" in size:
            line += f", naive/cycle {size['naive_over_cycle_wall']:.2f}"
        print(line)
        floor, cycle_timings = size["floor"]["timings"], size["cycle"]["timings"]
        print(f"   floor: MLflow import and store {floor['open']:.2f} s, production load "
              f"{floor['load_production']:.2f} s, one registration {floor['log_register']:.2f}"
              f" s: {size['floor_s']:.2f} s (median of sums), so the cycle, storing models "
              f"as it does, cannot be below {size['floor_over_bare_wall']:.3f} x bare wall")
        print(f"   inside the cycle: report {cycle_timings.get('report', float('nan')):.2f} s, "
              f"drift {cycle_timings.get('drift', float('nan')):.2f} s; floor and report: "
              f"{size['floor_and_report_over_bare_wall']:.3f} x bare wall")
        if "windows" in size:
            print(f"   default windows: {size['windows_over_bare_wall']:.3f} x bare wall, "
                  f"chose {', '.join(size['windows'].get('training_windows_chosen', ['-']))}")
    slopes = per_row_slopes(results["sizes"])
    if slopes:
        print(f"\nwall = a + b * rows, least squares over {len(results['sizes'])} sizes: bare "
              f"a {slopes['bare']['a_s']:.2f} s, b {slopes['bare']['b_us']:.2f} us/row; cycle "
              f"a {slopes['cycle']['a_s']:.2f} s, b {slopes['cycle']['b_us']:.2f} us/row; "
              f"cycle's b / bare's {slopes['b_ratio']:.3f} (target <= 1.05)")
    if results.get("skips"):
        skips = results["skips"]
        print(f"skip, too few files: {skips['too_few_files_s']:.3f} s; skip, lock held: "
              f"{skips['lock_held_s']:.3f} s (target < 0.5)")
    if results.get("registry"):
        registry = results["registry"]
        print(f"registry with {registry['versions']} more versions and runs: cycle "
              f"{registry['grown']['wall_s']:.2f} s vs {registry['fresh']['wall_s']:.2f} s with "
              f"{registry['baseline_versions']} (the earlier versions it judges either way; "
              f"ratio {registry['grown_over_fresh_wall']:.3f}) at "
              f"{results['sizes'][0]['rows']:,} rows")


def per_row_slopes(sizes: list[dict]) -> dict | None:
    """wall = a + b * rows fitted for the bare work and the cycle across the sizes."""
    import numpy as np

    if len(sizes) < 2:
        return None
    rows = np.array([size["rows"] for size in sizes], dtype=float)
    fits = {}
    for side in ("bare", "cycle"):
        b, a = np.polyfit(rows, [size[side]["wall_s"] for size in sizes], 1)
        fits[side] = {"a_s": float(a), "b_us": float(b * 1e6)}
    fits["b_ratio"] = fits["cycle"]["b_us"] / fits["bare"]["b_us"]
    return fits


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000,5000000",
                        help="total rows, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--versions", type=int, default=500,
                        help="registered versions (and past runs) for the registry-growth run")
    parser.add_argument("--threads", default="1",
                        help="OMP_NUM_THREADS for every measured process ('' leaves it unset)")
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--no-windows", action="store_true",
                        help="skip the cycle with default training windows (not a target)")
    parser.add_argument("--once-above", type=int, default=1_000_000,
                        help="sizes above this many rows run once, without the naive side "
                             "(a 5-million-row repeat takes many minutes on 2 cores)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 20,000 rows, 1 repeat, 20 versions")
    parser.add_argument("--work-dir", type=Path, help="keep generated data here (default: temp)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.versions = "20000", 1, 20
    sizes = [int(size) for size in args.sizes.split(",")]
    env = child_env(args.threads)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = args.threads  # the first model, trained here
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "threads": args.threads or "unset",
               "repeats": args.repeats, "once_above": args.once_above,
               "load_before": os.getloadavg(), "sizes": []}
    out = PROJECT_DIR / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="retraining-bench-", dir=args.work_dir) as work:
        for rows in sizes:
            folder = Path(work) / f"rows_{rows}"
            large = rows > args.once_above
            size = bench_size(rows, 1 if large else args.repeats, folder, env,
                              naive=not (args.no_naive or large), windows=not args.no_windows)
            space = size.pop("_space")
            if rows == sizes[0]:
                print("   skips and registry growth", file=sys.stderr, flush=True)
                results["skips"] = bench_skips(space, env, max(3, args.repeats))
                if args.versions:
                    results["registry"] = bench_registry(space, env, args.versions,
                                                         args.repeats)
            results["sizes"].append(size)
            results["slopes"] = per_row_slopes(results["sizes"])
            shutil.rmtree(folder)
            # Written after every size, so a long run that is cut short still leaves figures.
            results["machine"] = machine()
            out.write_text(json.dumps(results, indent=1))
            print_table(results)
    print(f"\nwritten: {out.relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
