"""A seeded stream of labelled CSV files from machines whose operating regime drifts.

Each row is one machine reading; the label is its state: `ok`, `worn` or `fault`.
History covers normal operating temperatures. Batches from the drifted regime run hotter,
where a rule that history never showed takes over (heat plus vibration means a fault),
so a model trained on history alone misses it and retraining has a visible reason.

    python demo/generate_stream.py --used-dir used_gts --new-dir new_gts

Files are written under a temporary name and renamed, the protocol any writer into
new_gts/ should follow. Features mix numbers with gaps, text categories and TRUE/FALSE.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

MACHINE_TYPES = np.array(["press", "lathe", "mill", "drill"])


def readings(rows: int, drift: float, generator: np.random.Generator,
             label_noise: float = 0.02, worn_after_hours: float = 7_000) -> pd.DataFrame:
    """`rows` readings; drift 0 is the historic regime, 1 the fully drifted one.

    `worn_after_hours` is the labelling policy: lowering it is a change of concept, where
    the same readings get other labels than history gave them.
    """
    temperature = generator.normal(55 + 27 * drift, 6, rows)
    vibration = generator.gamma(2.0, 1.0 + 0.6 * drift, rows)
    hours = generator.uniform(0, 10_000, rows)
    pressure = generator.normal(5, 1, rows)
    machine = generator.choice(MACHINE_TYPES, rows, p=[0.4, 0.3, 0.2, 0.1])
    serviced = generator.random(rows) < 0.5

    worn = (hours > worn_after_hours) & ~serviced
    fault = (pressure > 6.8) | ((machine == "drill") & (vibration > 5))
    # The drifted regime's rule: history almost never reaches these temperatures.
    fault |= (temperature > 76) & (vibration > 2.5)
    state = np.where(fault, "fault", np.where(worn, "worn", "ok"))
    flip = generator.random(rows) < label_noise
    state[flip] = generator.choice(["ok", "worn", "fault"], int(flip.sum()))

    frame = pd.DataFrame({
        "temperature": temperature.round(2), "vibration": vibration.round(3),
        "operating_hours": hours.round(0), "pressure": pressure.round(3),
        "machine_type": machine, "serviced": np.where(serviced, "TRUE", "FALSE"),
    })
    for column in ("temperature", "pressure"):  # sensors drop out now and then
        frame.loc[generator.random(rows) < 0.01, column] = np.nan
    frame["label"] = state
    return frame


def write_atomically(frame: pd.DataFrame, path: Path) -> None:
    partial = path.with_name(path.name + ".part")
    frame.to_csv(partial, index=False)
    os.replace(partial, path)


def generate(used_dir: Path, new_dir: Path, history_files: int, new_files: int,
             rows_per_file: int, seed: int, drift: float = 1.0) -> None:
    generator = np.random.default_rng(seed)
    used_dir.mkdir(parents=True, exist_ok=True)
    new_dir.mkdir(parents=True, exist_ok=True)
    for index in range(history_files):
        write_atomically(readings(rows_per_file, 0.0, generator),
                         used_dir / f"readings_history_{index:04d}.csv")
    for index in range(new_files):
        write_atomically(readings(rows_per_file, drift, generator),
                         new_dir / f"readings_batch_{index:04d}.csv")


def main(argv=None) -> int:
    project = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--used-dir", type=Path, default=project / "used_gts")
    parser.add_argument("--new-dir", type=Path, default=project / "new_gts")
    parser.add_argument("--history-files", type=int, default=40)
    parser.add_argument("--new-files", type=int, default=20)
    parser.add_argument("--rows-per-file", type=int, default=500)
    parser.add_argument("--drift", type=float, default=1.0,
                        help="0: new files like history, 1: fully drifted")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    generate(args.used_dir, args.new_dir, args.history_files, args.new_files,
             args.rows_per_file, args.seed, args.drift)
    print(f"wrote {args.history_files} history files to {args.used_dir} "
          f"and {args.new_files} new files to {args.new_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
