"""How often the default cycle promotes, on seeded streams of three kinds, and whether what it
promoted was truly better.

    /path/to/python bench/gate_streams.py [--seeds 12] [--changes 6]

- noise: a stable stream with 18% random labels (16 history files, 10 new), so production's
  error stays above the threshold and the cycle retrains although nothing changed; run with
  the defaults and again with --no-require-significance.
- concept: history under the old labelling policy, 10 new files under the new one.
- covariate: 10 new files from a region of the inputs history never covered.

Each run is a real cycle on an embedded store in a temporary folder. For every registered
challenger, both models are then scored on 60,000 fresh rows of the new files' stream: the
truth the held-out files only sample. Prints a table and writes bench/results/gate-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from bench.run_bench import write_results  # noqa: E402

FRESH_FILES = 200  # of 300 rows: 60,000 rows to measure each model's true error


class _Captured:
    """What tests.conftest.run_json reads the summary from, without pytest."""

    def __init__(self, buffer: io.StringIO):
        self.buffer = buffer

    def readouterr(self):
        out = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        return argparse.Namespace(out=out, err="")


def streams(kind: str, seed: int):
    """(history frames, new frames, stream of fresh frames like the new ones)."""
    from tests.test_windows import NEW_POLICY_HOURS, stream

    if kind == "noise":
        def new(count, offset):
            return stream(count, seed=offset + seed, label_noise=0.18)
        return stream(16, seed=1000 + seed, label_noise=0.18), new(10, 2000), new
    if kind == "concept":
        def new(count, offset):
            return stream(count, seed=offset + seed, worn_after_hours=NEW_POLICY_HOURS)
    else:
        def new(count, offset):
            return stream(count, seed=offset + seed, drift=1.0)
    return stream(8, seed=3000 + seed), new(10, 4000), new


def run_one(kind: str, seed: int, extra: list[str]) -> dict:
    import mlflow
    import numpy as np

    import pipeline_orchestrator
    from retraining.datafiles import concat_files
    from tests.conftest import Workspace, register_pickle, run_json, train_on_folder, write_csvs
    from tests.test_windows import read_folder

    history, new, fresh_stream = streams(kind, seed)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        workspace = Workspace(root=root, new_dir=root / "new_gts", used_dir=root / "used_gts",
                              model_dir=root / "model",
                              tracking_uri="sqlite:///" + str(root / "store" / "mlflow.db"))
        for path in (workspace.new_dir, workspace.used_dir, workspace.model_dir,
                     root / "store", root / "fresh"):
            path.mkdir()
        write_csvs(workspace.used_dir, "history", history)
        buffer = io.StringIO()
        captured = _Captured(buffer)
        with contextlib.redirect_stdout(buffer):
            register_pickle(workspace, train_on_folder(workspace.used_dir), captured)
            write_csvs(workspace.new_dir, "new", new)
            code, summary = run_json(pipeline_orchestrator,
                                     [*workspace.flags, "--min-new-files", "5", *extra],
                                     captured)
        if code != 0:
            raise RuntimeError(f"{kind} seed {seed}: the cycle exited {code}")
        result = {"kind": kind, "seed": seed, "flags": " ".join(extra),
                  "outcome": summary["outcome"], "window": summary.get("training_window"),
                  "heldout_production_error": summary.get("production_error"),
                  "heldout_challenger_error": summary.get("challenger_error")}
        if summary.get("challenger_version"):
            write_csvs(root / "fresh", "fresh", fresh_stream(FRESH_FILES, 9000))
            features, labels = concat_files(read_folder(root / "fresh"))
            mlflow.set_tracking_uri(workspace.tracking_uri)
            for role, version in (("production", "1"),
                                  ("challenger", summary["challenger_version"])):
                model = mlflow.sklearn.load_model(f"models:/classifier/{version}")
                result[f"true_{role}_error"] = float(np.mean(model.predict(features) != labels))
        return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12, help="noisy streams (12)")
    parser.add_argument("--changes", type=int, default=6,
                        help="streams of each kind of change (6)")
    args = parser.parse_args(argv)
    plan = ([("noise", seed, []) for seed in range(args.seeds)]
            + [("noise", seed, ["--no-require-significance"]) for seed in range(args.seeds)]
            + [(kind, seed, []) for kind in ("concept", "covariate")
               for seed in range(args.changes)])
    results = []
    for kind, seed, extra in plan:
        results.append(run_one(kind, seed, extra))
        row = results[-1]
        truth = (f"  true error {row['true_production_error']:.4f} -> "
                 f"{row['true_challenger_error']:.4f}" if "true_challenger_error" in row else "")
        print(f"{kind:9} seed {seed:2} {row['flags'] or 'defaults':27} {row['outcome']:9} "
              f"{row['window'] or '-':8}{truth}", flush=True)
    print("\nkind       gate                         promoted  truly better when promoted")
    for kind, flags in (("noise", ""), ("noise", "--no-require-significance"),
                        ("concept", ""), ("covariate", "")):
        rows = [r for r in results if r["kind"] == kind and r["flags"] == flags]
        promoted = [r for r in rows if r["outcome"] == "promoted"]
        better = sum(r["true_challenger_error"] < r["true_production_error"] for r in promoted)
        print(f"{kind:10} {flags or 'defaults':28} {len(promoted):2} of {len(rows):2}  "
              f"{better} of {len(promoted)}")
    out = write_results("gate-", {"results": results})
    print(f"\nwritten to {out.relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
