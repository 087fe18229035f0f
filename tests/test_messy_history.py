"""A real project's history on its first night: mangled headers, other label vocabularies, a
wrong file that sorts first. Every entry point that reads history sets the unusable files
aside with reasons quoting their evidence, uses the rest, and loses no byte."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import (
    changed_concept_files,
    cycle,
    machine_files,
    register_pickle,
    run_script,
    snapshot,
    train_on_folder,
    write_csvs,
)

BAD = {"a_first_wrong_reference.csv", "history_text_cell.csv", "history_integer_labels.csv",
       "history_ragged.csv"}


def write_messy_history(folder) -> None:
    """8 good files, 2 whose headers a tool mangled but can be read, and the 4 files of BAD."""
    frames = machine_files(14, drift=0.0, seed=3, rows=120)
    write_csvs(folder, "history", frames[:8])
    # UTF-7, as some exporters write an underscore, and stray spaces around names.
    text = frames[8].to_csv(index=False)
    (folder / "history_utf7.csv").write_text(text.replace("operating_hours",
                                                          "operating+AF8-hours", 1))
    text = frames[9].to_csv(index=False)
    (folder / "history_spaces.csv").write_text(text.replace("temperature,", " temperature ,", 1))
    # Sorts first, so it would have been the reference columns.
    frames[10].assign(comment="x").to_csv(folder / "a_first_wrong_reference.csv", index=False)
    cell = frames[11].astype({"vibration": object})
    cell.loc[6, "vibration"] = "ERR"
    cell.to_csv(folder / "history_text_cell.csv", index=False)
    numeric = frames[12].assign(label=np.where(frames[12]["label"] == "worn", 1, 0))
    numeric.to_csv(folder / "history_integer_labels.csv", index=False)
    lines = frames[13].to_csv(index=False).splitlines()
    lines[5] += ",extra"
    (folder / "history_ragged.csv").write_text("\n".join(lines) + "\n")


def train(workspace, *extra):
    return run_script("train_classification_model.py",
                      [str(workspace.used_dir), "--output", str(workspace.model_dir / "m.pkl"),
                       "--quarantine-dir", str(workspace.quarantine_dir), "--json", *extra],
                      cwd=workspace.root)


def check_reasons(quarantined: list[dict]) -> None:
    reasons = {entry["file"]: entry["reason"] for entry in quarantined}
    assert set(reasons) == BAD
    wrong = reasons["a_first_wrong_reference.csv"]
    # Named against what most files hold, with the header found.
    assert "than 10 of 13 history files" in wrong and "unexpected ['comment']" in wrong
    # The header as the file has it, label included.
    assert "'serviced', 'label', 'comment'] (8 columns))" in wrong
    cell = reasons["history_text_cell.csv"]
    assert ("the value 'ERR' in column 'vibration' on data row 7, where 10 of 13 history files "
            "hold numbers (1 such cells)") in cell
    labels = reasons["history_integer_labels.csv"]
    assert "integer labels" in labels and "seen: 0 x" in labels and "1 x" in labels
    assert "where 12 of 13 history files have text labels ('fault', 'ok', 'worn')" in labels
    assert "line 6 has 8 fields where the header has 7" in reasons["history_ragged.csv"]


def test_first_training_quarantines_every_unusable_history_file_with_its_evidence(workspace):
    write_messy_history(workspace.used_dir)
    before = snapshot(workspace.used_dir)

    trained = train(workspace)

    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["files"] == 10
    check_reasons(summary["quarantined_files"])
    # The mangled headers were read as the names they stand for, and the log says so.
    assert "'operating+AF8-hours' as 'operating_hours'" in trained.stderr
    assert "' temperature ' as 'temperature'" in trained.stderr
    # Nothing lost: every file is in history or in quarantine, byte for byte, with a reason.
    kept = snapshot(workspace.used_dir)
    set_aside = {name: data for name, data in snapshot(workspace.quarantine_dir).items()
                 if not name.endswith(".reason.txt")}
    assert set(kept) == set(before) - BAD
    assert sorted(set_aside.values()) == sorted(before[name] for name in BAD)
    reasons = [name for name in snapshot(workspace.quarantine_dir) if name.endswith(".reason.txt")]
    assert len(reasons) == len(BAD)


def test_strict_history_lists_every_unusable_file_in_one_line_and_moves_nothing(workspace):
    write_messy_history(workspace.used_dir)
    before = snapshot(workspace.used_dir)

    trained = train(workspace, "--strict-history")

    assert trained.returncode == 1
    message = trained.stderr.strip().splitlines()[-1]
    assert "4 of 14 files" in message and all(name in message for name in BAD)
    assert snapshot(workspace.used_dir) == before
    assert not workspace.quarantine_dir.exists()
    assert not (workspace.model_dir / "m.pkl").exists()


def test_registration_sets_unusable_history_aside_and_evaluates_on_the_rest(workspace, capsys):
    write_csvs(workspace.used_dir, "history", machine_files(8, drift=0.0, seed=3, rows=120))
    model = train_on_folder(workspace.used_dir)
    write_messy_history(workspace.used_dir)  # the same 8 names, plus the rest

    summary = register_pickle(workspace, model, capsys,
                              extra=["--quarantine-dir", str(workspace.quarantine_dir)])

    assert summary["history_files"] == 10
    check_reasons(summary["quarantined_files"])
    assert {path.name for path in workspace.used_dir.iterdir()}.isdisjoint(BAD)
    runs = workspace.client().search_runs(
        [workspace.client().get_experiment_by_name("classifier-retraining").experiment_id],
        filter_string="attributes.run_name = 'DataQuarantine'")
    assert len(runs) == 1 and runs[0].data.metrics["quarantined_files"] == len(BAD)


def test_retraining_sets_unusable_history_aside_and_still_promotes(workspace, capsys):
    write_csvs(workspace.used_dir, "history", machine_files(8, drift=0.0, seed=1))
    register_pickle(workspace, train_on_folder(workspace.used_dir), capsys)
    # A person edits the archive by hand: one file gains a column, one a text cell.
    pd.read_csv(workspace.used_dir / "history_000.csv").assign(comment="x").to_csv(
        workspace.used_dir / "history_000.csv", index=False)
    text = (workspace.used_dir / "history_001.csv").read_text().splitlines()
    text[3] = "hot," + text[3].split(",", 1)[1]
    (workspace.used_dir / "history_001.csv").write_text("\n".join(text) + "\n")
    write_csvs(workspace.new_dir, "new", changed_concept_files(10, seed=4))

    code, summary = cycle(workspace, capsys)

    assert code == 0
    assert summary["outcome"] == "promoted", summary["reason"]
    reasons = {entry["file"]: entry["reason"] for entry in summary["quarantined_files"]}
    assert set(reasons) == {"history_000.csv", "history_001.csv"}
    assert "than the production model's signature" in reasons["history_000.csv"]
    assert "'hot' in column 'temperature' on data row 3" in reasons["history_001.csv"]
    assert sorted(p.name for p in workspace.quarantine_dir.iterdir()
                  if not p.name.endswith(".reason.txt"))[0].startswith("history_000")


def test_a_label_column_no_history_file_has_is_a_setting_and_moves_nothing(workspace):
    write_csvs(workspace.used_dir, "history", machine_files(3, drift=0.0, seed=3, rows=50))
    before = snapshot(workspace.used_dir)

    trained = train(workspace, "--label-column", "ground_truth")

    assert trained.returncode == 2
    message = trained.stderr.strip().splitlines()[-1]
    assert "all 3 readable files" in message and "a setting" in message
    assert "--label-column" in message
    assert snapshot(workspace.used_dir) == before


def test_mixed_label_vocabularies_keep_what_means_the_same_and_quote_the_rest(workspace):
    """0/1, 1.0 with blanks, and 'True Positive' in one project: only the last is set aside."""
    generator = np.random.default_rng(5)

    def frame(labels):
        return pd.DataFrame({"x": generator.normal(size=len(labels)),
                             "ground_truth": labels})

    integer = [frame(generator.integers(0, 2, 60)) for _ in range(4)]
    write_csvs(workspace.used_dir, "tracks", integer)
    floats = frame(generator.integers(0, 2, 60).astype(float))
    floats.loc[[3, 9], "ground_truth"] = np.nan
    floats.to_csv(workspace.used_dir / "tracks_floats.csv", index=False)
    words = frame(["True Positive"] * 30 + ["False Positive"] * 20 + ["1"] * 10)
    words.to_csv(workspace.used_dir / "tracks_words.csv", index=False)

    trained = train(workspace, "--label-column", "ground_truth")

    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["files"] == 5 and summary["rows"] == 5 * 60 - 2
    [entry] = summary["quarantined_files"]
    assert entry["file"] == "tracks_words.csv"
    assert ("text labels (seen: 'True Positive' x30, 'False Positive' x20, '1' x10)"
            in entry["reason"])
    assert "5 of 6 history files have integer labels (0, 1)" in entry["reason"]


@pytest.mark.parametrize("split", [(2, 2), (1, 1)])
def test_history_split_evenly_has_no_majority_and_asks_a_person(workspace, split):
    frames = machine_files(sum(split), drift=0.0, seed=3, rows=50)
    write_csvs(workspace.used_dir, "plain", frames[:split[0]])
    write_csvs(workspace.used_dir, "extra", [f.assign(comment="x") for f in frames[split[0]:]])
    before = snapshot(workspace.used_dir)

    trained = train(workspace)

    assert trained.returncode == 1
    message = trained.stderr.strip().splitlines()[-1]
    assert "disagree on feature columns, with no majority" in message
    assert "extra_000.csv" in message and "plain_000.csv" in message
    assert snapshot(workspace.used_dir) == before
