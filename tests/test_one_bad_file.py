"""One bad file never stalls the night: set aside with the evidence, the cycle goes on."""

from __future__ import annotations

import os

import pytest

from tests.conftest import (
    cycle,
    machine_files,
    register_pickle,
    run_script,
    snapshot,
    train_on_folder,
    write_csvs,
)

HEADER = b"temperature,vibration,operating_hours,pressure,machine_type,serviced,label\n"
ROW = b"50,1,100,5,press,TRUE,ok\n"


def _rows(*rows: bytes, good: int = 20) -> bytes:
    return HEADER + ROW * good + b"".join(rows)


def _kept(workspace, entry) -> tuple[bytes, str]:
    kept = workspace.quarantine_dir / entry["quarantined_as"]
    return kept.read_bytes(), kept.with_name(kept.name + ".reason.txt").read_text()


def test_a_bad_cell_inf_or_repeated_column_is_quarantined_quoting_the_evidence(production,
                                                                              capsys):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=91))
    bad = {
        "text_cell.csv": _rows(b"ERR,1,100,5,press,TRUE,ok\n"),
        "yes_cell.csv": _rows(b"50,1,100,yes,press,TRUE,ok\n"),
        "infinite.csv": _rows(b"50,1,100,inf,press,TRUE,ok\n"),
        "repeated.csv": b"temperature,vibration,vibration,pressure,machine_type,serviced,label\n"
                        + ROW,
    }
    for name, content in bad.items():
        (production.new_dir / name).write_bytes(content)
    good = {name: content for name, content in snapshot(production.new_dir).items()
            if name not in bad}

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "healthy", summary["reason"]
    reasons = {entry["file"]: entry["reason"] for entry in summary["quarantined_files"]}
    assert set(reasons) == set(bad)
    assert ("has the value 'ERR' in column 'temperature' on data row 21, where the production "
            "model takes a number (1 such cells)") in reasons["text_cell.csv"]
    assert "the value 'yes' in column 'pressure' on data row 21" in reasons["yes_cell.csv"]
    assert "has inf in column 'pressure' on data row 21" in reasons["infinite.csv"]
    assert "has the column 'vibration' 2 times" in reasons["repeated.csv"]
    for entry in summary["quarantined_files"]:
        content, reason = _kept(production, entry)
        assert content == bad[entry["file"]] and entry["reason"] in reason
    assert sorted(summary["archived_files"]) == sorted(good)
    assert all(snapshot(production.used_dir)[name] == content for name, content in good.items())


def test_long_and_non_utf8_names_neither_stall_the_cycle_nor_lose_a_file(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=92))
    [long_good] = machine_files(1, drift=0.0, seed=93)
    long_name = "g" * 246 + ".csv"  # 250 bytes: a name the filesystem takes, and no longer
    long_good.to_csv(production.new_dir / long_name, index=False)
    # The same name is already in history, with other rows: archiving must rename it.
    machine_files(1, drift=0.0, seed=94)[0].to_csv(production.used_dir / long_name, index=False)
    long_bad = "b" * 246 + ".csv"
    (production.new_dir / long_bad).write_bytes(b"")
    odd = os.fsdecode(b"caf\xe9.csv")  # Latin-1 bytes from an old export tool
    (production.new_dir / odd).write_bytes(_rows())
    every_file = sorted([*snapshot(production.new_dir).values(),
                         *snapshot(production.used_dir).values()])

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "healthy", summary["reason"]
    reasons = {entry["file"]: entry["reason"] for entry in summary["quarantined_files"]}
    assert set(reasons) == {long_bad, "caf\\xe9.csv"}
    assert "caf\\xe9.csv: its name is not valid UTF-8" in reasons["caf\\xe9.csv"]
    assert long_name in summary["archived_files"] or any(
        name.startswith("g" * 100) and name != long_name for name in summary["archived_files"])
    assert snapshot(production.new_dir) == {}
    kept = [content for name, content in snapshot(production.quarantine_dir).items()
            if not name.endswith(".reason.txt")]
    assert sorted([*snapshot(production.used_dir).values(), *kept]) == every_file
    for entry in summary["quarantined_files"]:
        assert len(os.fsencode(entry["quarantined_as"] + ".reason.txt")) <= 255
        assert entry["reason"] in _kept(production, entry)[1]


def test_boolean_labels_in_a_project_of_classes_0_1_2_are_quarantined(workspace, capsys):
    codes = {"ok": 0, "worn": 1, "fault": 2}
    history = machine_files(8, drift=0.0, seed=95)
    for frame in history:
        frame["label"] = frame["label"].map(codes)
    write_csvs(workspace.used_dir, "history", history)
    register_pickle(workspace, train_on_folder(workspace.used_dir), capsys)
    batch = machine_files(5, drift=0.0, seed=96)
    for frame in batch:
        frame["label"] = frame["label"].map(codes)
    write_csvs(workspace.new_dir, "batch", batch)
    (workspace.new_dir / "flags.csv").write_bytes(HEADER + b"50,1,100,5,press,TRUE,TRUE\n" * 3
                                                  + b"50,1,100,5,press,TRUE,FALSE\n")

    code, summary = cycle(workspace, capsys)

    assert code == 0 and summary["outcome"] == "healthy", summary["reason"]
    [entry] = summary["quarantined_files"]
    assert entry["file"] == "flags.csv"
    assert ("has boolean labels (seen: TRUE x3, FALSE x1) where the production model's "
            "classes are integer (0, 1, 2)") in entry["reason"]


@pytest.mark.parametrize("saved_as", ["crlf", "bom", "no final newline"])
def test_history_saved_again_by_another_tool_is_recognised_as_redelivered(production, capsys,
                                                                         saved_as):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=97))
    original = (production.used_dir / "history_003.csv").read_bytes()
    again = {"crlf": original.replace(b"\n", b"\r\n"), "bom": b"\xef\xbb\xbf" + original,
             "no final newline": original.rstrip(b"\n")}[saved_as]
    (production.new_dir / "export.csv").write_bytes(again)

    code, summary = cycle(production, capsys)

    assert code == 0
    [entry] = summary["quarantined_files"]
    assert entry["file"] == "export.csv"
    assert "same content as history_003.csv in used_gts/" in entry["reason"]
    assert "export.csv" not in summary["archived_files"]


@pytest.mark.parametrize("with_empty_file", [False, True])
def test_a_wrong_label_column_is_a_setting_error_and_moves_nothing(production, with_empty_file):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=98))
    if with_empty_file:
        # A file bad on its own must not make the setting look like the files' fault.
        (production.new_dir / "empty.csv").write_bytes(b"")
    before = snapshot(production.new_dir), snapshot(production.used_dir)

    done = run_script("pipeline_orchestrator.py", [*production.flags, "--min-new-files", "5",
                                                   "--label-column", "lable"])

    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert "all 5 readable files in" in line
    assert "fail the same way, so the cause is a setting" in line
    assert "has no label column 'lable' (header: ['temperature', 'vibration'," in line
    assert "'label'] (7 columns)" in line
    assert "Fix: set --label-column (or RETRAIN_LABEL_COLUMN)" in line
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before
    assert not production.quarantine_dir.exists()


def test_every_file_with_its_own_bad_cell_is_still_quarantined_one_by_one(production, capsys):
    """Data faults that merely happen in every file are the files', not a setting's."""
    for index in range(3):
        (production.new_dir / f"bad_{index}.csv").write_bytes(
            _rows(f"ERR{index},1,100,5,press,TRUE,ok\n".encode()))

    code, summary = cycle(production, capsys, "--min-new-files", "1")

    assert code == 0 and summary["outcome"] == "skipped"
    assert len(summary["quarantined_files"]) == 3


@pytest.mark.parametrize("inside", ["used_gts", "used_gts/quarantine", "new_gts/quarantine"])
def test_a_quarantine_inside_a_data_folder_is_a_usage_error(production, inside):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=99))
    flags = list(production.flags)
    flags[flags.index("--quarantine-dir") + 1] = str(production.root / inside)

    done = run_script("pipeline_orchestrator.py", [*flags, "--min-new-files", "5"])

    assert done.returncode == 2
    assert "--quarantine-dir" in done.stderr.strip().splitlines()[-1]


def test_a_project_labelled_true_false_keeps_taking_true_false(workspace, capsys):
    history = machine_files(8, drift=0.0, seed=100)
    for frame in history:
        frame["label"] = (frame["label"] != "ok").map({True: "TRUE", False: "FALSE"})
    write_csvs(workspace.used_dir, "history", history)
    register_pickle(workspace, train_on_folder(workspace.used_dir), capsys)
    assert workspace.client().get_model_version("classifier", "1").tags["label_kind"] == "boolean"
    batch = machine_files(5, drift=0.0, seed=101)
    for frame in batch:
        frame["label"] = (frame["label"] != "ok").map({True: "TRUE", False: "FALSE"})
    write_csvs(workspace.new_dir, "batch", batch)

    code, summary = cycle(workspace, capsys)

    assert code == 0 and summary["outcome"] == "healthy", summary["reason"]
    assert summary["quarantined_files"] == []
