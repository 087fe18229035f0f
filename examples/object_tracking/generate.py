"""Seeded object-tracking output for the example domain: one CSV per video sequence.

Each row is one detection (`object_id`, `frame`, `x`, `y`, `width`, `height`, `score`) and
`ground_truth` says whether its object is really there (1) or a false positive (0).

Before the change, false positives are flickers: short tracks with low scores, and an
object's size says nothing about whether it is real. After it (say the camera was moved
behind a window), they are also reflections: small boxes that last and score as high as
real objects, while every real object is large. A small, long-lived, confident object is
real in the old concept and false in the new one, so a model trained on the old files counts
reflections as objects and a model retrained on the new files does not.

    python examples/object_tracking/generate.py --used-dir used_gts --new-dir new_gts
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

FRAMES = 40
TYPICAL_SIZE = 40.0  # pixels: the median object's width
# After the change, an object smaller than this is a reflection; real objects are larger.
REFLECTION_SIZE = 32.0


def sequence(generator: np.random.Generator, changed: bool, real_objects=(4, 8),
             flickers=(2, 5), reflections=(2, 4)) -> pd.DataFrame:
    """The detections of one sequence, in frame order; `changed` picks the new concept."""
    objects = []
    for _ in range(generator.integers(*real_objects, endpoint=True)):
        size = _size(generator, at_least=REFLECTION_SIZE if changed else 0.0)
        objects.append((1, size, generator.integers(6, 21), 0.75))
    for _ in range(generator.integers(*flickers, endpoint=True)):
        objects.append((0, _size(generator), generator.integers(1, 6), 0.45))
    if changed:
        for _ in range(generator.integers(*reflections, endpoint=True)):
            size = generator.uniform(0.45, 0.8) * REFLECTION_SIZE
            objects.append((0, size, generator.integers(6, 21), 0.75))
    order = generator.permutation(len(objects))
    detections = [_track(generator, object_id, *objects[index])
                  for object_id, index in enumerate(order, start=1)]
    frame = pd.concat(detections, ignore_index=True)
    return frame.sort_values(["frame", "object_id"], kind="stable", ignore_index=True)


def _size(generator: np.random.Generator, at_least: float = 0.0) -> float:
    while True:
        size = TYPICAL_SIZE * generator.lognormal(0.0, 0.35)
        if size >= at_least:
            return size


def _track(generator: np.random.Generator, object_id: int, real: int, size: float,
           length: int, mean_score: float) -> pd.DataFrame:
    start = generator.integers(0, FRAMES - length + 1)
    frames = np.arange(start, start + length)
    x0, y0 = generator.uniform(0, 600), generator.uniform(0, 400)
    step = generator.normal(0, 3, 2)
    width = size * generator.normal(1.0, 0.06, length)
    return pd.DataFrame({
        "object_id": object_id,
        "frame": frames,
        "x": (x0 + step[0] * (frames - start) + generator.normal(0, 1.5, length)).round(1),
        "y": (y0 + step[1] * (frames - start) + generator.normal(0, 1.5, length)).round(1),
        "width": width.round(1),
        "height": (width * generator.normal(1.6, 0.08, length)).round(1),
        "score": np.clip(generator.normal(mean_score, 0.12, length), 0.01, 0.99).round(3),
        "ground_truth": real,
    })


def sequences(count: int, changed: bool, seed: int) -> list[pd.DataFrame]:
    generator = np.random.default_rng(seed)
    return [sequence(generator, changed) for _ in range(count)]


def write_atomically(frame: pd.DataFrame, path: Path) -> None:
    # The writer protocol of new_gts/: a partial name is never taken by the cycle.
    partial = path.with_name(path.name + ".part")
    frame.to_csv(partial, index=False)
    os.replace(partial, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--used-dir", type=Path, required=True)
    parser.add_argument("--new-dir", type=Path, required=True)
    parser.add_argument("--history-files", type=int, default=16)
    parser.add_argument("--new-files", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    batches = ((args.used_dir, "history", sequences(args.history_files, False, args.seed)),
               (args.new_dir, "sequence", sequences(args.new_files, True, args.seed + 1)))
    for folder, prefix, frames in batches:
        folder.mkdir(parents=True, exist_ok=True)
        for index, frame in enumerate(frames):
            write_atomically(frame, folder / f"{prefix}_{index:03d}.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
