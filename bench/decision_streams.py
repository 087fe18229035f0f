"""How good the cycle's promotion decisions are over many nights, measured against the truth.

    /path/to/python bench/decision_streams.py [--cycles 8] [--seeds 2] [--streams a,b] [--quick]

bench/gate_streams.py judges one cycle per stream. Here each seeded stream is a sequence of
cycles, and what counts is what production is on each night, not one verdict:

- stationary: machine readings with 10% label noise (readings' `label_noise`), nothing
  changes; run with --error-threshold 0, so every night retrains and the gate alone decides.
- gradual: the inputs drift a little more every cycle (readings' `drift` from 1/n to 1).
- abrupt: the labelling policy changes at cycle 3 (worn after 7,000 -> 3,500 hours).
- recurring: policy A for the first third of the cycles, B for the second, A again.
- noisy_batch: stationary (readings' default 2% label noise), but the labels of one batch
  (mid-stream) are 40% flipped to another class: a good gate does not promote on it.
- rare_class: a binary stream of this file's own (x1..x4, about 2% positives) whose positives
  move to another region of the inputs mid-stream. The overall error stays small, so the cycle
  says `healthy` while production's recall of the minority class collapses; that recall is
  reported per cycle.
- small_files: 15 new files of 40 rows a night (the default trigger; history is 60 such
  files), in a hotter regime from cycle 2 on (drift 1.0): the held-out share must grow to
  what the gate needs.
- per_file_metric: the object-tracking example (examples/object_tracking/: ERROR_PER_FILE and
  a counting error per video), 15 videos a night, false positives change at cycle 3.

Every cycle is the real one (pipeline_orchestrator.main with --json, in-process) on an
embedded SQLite store in a temporary folder; the first model is trained on the history and
registered as tests/conftest.py does. The batch is written into new_gts/, the cycle archives
what it consumes; a batch it defers stays there and the next night's files join it.

Truth: after each cycle, the model behind the alias `production` (read from the registry) and
every challenger registered that cycle are scored on at least --fresh-rows fresh rows drawn
from the stream's current concept, with the domain's own error as the cycle computes it
(pooled over rows, or averaged over files for a per-file metric). From that, per stream:

- false promotion: a promoted challenger truly worse than the production it replaced by more
  than 0.005, or any other move of the alias (an earlier version, probation) that left
  production so much worse; false rejection: a challenger not promoted although truly better
  by more than 0.01 than production both before and after the cycle (one passed over for an
  earlier version that is as good is not);
- production's mean true error over the cycles, beside three policies simulated here on the
  same batches, with the same train function and seed as the cycle, scored on the same fresh
  rows: naive (retrain on all data so far every night and promote whenever the challenger's
  error on its own training rows is below production's on the new files), oracle_latest
  (a model of the latest batch only), oracle_all (a model of all data so far).

Prints a markdown table and writes every cycle's details to bench/results/decisions-<time>.json.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

# One thread for every fit, as in tests/conftest.py: on a shared 2-core machine libgomp's
# spinning threads can make a fit many times slower. Set before scikit-learn is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from bench.gate_streams import _Captured  # noqa: E402
from bench.run_bench import write_results  # noqa: E402

DEFAULT_DOMAIN = PROJECT_DIR / "train_classification_model.py"
TRACKING_DOMAIN = PROJECT_DIR / "examples" / "object_tracking" / "train_classification_model.py"
MODEL_NAME, ALIAS = "classifier", "production"
SEED = 42  # the cycle's --seed, passed explicitly; the simulated policies train with it too
FALSE_PROMOTION = 0.005  # a promoted challenger truly worse than this is a false promotion
FALSE_REJECTION = 0.01  # a rejected challenger truly better than this is a false rejection
FRESH_FILE_ROWS = 5_000  # fresh rows are written as files of this size (not per-file domains)
MACHINE_STATES = ("ok", "worn", "fault")  # the classes of demo/generate_stream.readings


# --- the streams -----------------------------------------------------------------------------

def _never(cycle: int, cycles: int) -> float:
    return 0.0


@dataclasses.dataclass(frozen=True)
class Stream:
    """A seeded stream: what its history is, and what each cycle delivers."""

    name: str
    rows_from: str  # "machine" (readings), "rare" (rare_events) or "tracking" (sequences)
    # (cycle, cycles) -> the generator's settings of that cycle's concept; cycle 0 is history.
    concept: Callable[[int, int], dict]
    files: int = 10  # new files a cycle, and so the cycle's --min-new-files
    rows: int = 300  # rows per file (tracking: one video per file, as many rows as it has)
    history_files: int = 8
    history_rows: int = 300  # rows per history file
    flags: tuple[str, ...] = ()  # the cycle's settings beyond the defaults
    # (cycle, cycles) -> share of that batch's labels flipped to another class.
    flipped: Callable[[int, int], float] = _never

    @property
    def domain_file(self) -> Path:
        return TRACKING_DOMAIN if self.rows_from == "tracking" else DEFAULT_DOMAIN

    @property
    def label_column(self) -> str:
        return "ground_truth" if self.rows_from == "tracking" else "label"


def policy_hours(new_policy: bool) -> dict:
    from tests.test_windows import NEW_POLICY_HOURS

    return {"worn_after_hours": NEW_POLICY_HOURS if new_policy else 7_000}


def recurring_phase(cycle: int, cycles: int) -> int:
    """0, 1, 2 for the first, second and last third of the cycles (history is in the first)."""
    return 0 if cycle == 0 else (cycle - 1) * 3 // cycles


def noisy_cycle(cycles: int) -> int:
    return max(2, cycles // 2)


def rare_change_cycle(cycles: int) -> int:
    return max(2, cycles // 3 + 1)


STREAMS = {stream.name: stream for stream in [
    Stream("stationary", "machine", lambda c, n: {"label_noise": 0.10},
           flags=("--error-threshold", "0")),
    Stream("gradual", "machine", lambda c, n: {"drift": round(c / n, 3)}),
    Stream("abrupt", "machine", lambda c, n: policy_hours(c >= 3)),
    Stream("recurring", "machine", lambda c, n: policy_hours(recurring_phase(c, n) == 1)),
    Stream("noisy_batch", "machine", lambda c, n: {},
           flipped=lambda c, n: 0.4 if c == noisy_cycle(n) else 0.0),
    # More history than the others: 2% of 2,400 rows would be some 50 positives to learn from.
    Stream("rare_class", "rare", lambda c, n: {"moved": c >= rare_change_cycle(n)},
           history_files=16),
    # History in small files too, as many rows as the others' (60 x 40 = 2,400).
    Stream("small_files", "machine", lambda c, n: {"drift": 1.0 if c >= 2 else 0.0},
           files=15, rows=40, history_files=60, history_rows=40),
    Stream("per_file_metric", "tracking", lambda c, n: {"changed": c >= 3}, files=15,
           history_files=16),
]}


def rare_events(count: int, seed: int, rows: int, moved: bool):
    """`count` files of a binary stream with about 2% positives (label 1).

    Four standard normal features; a row is positive in a corner of (x1, x2) before the
    change and in a corner of (x3, x4) after it: a model of the old rule then misses almost
    every positive, yet errs on only about 4% of rows, under the default threshold of 0.1.
    """
    import numpy as np
    import pandas as pd

    generator = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        x = generator.normal(0.0, 1.0, (rows, 4))
        # P(x > 1.55) * P(x > 0.45) = 0.061 * 0.326: 2.0% of rows.
        positive = ((x[:, 2] < -1.55) & (x[:, 3] > 0.45)) if moved \
            else ((x[:, 0] > 1.55) & (x[:, 1] > 0.45))
        frame = pd.DataFrame(x.round(4), columns=["x1", "x2", "x3", "x4"])
        frame["label"] = positive.astype(int)
        frames.append(frame)
    return frames


def make_frames(stream: Stream, concept: dict, count: int, seed: int, rows: int) -> list:
    from examples.object_tracking.generate import sequences
    from tests.test_windows import stream as machine_stream

    if stream.rows_from == "machine":
        return machine_stream(count, seed=seed, rows=rows, **concept)
    if stream.rows_from == "rare":
        return rare_events(count, seed, rows, **concept)
    return sequences(count, changed=concept["changed"], seed=seed)


def flip_labels(frames: list, share: float, seed: int) -> list:
    """Each label flipped, with probability `share`, to one of the other classes."""
    import numpy as np

    generator = np.random.default_rng(seed)
    classes = np.array(MACHINE_STATES)
    number = {state: index for index, state in enumerate(MACHINE_STATES)}
    flipped = []
    for frame in frames:
        index = np.array([number[label] for label in frame["label"]])
        chosen = generator.random(len(frame)) < share
        # A shift of 1 or 2 classes round the three: always another class, never the same.
        index[chosen] = (index[chosen] + generator.integers(1, len(classes), chosen.sum())) \
            % len(classes)
        flipped.append(frame.assign(label=classes[index]))
    return flipped


# --- truth -----------------------------------------------------------------------------------

class Truth:
    """True errors on fresh rows of each concept, drawn once per concept and read by the
    product's own reader; models loaded from the registry once per version."""

    def __init__(self, stream: Stream, domain, columns: list[str], folder: Path, seed: int,
                 fresh_rows: int, tracking_uri: str):
        self.stream, self.domain, self.columns = stream, domain, columns
        self.folder, self.seed, self.fresh_rows = folder, seed, fresh_rows
        self.tracking_uri = tracking_uri
        self._fresh: dict[str, list] = {}
        self._models: dict[str, object] = {}
        self._errors: dict[tuple[str, str], dict] = {}

    def fresh(self, concept: dict) -> list:
        from retraining.datafiles import list_data_files, load_files
        from tests.conftest import write_csvs

        key = json.dumps(concept, sort_keys=True)
        if key not in self._fresh:
            folder = self.folder / f"concept_{len(self._fresh):02d}"
            folder.mkdir(parents=True)
            # A seed of its own per concept, far from the history's and the batches'.
            seed = self.seed + 50_000 + 97 * len(self._fresh)
            frames, rows = [], 0
            while rows < self.fresh_rows:
                if self.stream.rows_from == "tracking":  # whole videos, until enough rows
                    more = make_frames(self.stream, concept, 100, seed + len(frames), 0)
                else:
                    count = math.ceil((self.fresh_rows - rows) / FRESH_FILE_ROWS)
                    more = make_frames(self.stream, concept, count, seed, FRESH_FILE_ROWS)
                frames += more
                rows += sum(len(frame) for frame in more)
            write_csvs(folder, "fresh", frames)
            self._fresh[key] = load_files(list_data_files(folder), self.stream.label_column,
                                          self.domain.prepare_file)
        return self._fresh[key]

    def model(self, version: str):
        import mlflow
        import mlflow.sklearn

        if version not in self._models:
            mlflow.set_tracking_uri(self.tracking_uri)
            self._models[version] = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}/{version}")
        return self._models[version]

    def score(self, model, concept: dict) -> dict:
        """The domain's error of `model` on the fresh rows, and its recall of class 1 (the
        minority class of rare_class; None in the other streams)."""
        import numpy as np

        from retraining.evaluation import error_on, predict_files

        fresh = self.fresh(concept)
        predictions = predict_files(model, fresh, self.columns)
        scored = {"error": error_on(self.domain, fresh, predictions), "recall": None}
        if self.stream.rows_from == "rare":
            labels = np.concatenate([np.asarray(f.labels) for f in fresh])
            predicted = np.concatenate([np.asarray(predictions[f.name]) for f in fresh])
            scored["recall"] = float(np.mean(predicted[labels == 1] == 1))
        return scored

    def of_version(self, version: str, concept: dict) -> dict:
        key = (version, json.dumps(concept, sort_keys=True))
        if key not in self._errors:
            self._errors[key] = self.score(self.model(version), concept)
        return self._errors[key]


# --- one stream, cycle after cycle -----------------------------------------------------------

class _Kept(_Captured):
    """gate_streams' stand-in for pytest's capsys, keeping the last output: run_json drops the
    JSON of a failed cycle, whose reason is the one thing to print then."""

    last = ""

    def readouterr(self):
        captured = super().readouterr()
        self.last = captured.out
        return captured


class Policies:
    """naive, oracle_latest and oracle_all, simulated on the batches the product receives."""

    def __init__(self, domain, columns: list[str], history: list, first_model):
        self.domain, self.columns = domain, columns
        self.seen = list(history)  # all data so far
        self.naive = first_model

    def error(self, model, files: list) -> float:
        from retraining.evaluation import error_on, predict_files

        return error_on(self.domain, files, predict_files(model, files, self.columns))

    def train(self, files: list):
        from retraining.datafiles import concat_files

        return self.domain.train(*concat_files(files, self.columns), random_state=SEED)

    def cycle(self, batch: list) -> dict:
        """This night's models of each policy; the naive policy's verdict on its challenger."""
        self.seen += batch
        on_all = self.train(self.seen)
        # The naive challenger is the same fit as oracle_all's model: all data so far.
        own_rows = self.error(on_all, self.seen)
        production_on_new = self.error(self.naive, batch)
        promoted = own_rows < production_on_new
        if promoted:
            self.naive = on_all
        return {"models": {"naive": self.naive, "oracle_latest": self.train(batch),
                           "oracle_all": on_all},
                "naive_promoted": promoted, "naive_challenger_own_rows_error": own_rows,
                "naive_production_new_files_error": production_on_new}


# What MLflow prints on stderr at every registration, 2 lines a cycle: it would bury the
# cycle's warnings. Only these lines are dropped.
MLFLOW_CHATTER = ("Successfully registered model '", "Registered model '", "Created version '")


@contextlib.contextmanager
def mlflow_chatter_dropped():
    """Pass stderr through, less MLflow's registration lines."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines(keepends=True):
            if not line.startswith(MLFLOW_CHATTER):
                sys.stderr.write(line)


def production_version(client) -> str:
    return str(client.get_model_version_by_alias(MODEL_NAME, ALIAS).version)


def run_stream(stream: Stream, seed: int, cycles: int, fresh_rows: int) -> dict:
    import mlflow

    import pipeline_orchestrator
    from retraining.datafiles import concat_files, list_data_files, load_files
    from retraining.domain import load_domain
    from tests.conftest import Workspace, register_pickle, run_json, train_on_folder, write_csvs

    started = time.perf_counter()
    # Each stream its own seeds, so that stationary and noisy_batch do not share rows.
    base = 100_000 * list(STREAMS).index(stream.name) + 1_000 * seed
    domain_flags = ["--domain-file", str(stream.domain_file),
                    "--label-column", stream.label_column]
    result = {"stream": stream.name, "seed": seed, "flags": " ".join(stream.flags),
              "files_per_cycle": stream.files, "cycles": [], "failed": None}
    with tempfile.TemporaryDirectory(prefix="decisions-") as folder:
        root = Path(folder)
        workspace = Workspace(root=root, new_dir=root / "new_gts", used_dir=root / "used_gts",
                              model_dir=root / "model",
                              tracking_uri="sqlite:///" + str(root / "store" / "mlflow.db"))
        for path in (workspace.new_dir, workspace.used_dir, workspace.model_dir,
                     root / "store"):
            path.mkdir()
        domain = load_domain(stream.domain_file)
        write_csvs(workspace.used_dir, "history",
                   make_frames(stream, stream.concept(0, cycles), stream.history_files,
                               base + 1, stream.history_rows))
        history = load_files(list_data_files(workspace.used_dir), stream.label_column,
                             domain.prepare_file)
        columns = list(history[0].features.columns)
        # The first model as the tests train it; the example domain through its own hook.
        first = train_on_folder(workspace.used_dir) if stream.domain_file == DEFAULT_DOMAIN \
            else domain.train(*concat_files(history, columns), random_state=0)
        captured = _Kept(io.StringIO())
        with contextlib.redirect_stdout(captured.buffer), mlflow_chatter_dropped():
            register_pickle(workspace, first, captured,
                            extra=[*domain_flags, "--quarantine-dir",
                                   str(workspace.quarantine_dir)])
        client = mlflow.MlflowClient(tracking_uri=workspace.tracking_uri)
        truth = Truth(stream, domain, columns, root / "fresh", base, fresh_rows,
                      workspace.tracking_uri)
        policies = Policies(domain, columns, history, first)
        known_versions = {"1"}
        for cycle in range(1, cycles + 1):
            concept = stream.concept(cycle, cycles)
            frames = make_frames(stream, concept, stream.files, base + 10 + cycle, stream.rows)
            flipped = stream.flipped(cycle, cycles)
            if flipped:
                frames = flip_labels(frames, flipped, base + 900 + cycle)
            # A deferred batch is still in new_gts/: this night's files join it, as in
            # production, and nothing here removes it.
            waiting = len(list_data_files(workspace.new_dir))
            paths = write_csvs(workspace.new_dir, f"c{cycle:02d}", frames)
            batch = load_files(paths, stream.label_column, domain.prepare_file)
            before = production_version(client)
            cycle_started = time.perf_counter()
            with contextlib.redirect_stdout(captured.buffer), mlflow_chatter_dropped():
                code, summary = run_json(
                    pipeline_orchestrator,
                    [*workspace.flags, *domain_flags, "--min-new-files", str(stream.files),
                     "--seed", str(SEED), *stream.flags], captured)
            cycle_seconds = time.perf_counter() - cycle_started
            if code != 0:
                failure = captured.last.strip().splitlines()[-1:] or [""]
                result["failed"] = f"cycle {cycle} exited {code}: {failure[0][:2000]}"
                break

            truth_started = time.perf_counter()
            after = production_version(client)
            versions = {str(v.version) for v in
                        client.search_model_versions(f"name='{MODEL_NAME}'")}
            new_versions = sorted(versions - known_versions, key=int)
            known_versions |= versions
            true_before = truth.of_version(before, concept)
            true_after = truth.of_version(after, concept)
            challengers = []
            for version in new_versions:
                scored = truth.of_version(version, concept)
                # The version it faced, as the cycle recorded it: production at the start
                # of the cycle, unless probation moved the alias back before the retrain.
                faced = client.get_model_version(MODEL_NAME, version).tags.get(
                    "compared_with_version", before)
                # Positive: the challenger is truly better than the production it faced.
                gain = truth.of_version(faced, concept)["error"] - scored["error"]
                promoted = version == after
                challengers.append({
                    "version": version, "compared_with": faced, "promoted": promoted,
                    "true_error": scored["error"], "true_recall": scored["recall"],
                    "true_gain": gain, "false_promotion": promoted and -gain > FALSE_PROMOTION,
                    # Rejected, or passed over for an earlier version, while truly better
                    # than what production ended the night as.
                    "false_rejection": not promoted and gain > FALSE_REJECTION
                    and true_after["error"] - scored["error"] > FALSE_REJECTION})
            # Why the cycle retrained (or not) is on its monitoring run, not in the summary.
            monitoring_reason = summary.get("monitoring_run_id") and client.get_run(
                summary["monitoring_run_id"]).data.tags.get("reason")
            simulated = policies.cycle(batch)
            policy_scores = {name: truth.score(model, concept)
                             for name, model in simulated.pop("models").items()}
            result["cycles"].append({
                "cycle": cycle, "concept": concept, "flipped_share": flipped,
                "files_delivered": len(paths), "files_waiting_before": waiting,
                "new_files": summary.get("new_files"), "outcome": summary["outcome"],
                "reason": summary["reason"], "monitoring_reason": monitoring_reason,
                "probation": summary.get("probation"),
                # How the alias moved, if it did: to this cycle's challenger, back by
                # probation, or to an earlier version the gate judged beside the challenger.
                "move": alias_move(before, after, new_versions, summary),
                "rolled_back": bool((summary.get("probation") or {}).get("rolled_back")),
                # Any move that left production truly worse than before is a false one.
                "false_move": after != before
                and true_after["error"] - true_before["error"] > FALSE_PROMOTION,
                "earlier_versions": summary.get("earlier_versions"),
                "training_window": summary.get("training_window"),
                "heldout_files": len(summary.get("heldout_files") or []),
                "monitoring_error": summary.get("monitoring_error"),
                "heldout_production_error": summary.get("production_error"),
                "heldout_challenger_error": summary.get("challenger_error"),
                "challenger_version": summary.get("challenger_version"),
                "production_version_before": summary.get("production_version_before"),
                "production_version_after": summary.get("production_version_after"),
                "production_before": before, "production_after": after,
                "archived_files": len(summary.get("archived_files") or []),
                "files_left_in_new_gts": len(list_data_files(workspace.new_dir)),
                "quarantined_files": len(summary.get("quarantined_files") or []),
                "true_error_production_before": true_before["error"],
                "true_error_production": true_after["error"],
                "true_recall_production": true_after["recall"],
                "challengers": challengers,
                "policies": {name: scored["error"] for name, scored in policy_scores.items()},
                "policy_recall": {name: scored["recall"]
                                  for name, scored in policy_scores.items()},
                **simulated,
                "cycle_seconds": round(cycle_seconds, 2),
                "timings": summary.get("timings"),
                "truth_seconds": round(time.perf_counter() - truth_started, 2)})
            print_cycle(stream, seed, result["cycles"][-1])
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def print_cycle(stream: Stream, seed: int, record: dict) -> None:
    versions = (f"v{record['production_before']}->v{record['production_after']}"
                + (" (rolled back)" if record["rolled_back"] else "")
                if record["production_after"] != record["production_before"]
                else f"v{record['production_after']}")
    challengers = " ".join(f"v{c['version']} {c['true_error']:.4f}"
                           + (" FALSE-PROMOTION" if c["false_promotion"] else "")
                           + (" FALSE-REJECTION" if c["false_rejection"] else "")
                           for c in record["challengers"])
    recall = (f" recall {record['true_recall_production']:.2f}"
              if record["true_recall_production"] is not None else "")
    policies = " ".join(f"{name} {error:.4f}" for name, error in record["policies"].items())
    # The reason up to its first colon names the check; the figures are in the JSON.
    reason = record["reason"].split(":")[0] if record["outcome"] != "healthy" else ""
    print(f"{stream.name:15} s{seed} c{record['cycle']:<2} {record['outcome']:9} "
          f"{record['training_window'] or '-':8} {versions:8} true "
          f"{record['true_error_production_before']:.4f}->{record['true_error_production']:.4f}"
          f"{recall} | {challengers or 'no challenger'} | {policies} | "
          f"{record['cycle_seconds']:.1f}+{record['truth_seconds']:.1f} s  {reason}",
          flush=True)


def alias_move(before: str, after: str, new_versions: list[str], summary: dict) -> str | None:
    """How the alias moved in a cycle: to its challenger, to an earlier version the gate
    judged beside it, or back by probation; None when it did not."""
    if after == before:
        return None
    if after in new_versions:
        return "challenger"
    if any(earlier["passed"] and earlier["version"] == after
           for earlier in summary.get("earlier_versions") or []):
        return "earlier_version"
    return "rollback" if (summary.get("probation") or {}).get("rolled_back") else "other"


# --- the report ------------------------------------------------------------------------------

def mean(values) -> float | None:
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


def false_promotions(challengers: list[dict], records: list[dict]) -> int:
    """Promoted challengers truly worse than what they replaced, and moves to an earlier
    version (or back by probation) that left production truly worse."""
    return (sum(c["false_promotion"] for c in challengers)
            + sum(record["false_move"] and record["move"] != "challenger" for record in records))


def table(results: list[dict], cycles: int) -> str:
    header = ("| stream | gate | cycles | outcomes | challengers | promotions | earlier "
              "versions promoted | false promotions | false rejections | rollbacks | product "
              "| naive | oracle_latest | oracle_all | wall s | minority recall of production, "
              "per cycle |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for name in dict.fromkeys(r["stream"] for r in results):
        runs = [r for r in results if r["stream"] == name]
        records = [c for run in runs for c in run["cycles"]]
        challengers = [c for record in records for c in record["challengers"]]
        outcomes = collections.Counter(record["outcome"] for record in records)
        shown = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        recall = "–"
        if STREAMS[name].rows_from == "rare":
            per_cycle = [mean(run["cycles"][index]["true_recall_production"]
                              for run in runs if index < len(run["cycles"]))
                         for index in range(cycles)]
            recall = " ".join("–" if value is None else f"{value:.2f}" for value in per_cycle)
        failed = sum(run["failed"] is not None for run in runs)
        errors = [mean(record["true_error_production"] for record in records)] + [
            mean(record["policies"][policy] for record in records)
            for policy in ("naive", "oracle_latest", "oracle_all")]
        lines.append(
            f"| {name}{f' ({failed} failed)' if failed else ''} | {runs[0]['flags'] or 'defaults'} "
            f"| {len(records)} | {shown} | {len(challengers)} "
            f"| {sum(c['promoted'] for c in challengers)} "
            f"| {sum(record['move'] == 'earlier_version' for record in records)} "
            f"| {false_promotions(challengers, records)} "
            f"| {sum(c['false_rejection'] for c in challengers)} "
            f"| {sum(record['rolled_back'] for record in records)} | "
            + " | ".join("–" if error is None else f"{error:.4f}" for error in errors)
            + f" | {sum(run['wall_seconds'] for run in runs):.0f} | {recall} |")
    return "\n".join(lines)


def reasons(results: list[dict]) -> str:
    """Per stream, the reasons of rejected and deferred cycles by the check that said no (the
    reason up to its first colon), rollbacks, and retrains that the error threshold did not
    call for; with the first full reason of each."""
    lines = []
    for name in dict.fromkeys(r["stream"] for r in results):
        seen: dict[str, list] = {}
        for run in results:
            if run["stream"] != name:
                continue
            for record in run["cycles"]:
                where = f"s{run['seed']} c{record['cycle']}"
                if record["outcome"] in ("rejected", "deferred", "skipped"):
                    head = f"{record['outcome']}: {record['reason'].split(':')[0]}"
                    seen.setdefault(head, []).append(f"{where}: {record['reason']}")
                if record["rolled_back"]:
                    seen.setdefault("alias moved back by probation", []).append(
                        f"{where}: {record['reason']}")
                monitored = record["monitoring_reason"] or ""
                if record["outcome"] != "healthy" and " within the threshold" in monitored:
                    seen.setdefault("retrained with the error within the threshold", []).append(
                        f"{where}: {monitored}")
            if run["failed"]:
                seen.setdefault("FAILED", []).append(f"s{run['seed']}: {run['failed']}")
        for head, examples in seen.items():
            lines.append(f"- {name}, {len(examples)}x {head}\n    e.g. {examples[0]}")
    return "\n".join(lines) or "(none)"


def code_state() -> dict:
    """The commit, the files of the cycle that differ from it, and a hash of the cycle's code
    as it is now: taken at the start and at the end, so a change made meanwhile is seen."""
    import hashlib

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True)
        return done.stdout.strip()

    sources = sorted((PROJECT_DIR / "retraining").glob("*.py")) + [
        PROJECT_DIR / "pipeline_orchestrator.py", DEFAULT_DOMAIN, TRACKING_DOMAIN]
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return {"commit": git("rev-parse", "HEAD"), "code_sha256": digest.hexdigest(),
            "changed_files": git("status", "--porcelain", "--", "retraining",
                                 "pipeline_orchestrator.py", "train_classification_model.py",
                                 "examples").splitlines()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, help="cycles per stream (8; --quick: 4)")
    parser.add_argument("--seeds", type=int, help="seeded runs per stream (2; --quick: 1)")
    parser.add_argument("--streams", default=",".join(STREAMS),
                        help=f"comma-separated, of: {', '.join(STREAMS)}")
    parser.add_argument("--fresh-rows", type=int, default=50_000,
                        help="fresh rows per concept that measure the truth (50,000)")
    parser.add_argument("--quick", action="store_true",
                        help="4 cycles, 1 seed: a smoke run of a few minutes")
    args = parser.parse_args(argv)
    cycles = args.cycles or (4 if args.quick else 8)
    seeds = args.seeds or (1 if args.quick else 2)
    names = [name.strip() for name in args.streams.split(",") if name.strip()]
    unknown = [name for name in names if name not in STREAMS]
    if unknown or cycles < 3:
        parser.error(f"unknown streams {unknown}" if unknown else "--cycles must be 3 or more")

    # The cycle logs every step at INFO: a root handler at WARNING first makes its
    # basicConfig a no-op, so only warnings (a deferred batch, say) reach stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    import mlflow  # noqa: F401 (it sets its own logger's level when imported: then ours)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # MLflow's hint on every model with integer inputs (the example's object ids), a dozen
    # lines each time: the inputs are whole numbers by design.
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
    started = time.perf_counter()
    code_at_start = code_state()
    results = []
    for name in names:
        for seed in range(seeds):
            try:
                results.append(run_stream(STREAMS[name], seed, cycles, args.fresh_rows))
            except Exception:  # one broken stream must not cost the others' half hour
                traceback.print_exc()
                results.append({"stream": name, "seed": seed, "flags": " ".join(
                    STREAMS[name].flags), "cycles": [], "wall_seconds": 0.0,
                    "failed": traceback.format_exc(limit=3)})
            if results[-1]["failed"]:
                print(f"{name} seed {seed} FAILED: {results[-1]['failed']}", flush=True)
    markdown = table(results, cycles)
    wall = time.perf_counter() - started
    code_at_end = code_state()
    if code_at_end["code_sha256"] != code_at_start["code_sha256"]:
        # Modules imported in the first cycle stay as they were; one imported later may not.
        print("\nWARNING: the cycle's code changed during this run (retraining/, "
              "pipeline_orchestrator.py or a domain file)", flush=True)
    print(f"\n{cycles} cycles per stream, {seeds} seed(s), truth on >= {args.fresh_rows:,} "
          f"fresh rows per concept; mean true errors over the cycles (product = the model "
          f"behind '{ALIAS}' after each cycle); wall {wall:.0f} s in all\n")
    print(markdown)
    print(f"\noutcomes and promotions count cycles and challengers; a false promotion is a "
          f"promoted challenger truly worse than the production it replaced by more than "
          f"{FALSE_PROMOTION} (or any alias move that left production so much worse), a "
          f"false rejection a challenger not promoted although truly better by more than "
          f"{FALSE_REJECTION} than production before and after the cycle; product, naive, "
          "oracle_latest and oracle_all are the mean true "
          "errors of each one's production over the cycles; wall s is the streams' own time, "
          "truth and simulated policies included.")
    if "rare_class" in names:
        print(f"rare_class: positives move at cycle {rare_change_cycle(cycles)}.")
    print("\nreasons worth reading:\n" + reasons(results))
    out = write_results("decisions-", {
        "cycles": cycles, "seeds": seeds, "fresh_rows": args.fresh_rows,
        "seed_of_the_cycle": SEED, "false_promotion_above": FALSE_PROMOTION,
        "false_rejection_above": FALSE_REJECTION, "wall_seconds": round(wall, 1),
        "code_at_start": code_at_start, "code_at_end": code_at_end,
        "table": markdown, "results": results}, default=str)
    print(f"\nwritten to {out.relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
