"""Training windows chosen by evidence: a cycle adapts to a change of concept within one
night, still handles drift in the inputs, and does not promote noise when nothing changed.

Streams are generated here, seeded, from demo/generate_stream.py's machine readings:
history follows the old labelling policy (worn after 7,000 hours unless serviced), and a
change of concept lowers it to 3,500 hours, so the same readings get conflicting labels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np
import pytest

from demo.generate_stream import readings
from retraining.archive import archive_files
from retraining.datafiles import concat_files, list_data_files, load_files
from retraining.domain import load_domain
from tests.conftest import PROJECT_DIR, cycle, register_pickle, train_on_folder, write_csvs
from train_classification_model import error_metric, train_model

NEW_POLICY_HOURS = 3_500


def stream(count: int, seed: int, rows: int = 300, drift: float = 0.0,
           worn_after_hours: float = 7_000, label_noise: float = 0.02):
    generator = np.random.default_rng(seed)
    return [readings(rows, drift, generator, label_noise=label_noise,
                     worn_after_hours=worn_after_hours) for _ in range(count)]


def read_folder(folder):
    return load_files(list_data_files(folder), "label", lambda frame, path: frame)


def error_of(model, files) -> float:
    features, labels = concat_files(files)
    return error_metric(labels, model.predict(features))


def settings_for(workspace, **flags):
    """The cycle's settings for this workspace, with flags as the command line gives them."""
    from retraining.config import build_settings

    return build_settings(PROJECT_DIR, argparse.Namespace(
        used_dir=str(workspace.used_dir), new_dir=str(workspace.new_dir), **flags), {})


def retraining_run(workspace, summary):
    return workspace.client().get_run(summary["retraining_run_id"])


def artifact_json(workspace, run, name):
    path = workspace.client().download_artifacts(run.info.run_id, name, str(workspace.root))
    with open(path) as handle:
        return json.load(handle)


@pytest.fixture
def old_policy_production(workspace, capsys):
    write_csvs(workspace.used_dir, "history", stream(20, seed=201))
    register_pickle(workspace, train_on_folder(workspace.used_dir), capsys)
    return workspace


# --- a change of concept -------------------------------------------------------------------

def test_abrupt_concept_change_is_promoted_in_one_cycle_and_matches_a_post_change_model(
        old_policy_production, capsys):
    workspace = old_policy_production
    write_csvs(workspace.new_dir, "changed", stream(10, seed=202,
                                                    worn_after_hours=NEW_POLICY_HOURS))
    post_change = read_folder(workspace.new_dir)

    code, summary = cycle(workspace, capsys)

    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    # All history would outvote the new labels: a window without the old policy won.
    assert summary["training_window"] in ("recent", "weighted")
    run = retraining_run(workspace, summary)
    errors = {name: run.data.metrics[f"validation_error.{name}"]
              for name in ("all", "recent", "weighted")}
    assert errors[summary["training_window"]] == min(errors.values())
    assert errors["all"] > errors[summary["training_window"]] + 0.05

    # The next batch under the new policy: production is now the promoted challenger.
    write_csvs(workspace.new_dir, "next", stream(6, seed=203,
                                                 worn_after_hours=NEW_POLICY_HOURS))
    next_batch = read_folder(workspace.new_dir)
    post_change_only = error_of(train_model(*concat_files(post_change), random_state=0),
                                next_batch)
    code, after = cycle(workspace, capsys)

    # Its error may sit a little above its own baseline, which retrains (--rise-confidence);
    # the adapted version stays either way.
    assert code == 0 and after["outcome"] in ("healthy", "rejected"), after["reason"]
    assert workspace.alias_version() == summary["challenger_version"]
    # 1,800 rows give a rate a standard error of about 0.005; the reference learnt from all
    # 10 post-change files, the challenger from the 6 not held out. 0.02 covers both and is
    # far below the 0.15 that the old policy costs (checked on the first cycle's figures).
    assert after["monitoring_error"] <= post_change_only + 0.02
    assert summary["monitoring_error"] > post_change_only + 0.10


def test_a_short_history_still_offers_a_recent_window_that_learns_the_new_concept(
        workspace, capsys):
    # One batch of history, no more files than --recent-files: 'recent' would take it all
    # and be the 'all' window's twin, leaving only windows the old labels outvote.
    write_csvs(workspace.used_dir, "history", stream(8, seed=201))
    register_pickle(workspace, train_on_folder(workspace.used_dir), capsys)
    write_csvs(workspace.new_dir, "changed", stream(10, seed=202,
                                                    worn_after_hours=NEW_POLICY_HOURS))

    code, summary = cycle(workspace, capsys)

    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    run = retraining_run(workspace, summary)
    assert "recent" not in run.data.tags.get("skipped_windows", "")
    assert summary["training_window"] == "recent"
    manifest = artifact_json(workspace, run, "data_manifest.json")["files"]
    assert not any(e["in_window"] for e in manifest if e["role"] == "history")
    errors = {name: run.data.metrics[f"validation_error.{name}"]
              for name in ("all", "recent", "weighted")}
    assert errors["all"] > errors["recent"] + 0.05


def test_windows_compared_on_a_share_of_their_rows_still_adapt_and_the_challenger_gets_all(
        old_policy_production, capsys):
    # Choosing among windows on years of history would cost a full training per window; the
    # candidates learn from the same share of their rows instead, the largest from at most
    # --window-sample-rows.
    workspace = old_policy_production
    write_csvs(workspace.new_dir, "changed", stream(10, seed=210,
                                                    worn_after_hours=NEW_POLICY_HOURS))

    code, summary = cycle(workspace, capsys, "--window-sample-rows", "1500")

    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    assert summary["training_window"] in ("recent", "weighted")
    run = retraining_run(workspace, summary)
    share = float(run.data.params["window_sample_share"])
    # 20 history files and 4 of the 6 new training files of 300 rows (2 set aside to
    # validate on): 7,200.
    assert share == pytest.approx(1500 / 7200, rel=1e-4)
    compared = {name: run.data.metrics[f"training_rows.{name}"]
                for name in ("all", "recent", "weighted")}
    assert abs(compared["all"] - 1500) < 100
    # The same share of each: the window with fewer rows keeps fewer, its lead in rows kept.
    assert abs(compared["recent"] - share * 1200) < 80
    assert f"trained on the same {share:.2%} of its rows" in run.data.tags[
        "training_window_reason"]
    # The challenger itself learnt from every row of its window, validation files included.
    manifest = artifact_json(workspace, run, "data_manifest.json")["files"]
    assert run.data.metrics["training_rows"] == sum(e["rows"] for e in manifest
                                                    if e.get("in_window")) > 1500


def choose_on_a_small_sample(workspace, history):
    """The window choice over `history` and 4 new files, with --window-sample-rows 1000."""
    from retraining.windows import choose_window

    write_csvs(workspace.used_dir, "history", history)
    write_csvs(workspace.new_dir, "new", stream(4, seed=212))
    settings = dataclasses.replace(settings_for(workspace), window_sample_rows=1000)
    new_files = read_folder(workspace.new_dir)
    return choose_window(settings, load_domain(settings.domain_file),
                         read_folder(workspace.used_dir), new_files,
                         list(new_files[0].features.columns))


def test_a_small_window_keeps_enough_rows_to_learn_from(workspace):
    # 40 history files against 3 new training files: at the common share the recent window
    # would keep about 70 rows; it keeps a tenth of --window-sample-rows instead.
    choice = choose_on_a_small_sample(workspace, stream(40, seed=211))

    assert len(choice.validation) == 1
    assert choice.sample_share == pytest.approx(1000 / 12_900)
    assert abs(choice.sample_rows["all"] - 1000) < 100
    assert choice.sample_rows["recent"] == pytest.approx(100, abs=30)
    assert "(at least 100 rows)" in choice.reason


def test_a_sample_that_misses_a_class_gives_way_to_every_row(workspace):
    history = stream(40, seed=211)
    history[7].loc[[5, 150, 290], "label"] = "scrapped"  # three rows of a third class

    choice = choose_on_a_small_sample(workspace, history)

    # The share would keep about 1,000 rows of "all", and none of those three.
    assert choice.sample_rows["all"] == 12_900
    assert choice.sample_rows["recent"] == pytest.approx(100, abs=30)


# --- drift in the inputs -------------------------------------------------------------------

def test_covariate_shift_is_promoted_and_the_choice_is_visible_in_mlflow(
        old_policy_production, capsys):
    workspace = old_policy_production
    write_csvs(workspace.new_dir, "hot", stream(10, seed=204, drift=1.0))

    code, summary = cycle(workspace, capsys)

    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    run = retraining_run(workspace, summary)
    chosen = run.data.tags["training_window"]
    assert chosen == summary["training_window"]
    assert {f"validation_error.{name}" for name in ("all", "recent", "weighted")} \
        <= run.data.metrics.keys()
    assert {f"training_seconds.{name}" for name in ("all", "recent", "weighted")} \
        <= run.data.metrics.keys()
    assert run.data.params["window.recent.max_files"] == "15"
    assert run.data.params["window.weighted.half_life_files"] == "15.0"
    assert run.data.params["validation_files"] == "2"
    assert f"window {chosen!r} has the best" in run.data.tags["training_window_reason"]
    version = workspace.client().get_model_version("classifier", summary["challenger_version"])
    assert version.tags["training_window"] == chosen
    assert f"Training window {chosen!r}" in version.description

    # Validation files are new training files, never held out; the manifest says which
    # files the chosen window trained on.
    manifest = artifact_json(workspace, run, "data_manifest.json")["files"]
    validation = {e["name"] for e in manifest if e.get("validation")}
    assert len(validation) == 2 and not validation & set(summary["heldout_files"])
    assert all(e["role"] == "new_training" for e in manifest if e.get("validation"))
    assert run.data.metrics["training_rows"] == sum(e["rows"] for e in manifest
                                                    if e.get("in_window"))
    table = artifact_json(workspace, run, "training_windows.json")["windows"]
    assert [row["window"] for row in table if row["chosen"]] == [chosen]


# --- no change -------------------------------------------------------------------------------

def test_no_change_in_a_noisy_stream_promotes_no_window_that_fits_noise(workspace, capsys):
    # A stable but noisy stream: 18% of labels are random, so production's error stays above
    # the 0.10 threshold and the cycle retrains every night although nothing changed.
    write_csvs(workspace.used_dir, "history", stream(16, seed=205, label_noise=0.18))
    register_pickle(workspace, train_on_folder(workspace.used_dir), capsys)
    write_csvs(workspace.new_dir, "same", stream(10, seed=206, label_noise=0.18))

    # Before the gate required significance by default, such a stream promoted a challenger
    # on a lead of a few held-out rows in 6 of 9 seeded runs, mostly trained on all history.
    # The defaults, untouched here, must keep that noise out: judged against truth, on fresh
    # rows of the same stream, production may only get better.
    code, summary = cycle(workspace, capsys)

    assert code == 0 and summary["monitoring_error"] > 0.10
    # The window with the fewest rows fits noise best; a stable stream must not choose it.
    assert summary["training_window"] != "recent"
    assert summary["outcome"] in ("promoted", "rejected"), summary["reason"]
    fresh = workspace.root / "fresh"
    fresh.mkdir()
    write_csvs(fresh, "truth", stream(10, seed=212, rows=5_000, label_noise=0.18))
    truth = read_folder(fresh)
    before, after = (error_of(workspace.load_version(version), truth)
                     for version in ("1", workspace.alias_version()))
    # 50,000 rows: where two such models disagree on a few percent of them, their
    # difference in error has a standard error under 0.001.
    assert after <= before + 0.002, (before, after, summary["reason"])


# --- the domain contract and the fallback ----------------------------------------------------

UNWEIGHTED_DOMAIN = '''
from train_classification_model import ERROR_METRIC_NAME, error_metric
from train_classification_model import train_model as _train_model

def train_model(features, labels, random_state=0):
    # A domain written before sample weights existed.
    return _train_model(features, labels, random_state=random_state)
'''


def test_domain_without_sample_weight_skips_the_weighted_window_and_still_adapts(
        old_policy_production, capsys, monkeypatch):
    workspace = old_policy_production
    domain = workspace.root / "unweighted_domain.py"
    domain.write_text(UNWEIGHTED_DOMAIN)
    monkeypatch.syspath_prepend(str(PROJECT_DIR))
    write_csvs(workspace.new_dir, "changed", stream(10, seed=207,
                                                    worn_after_hours=NEW_POLICY_HOURS))

    code, summary = cycle(workspace, capsys, "--domain-file", str(domain))

    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    assert summary["training_window"] == "recent"
    run = retraining_run(workspace, summary)
    assert "validation_error.weighted" not in run.data.metrics
    assert "weighted: train_model in unweighted_domain.py does not declare sample_weight" \
        in run.data.tags["skipped_windows"]


def test_too_few_new_training_files_fall_back_to_all_history_and_say_so(workspace):
    from retraining.windows import choose_window

    write_csvs(workspace.used_dir, "history", stream(3, seed=208))
    write_csvs(workspace.new_dir, "new", stream(1, seed=209, drift=1.0))
    settings = settings_for(workspace)

    choice = choose_window(settings, load_domain(settings.domain_file),
                           read_folder(workspace.used_dir), read_folder(workspace.new_dir),
                           None)

    # One new training file cannot be both trained on and validated on.
    assert choice.chosen.name == "all" and len(choice.chosen.files) == 4
    assert choice.validation == [] and choice.validation_error == {}
    assert "too few to set validation files aside" in choice.tags()["training_window_reason"]


def test_domain_passes_sample_weight_only_to_a_train_model_that_declares_it(tmp_path):
    plain = tmp_path / "plain.py"
    plain.write_text("def train_model(features, labels, random_state=0):\n"
                     "    return {'random_state': random_state}\n"
                     "def error_metric(labels, predictions):\n    return 0.0\n")
    weighted = tmp_path / "weighted.py"
    weighted.write_text("def train_model(features, labels, sample_weight=None):\n"
                        "    return {'sample_weight': sample_weight}\n"
                        "def error_metric(labels, predictions):\n    return 0.0\n")
    plain_domain, weighted_domain = load_domain(plain), load_domain(weighted)

    assert not plain_domain.accepts_sample_weight and weighted_domain.accepts_sample_weight
    assert plain_domain.train(None, None, random_state=3) == {"random_state": 3}
    assert weighted_domain.train(None, None, random_state=3) == {"sample_weight": None}
    assert weighted_domain.train(None, None, random_state=3, sample_weight=[2.0]) == \
        {"sample_weight": [2.0]}
    with pytest.raises(TypeError):
        plain_domain.train(None, None, random_state=3, sample_weight=[2.0])


# --- recency is arrival order ----------------------------------------------------------------

def test_recent_and_weighted_windows_follow_the_ledger_not_names_or_times(workspace):
    from retraining.windows import build_candidates

    # Named and timed against their arrival: "a_" arrived last, "z_" first.
    incoming = workspace.root / "incoming"
    incoming.mkdir()
    for prefix in ("z_first", "m_second", "a_third"):  # archived for real, in this order
        write_csvs(incoming, prefix, stream(2, seed=209))
        archive_files(read_folder(incoming), workspace.used_dir)
    for index, path in enumerate(sorted(workspace.used_dir.glob("*.csv"))):
        os.utime(path, (1_000_000 + index, 1_000_000 + index))  # a_ oldest, z_ newest
    history = read_folder(workspace.used_dir)
    write_csvs(workspace.new_dir, "new", stream(3, seed=210))
    new_training = read_folder(workspace.new_dir)
    settings = settings_for(workspace, recent_files="5", recency_half_life="2")

    candidates, skipped = build_candidates(settings, load_domain(settings.domain_file),
                                           history, new_training)

    by_name = {candidate.name: candidate for candidate in candidates}
    assert skipped == {} and list(by_name) == ["all", "recent", "weighted"]
    assert sorted(f.name for f in by_name["recent"].files) == \
        ["a_third_000.csv", "a_third_001.csv", "new_000.csv", "new_001.csv", "new_002.csv"]
    weights = {path.name: weight for path, weight in by_name["weighted"].weights.items()}
    assert weights["new_000.csv"] == 1.0
    assert weights["a_third_000.csv"] == pytest.approx(0.5 ** (3 / 2))
    assert weights["m_second_001.csv"] == pytest.approx(0.5 ** (5 / 2))
    assert weights["z_first_000.csv"] == pytest.approx(0.5 ** (7 / 2))
