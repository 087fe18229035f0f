"""The promotion gate (not fooled by noise, a small held-out set or one bad file) , what a
reviewer sees of it in MLflow, and the lineage of every version."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retraining.config import Settings, build_settings
from retraining.datafiles import list_data_files, load_file, load_files
from retraining.domain import Domain
from retraining.gate import HeldoutScores, bootstrap_difference, judge
from tests.conftest import PROJECT_DIR, cycle, machine_files, train_on_folder, write_csvs

EVALUATION_ARTIFACTS = {"comparison.csv", "comparison.md", "heldout_per_file.csv",
                        "classification_report.txt", "confusion_matrix.png", "roc_curve.png",
                        "precision_recall_curve.png"}
FIGURES = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss",
           "misclassification_rate")


# --- the bootstrap ---------------------------------------------------------------------------

def noisy_errors(files, seed=0):
    generator = np.random.default_rng(seed)
    production = generator.uniform(0.1, 0.3, files)
    challenger = production + generator.normal(-0.02, 0.05, files)
    rows = generator.integers(50, 500, files)
    return production, challenger, rows


def test_bootstrap_is_deterministic_with_its_seed_and_moves_with_it():
    production, challenger, rows = noisy_errors(40)
    first = bootstrap_difference(production, challenger, rows, resamples=500, level=0.9, seed=1)
    again = bootstrap_difference(production, challenger, rows, resamples=500, level=0.9, seed=1)
    other = bootstrap_difference(production, challenger, rows, resamples=500, level=0.9, seed=2)
    assert first == again
    assert (other.low, other.high) != (first.low, first.high)


def test_bootstrap_interval_contains_the_row_weighted_point_estimate():
    production, challenger, rows = noisy_errors(30, seed=3)
    interval = bootstrap_difference(production, challenger, rows, resamples=2000, level=0.95,
                                    seed=42)
    # Row weights make the statistic the pooled difference of a row-averaged error.
    pooled = (rows @ challenger - rows @ production) / rows.sum()
    assert interval.estimate == pytest.approx(pooled)
    assert interval.low < interval.estimate < interval.high
    wider = bootstrap_difference(production, challenger, rows, resamples=2000, level=0.99,
                                 seed=42)
    assert wider.low <= interval.low and wider.high >= interval.high


def test_identical_models_give_an_interval_of_zero():
    production, _, rows = noisy_errors(25)
    interval = bootstrap_difference(production, production.copy(), rows, resamples=1000,
                                    level=0.95, seed=42)
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)


def test_bootstrap_over_a_thousand_files_takes_well_under_a_second():
    production, challenger, rows = noisy_errors(1000)
    started = time.perf_counter()
    bootstrap_difference(production, challenger, rows, resamples=2000, level=0.95, seed=42)
    assert time.perf_counter() - started < 1.0


def one_heldout_file(production_wrong: int, challenger_wrong: int, rows: int = 400):
    """Scores of two models on one held-out file, wrong on the given numbers of rows,
    spread through the file."""
    from retraining.datafiles import LoadedFile
    from retraining.domain import load_domain
    from retraining.gate import score_heldout

    labels = np.zeros(rows, dtype=int)
    production, challenger = labels.copy(), labels.copy()
    production[np.linspace(0, rows - 1, production_wrong).astype(int)] = 1
    challenger[np.linspace(3, rows - 1, challenger_wrong).astype(int)] = 1
    loaded = LoadedFile(path=Path("only.csv"), sha256="0" * 64, features=None, labels=labels,
                        dropped_rows=0, identity=())
    domain = load_domain(PROJECT_DIR / "train_classification_model.py")
    return domain, score_heldout(domain, [loaded], {"only.csv": production},
                                 {"only.csv": challenger})


def test_one_heldout_file_is_resampled_by_its_rows():
    domain, clear = one_heldout_file(production_wrong=120, challenger_wrong=20)
    verdict = judge(domain, clear, gate_settings())
    assert verdict.promote, verdict.reason
    # The file's 400 rows are resampled in slices: the interval has width, around -0.25.
    assert -0.32 < verdict.interval.low < -0.25 < verdict.interval.high < -0.18

    domain, slight = one_heldout_file(production_wrong=24, challenger_wrong=20)
    verdict = judge(domain, slight, gate_settings())
    assert not verdict.promote and "not significantly better" in verdict.reason
    assert verdict.interval.low < -0.01 < 0 < verdict.interval.high


def test_a_heldout_file_too_small_to_slice_gives_no_significance():
    domain, tiny = one_heldout_file(production_wrong=20, challenger_wrong=0, rows=40)
    settings = gate_settings(min_heldout_rows=0)
    verdict = judge(domain, tiny, settings)
    assert not verdict.promote
    assert "has 1 row slices of held-out files to resample, fewer than the 6" in verdict.reason
    assert judge(domain, tiny, dataclasses.replace(settings, require_significance=False)).promote


def test_a_metric_undefined_on_a_slice_resamples_whole_files_and_says_so():
    from retraining.datafiles import LoadedFile
    from retraining.gate import score_heldout

    def two_class_error(labels, predictions):
        # Like a ROC AUC: undefined unless both classes are present.
        if len(set(np.asarray(labels).tolist())) < 2:
            raise ValueError("only one class present")
        return float(np.mean(np.asarray(labels) != np.asarray(predictions)))

    domain = Domain(source=Path("d.py"), prepare_file=None, train_model=None,
                    error_metric=two_class_error, error_metric_name="two_class_error",
                    error_per_file=False, lower_error_is_better=True)
    labels = np.repeat([0, 1], 200)  # sorted: every slice holds one class
    production, challenger = labels.copy(), labels.copy()
    production[::4] = 1 - production[::4]

    def loaded(name):
        return LoadedFile(path=Path(name), sha256=name * 64, features=None, labels=labels,
                          dropped_rows=0, identity=())

    def judged(names):
        files = [loaded(name) for name in names]
        return judge(domain, score_heldout(domain, files, {n: production for n in names},
                                           {n: challenger for n in names}), gate_settings())

    alone = judged(["a"])
    assert not alone.promote
    assert "has 1 held-out files to resample" in alone.reason
    assert ("resampling whole files only: error_metric failed on rows 0-25 of held-out file a "
            "(ValueError: only one class present)") in alone.reason

    six = judged([*"abcdef"])
    assert six.promote and "resampling whole files only: error_metric failed" in six.reason


def test_a_metric_that_is_not_a_mean_over_rows_is_never_sliced():
    """1 - F1 with rare positives: a slice without positives hides the challenger's false
    positives (F1 is 0 for both), so slices would favour it far beyond the pooled figure."""
    from sklearn.metrics import f1_score

    from retraining.datafiles import LoadedFile
    from retraining.gate import score_heldout

    def one_minus_f1(labels, predictions):
        return 1.0 - f1_score(labels, predictions, zero_division=0)

    domain = Domain(source=Path("d.py"), prepare_file=None, train_model=None,
                    error_metric=one_minus_f1, error_metric_name="one_minus_f1",
                    error_per_file=False, lower_error_is_better=True)
    generator = np.random.default_rng(0)
    files, production, challenger = [], {}, {}
    for index in range(10):
        labels = np.zeros(400, dtype=int)
        labels[generator.choice(400, 16, replace=False)] = 1
        name = f"f{index}.csv"
        files.append(LoadedFile(path=Path(name), sha256=f"{index:064d}", features=None,
                                labels=pd.Series(labels), dropped_rows=0, identity=()))
        production[name] = np.where(generator.random(400) < 0.7, labels, 0)
        challenger[name] = labels | (generator.random(400) < 0.025).astype(int)

    scored = score_heldout(domain, files, production, challenger)
    verdict = judge(domain, scored, gate_settings())

    assert scored.slices is None
    assert "error_metric is not a mean over rows: on held-out file" in scored.no_slices_because
    # Whole files: the interval contains its own point estimate.
    assert verdict.interval.low <= verdict.interval.estimate <= verdict.interval.high


def test_a_per_file_metric_is_resampled_by_whole_files_and_gets_what_it_got_before():
    from retraining.datafiles import LoadedFile
    from retraining.gate import score_heldout

    def count_error(labels, predictions):
        # Written against a Series, as error_on has always passed it per file.
        return abs(int(labels.to_numpy().sum()) - int(np.sum(predictions))) / len(labels)

    domain = Domain(source=Path("d.py"), prepare_file=None, train_model=None,
                    error_metric=count_error, error_metric_name="count_error",
                    error_per_file=True, lower_error_is_better=True)
    labels = pd.Series(np.repeat([0, 1], 100))
    files = [LoadedFile(path=Path(n), sha256=n * 64, features=None, labels=labels,
                        dropped_rows=0, identity=()) for n in "abcdefg"]
    scored = score_heldout(domain, files, {n: np.zeros(200) for n in "abcdefg"},
                           {n: labels.to_numpy() for n in "abcdefg"})
    assert scored.slices is None and "ERROR_PER_FILE" in scored.no_slices_because
    assert judge(domain, scored, gate_settings()).promote


def test_few_files_widen_the_interval_beyond_the_whole_file_bootstrap():
    # Rows nested in files: resampling rows within files as well as files can only add
    # spread, so with four files the interval is at least as wide as over files alone.
    production, challenger, rows = noisy_errors(4, seed=5)
    files_only = bootstrap_difference(production, challenger, rows, resamples=4000,
                                      level=0.95, seed=1)
    generator = np.random.default_rng(7)
    slices = 8
    groups = np.repeat(np.arange(4), slices)
    slice_production = np.repeat(production, slices) + generator.normal(0, 0.05, 4 * slices)
    slice_challenger = np.repeat(challenger, slices) + generator.normal(0, 0.05, 4 * slices)
    nested = bootstrap_difference(slice_production, slice_challenger,
                                  np.repeat(rows, slices) / slices, groups=groups,
                                  resamples=4000, level=0.95, seed=1)
    assert nested.high - nested.low > files_only.high - files_only.low


def gate_settings(**changes) -> Settings:
    defaults = build_settings(PROJECT_DIR, argparse.Namespace(), environ={})
    return dataclasses.replace(defaults, **changes)


def scores(production, challenger, rows=300) -> HeldoutScores:
    production, challenger = np.array(production, float), np.array(challenger, float)
    rows = np.full(len(production), rows)
    return HeldoutScores([f"f{i}.csv" for i in range(len(production))], rows, production,
                         challenger, float(production.mean()), float(challenger.mean()))


def test_a_score_where_higher_is_better_needs_the_whole_interval_above_zero():
    accuracy = Domain(source=Path("d.py"), prepare_file=None, train_model=None,
                      error_metric=None, error_metric_name="accuracy", error_per_file=False,
                      lower_error_is_better=False)
    strict = gate_settings(require_significance=True)
    production = [0.7, 0.72, 0.69, 0.71] * 2
    assert judge(accuracy, scores(production, [0.8, 0.83, 0.79, 0.82] * 2), strict).promote
    mixed = judge(accuracy, scores(production, [0.8, 0.65, 0.79, 0.70] * 2), strict)
    assert not mixed.promote and "not significantly better" in mixed.reason


ERROR = Domain(source=Path("d.py"), prepare_file=None, train_model=None, error_metric=None,
               error_metric_name="error", error_per_file=False, lower_error_is_better=True)


PRODUCTION = np.array([0.07, 0.08, 0.06, 0.075, 0.065, 0.07, 0.085, 0.055, 0.07, 0.07])


def test_a_superset_challenger_needs_only_to_be_shown_no_worse_than_the_margin():
    """0.001 better on average, by +-0.004 per file: not significantly better. Learnt from
    all of production's data and more, it is promoted when the interval's worse end stays
    under --non-inferiority-margin; no other challenger is, nor with the margin at 0."""
    better = PRODUCTION + [-0.006, 0.004, -0.005, 0.003, -0.004, 0.002, -0.003, 0.001,
                           -0.002, 0.0]
    evidence = scores(PRODUCTION, better)
    margin = gate_settings(non_inferiority_margin=0.005)

    other = judge(ERROR, evidence, margin)
    superset = judge(ERROR, evidence, margin, superset=True)
    off = judge(ERROR, evidence, gate_settings(non_inferiority_margin=0.0), superset=True)

    assert 0 < superset.interval.high < 0.005  # not significant, but within the margin
    assert not other.promote and "not significantly better" in other.reason
    assert superset.promote
    assert superset.reason.startswith(
        "challenger is no worse: not significantly better, but it learnt from all of "
        "production's data and more, and is shown worse by less than the "
        "--non-inferiority-margin 0.005: challenger error ")
    assert not off.promote and "not significantly better" in off.reason


def test_a_superset_challenger_worse_on_the_held_out_files_is_never_promoted():
    margin = gate_settings(non_inferiority_margin=0.005)
    # Worse on its point estimate, however close: the margin only excuses uncertainty.
    slightly_worse = judge(ERROR, scores(PRODUCTION, PRODUCTION + 0.0005), margin,
                           superset=True)
    assert not slightly_worse.promote and "not better enough" in slightly_worse.reason
    # Better on average, but the interval reaches beyond the margin.
    uncertain = judge(ERROR, scores(PRODUCTION, PRODUCTION + [
        -0.03, 0.025, -0.02, 0.02, -0.025, 0.03, -0.03, 0.02, -0.02, 0.02]), margin,
        superset=True)
    assert uncertain.interval.high > 0.005
    assert not uncertain.promote
    assert ("and worse by 0.005 or more, the --non-inferiority-margin of a challenger that "
            "learnt from all of production's data and more") in uncertain.reason


def test_too_few_files_all_in_the_challengers_favour_show_nothing():
    # Five files, each one row better: every resample agrees, so the percentile interval has
    # no width and never reaches zero; a sign test gives p = 0.0625. Six can show it.
    domain = Domain(source=Path("d.py"), prepare_file=None, train_model=None,
                    error_metric=None, error_metric_name="error", error_per_file=False,
                    lower_error_is_better=True)
    five = judge(domain, scores([0.030] * 5, [0.025] * 5, rows=200), gate_settings())
    assert not five.promote
    assert "has 5 held-out files to resample, fewer than the 6 that could show a difference " \
           "at 95%" in five.reason
    assert judge(domain, scores([0.030] * 6, [0.025] * 6, rows=200), gate_settings()).promote


# --- the gate in a cycle -----------------------------------------------------------------------

def test_noisy_equal_challenger_is_refused_by_default(production, capsys):
    # Same regime as history, no drift: both models are equally good, and the challenger's
    # lead on three small held-out files is a single row. A negative threshold forces
    # retraining.
    write_csvs(production.new_dir, "batch", machine_files(6, drift=0.0, seed=116, rows=100))
    flags = ("--error-threshold=-1", "--holdout-fraction", "0.5")

    code, point_only = cycle(production, capsys, *flags, "--no-require-significance",
                             "--dry-run")
    assert code == 0 and point_only["outcome"] == "promoted", point_only["reason"]

    code, summary = cycle(production, capsys, *flags)

    assert code == 0 and summary["outcome"] == "rejected", summary["reason"]
    assert summary["challenger_error"] < summary["production_error"]
    assert "not significantly better" in summary["reason"]
    assert "95% interval [-0.0" in summary["reason"]
    assert production.alias_version() == "1"
    run = production.client().get_run(summary["retraining_run_id"])
    assert run.data.metrics["error_difference_low"] < 0 <= run.data.metrics[
        "error_difference_high"]
    assert run.data.metrics["confidence_level"] == 0.95


def test_a_challenger_that_learnt_from_more_of_the_same_data_needs_only_to_be_no_worse(
        production, capsys):
    """Version 2 was trained by a cycle on every file; the next batch is of its concept. The
    challenger learns from all of version 2's data and this batch: on its held-out rows it
    cannot be shown better, and is promoted when shown worse by less than the margin."""
    all_files = ("--training-windows", "all")
    write_csvs(production.new_dir, "drifted", machine_files(10, drift=1.0, seed=6))
    code, summary = cycle(production, capsys, *all_files)
    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    # Files of 1,000 rows: 4,000 held out narrow the interval below the margin.
    write_csvs(production.new_dir, "same", machine_files(10, drift=1.0, seed=61, rows=1000))
    flags = (*all_files, "--error-threshold", "0", "--dry-run")

    code, strict = cycle(production, capsys, *flags, "--non-inferiority-margin", "0")
    assert code == 0 and strict["outcome"] == "rejected", strict["reason"]
    assert strict["reason"].startswith(("challenger is not significantly better: ",
                                        "challenger is not better enough: ")), strict["reason"]

    code, summary = cycle(production, capsys, *flags)
    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    assert summary["reason"].startswith(
        "challenger is no worse: not significantly better, but it learnt from all of "
        "production's data and more, and is shown worse by less than the "
        "--non-inferiority-margin 0.005: ")
    assert summary["challenger_error"] <= summary["production_error"]


def test_clearly_better_challenger_is_promoted_with_every_figure_and_plot(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(10, drift=1.0, seed=6))

    code, summary = cycle(production, capsys, "--max-file-regression", "0.02")

    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    assert "challenger is better" in summary["reason"] and "95% interval" in summary["reason"]
    client = production.client()
    run_id = summary["retraining_run_id"]
    names = {Path(a.path).name for a in client.list_artifacts(run_id, "evaluation")}
    assert EVALUATION_ARTIFACTS <= names
    metrics = client.get_run(run_id).data.metrics
    for role in ("production", "challenger"):
        assert {f"{role}_{figure}" for figure in FIGURES} <= metrics.keys()
    assert metrics["challenger_accuracy"] > metrics["production_accuracy"]
    assert metrics["error_difference_low"] <= metrics["error_difference_high"] < 0
    folder = production.root / "downloaded"
    folder.mkdir()
    table = Path(client.download_artifacts(run_id, "evaluation/heldout_per_file.csv",
                                           str(folder))).read_text().splitlines()
    assert table[0] == "file,rows,production_error,challenger_error,regression"
    assert sorted(line.split(",")[0] for line in table[1:]) == summary["heldout_files"]
    comparison = Path(client.download_artifacts(run_id, "evaluation/comparison.md",
                                                str(folder))).read_text()
    assert comparison.startswith("| figure | production | challenger |")


def test_a_file_where_the_challenger_regresses_blocks_it_and_is_named(production, capsys):
    odd = hold_out_a_file_production_gets_right(production)

    # Significance is off to test the cap alone: the bootstrap, resampling that file among
    # four, also refuses this challenger.
    flags = ("--holdout-fraction", "0.3", "--no-require-significance")
    code, point_only = cycle(production, capsys, *flags, "--dry-run")
    assert code == 0 and point_only["outcome"] == "promoted", point_only["reason"]

    code, summary = cycle(production, capsys, *flags, "--max-file-regression", "0.1")

    assert code == 0 and summary["outcome"] == "rejected", summary["reason"]
    assert f"regresses on held-out file {odd}" in summary["reason"]
    assert "where the cap is 0.1000" in summary["reason"]
    assert production.alias_version() == "1"


def hold_out_a_file_production_gets_right(workspace) -> str:
    """A drifted batch plus one file labelled as production predicts, which is held out.

    The challenger learned the drifted regime's rule, so it is worse than production on that
    file alone. File contents decide which files are held out, so seeds are tried until
    this file is among them.
    """
    from retraining.heldout import choose_heldout

    model = train_on_folder(workspace.used_dir)  # production: same data, same seed
    settings = build_settings(PROJECT_DIR, argparse.Namespace(
        used_dir=str(workspace.used_dir), new_dir=str(workspace.new_dir), holdout_fraction=0.3,
        require_significance=False), {})
    history = {loaded.sha256 for loaded in load_files(list_data_files(workspace.used_dir),
                                                      "label", lambda frame, path: frame)}
    for seed in range(50, 80):
        for path in workspace.new_dir.glob("*.csv"):
            path.unlink()
        write_csvs(workspace.new_dir, "batch", machine_files(12, drift=1.0, seed=seed))
        [odd] = write_csvs(workspace.new_dir, "odd", machine_files(1, drift=1.0, seed=seed + 100,
                                                                   rows=150))
        loaded = load_file(odd, "label", lambda frame, path: frame)
        frame = loaded.features.assign(label=model.predict(loaded.features))
        frame.to_csv(odd, index=False)
        files = load_files(list_data_files(workspace.new_dir), "label", lambda frame, path: frame)
        if odd.name in choose_heldout(files, settings, seen_sha256=history).names:
            return odd.name
    raise AssertionError("no seed holds out the odd file")


def test_the_heldout_share_grows_to_the_rows_the_gate_needs(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(10, drift=1.0, seed=6))

    code, summary = cycle(production, capsys, "--min-heldout-rows", "1000",
                          "--min-heldout-files", "2")

    # A fifth of the batch is 2 files, 600 rows: the share grows to 4 files, 1200 rows.
    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    assert len(summary["heldout_files"]) == 4
    assert "on the same 4 held-out files, 1200 rows" in summary["reason"]
    assert len(summary["archived_files"]) == 10


# --- lineage and decisions on versions -------------------------------------------------------

def test_every_version_carries_its_lineage(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(6, drift=1.0, seed=8))

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["challenger_version"] == "2"
    client = production.client()
    version = client.get_model_version("classifier", "2")
    manifest = client.download_artifacts(summary["retraining_run_id"], "data_manifest.json",
                                         str(production.root))
    tags = version.tags
    assert tags["data_manifest_sha256"] == hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
    assert tags["parent_production_version"] == "1"
    commit = tags["git_commit"]
    assert commit == "unknown" or len(commit.removesuffix("-dirty")) == 40
    settings = json.loads(tags["settings"])
    assert settings["seed"] == 42 and settings["max_file_regression"] == "inf"
    assert settings["domain_file"] == "train_classification_model.py"
    assert "Trained on" in version.description and commit in version.description
    assert version.description.startswith(f"{summary['outcome']}: ")
    first = client.get_model_version("classifier", "1").tags
    assert first["git_commit"] == commit and first["parent_production_version"] == "none"
    assert json.loads(first["settings"])["label_column"] == "label"
    assert len(first["history_batch_key"]) == 64


def test_every_challenge_stays_recorded_on_the_production_version(production, capsys):
    for seed in (11, 12):
        write_csvs(production.new_dir, f"batch{seed}", machine_files(5, drift=1.0, seed=seed))
        code, summary = cycle(production, capsys, "--min-improvement", "1.0")
        assert code == 0 and summary["outcome"] == "rejected", summary["reason"]

    tags = production.client().get_model_version("classifier", "1").tags
    # The second challenge did not erase the first, nor the version's own record.
    assert tags["challenge.v2"].startswith("kept: challenger is not better enough")
    assert tags["challenge.v3"].startswith("kept: challenger is not better enough")
    assert tags["decision"] == "registered_first"
    assert "replaced_by" not in tags
