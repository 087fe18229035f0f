"""Bad and unfinished files: set aside with a reason or left to settle, never lost."""

from __future__ import annotations

import os
import time

import mlflow

from tests.conftest import PROJECT_DIR, cycle, machine_files, snapshot, write_csvs

BAD_FILES = {
    "empty.csv": b"",
    "header_only.csv": b"temperature,vibration,operating_hours,pressure,machine_type,serviced,"
                       b"label\n",
    "garbage.csv": bytes(range(256)) * 8,
    "no_label.csv": b"temperature,vibration,operating_hours,pressure,machine_type,serviced\n"
                    b"50,1,100,5,press,TRUE\n",
    "other_columns.csv": b"colour,label\nred,ok\n",
    "unlabelled.csv": b"temperature,vibration,operating_hours,pressure,machine_type,serviced,"
                      b"label\n50,1,100,5,press,TRUE,\n",
    "integer_labels.csv": b"temperature,vibration,operating_hours,pressure,machine_type,serviced,"
                          b"label\n50,1,100,5,press,TRUE,1\n",
    "garbage_header.csv": b"\x00\xff\xfe garbage \x00\n\x01",
    "not_utf8.csv": b"temperature,vibration,operating_hours,pressure,machine_type,serviced,"
                    b"label\n50,1,100,5,pr\xe9ss,TRUE,ok\n",
    "unparsable_rows.csv": b"temperature,vibration,operating_hours,pressure,machine_type,"
                           b"serviced,label\n50,1,100,5,press,TRUE,ok\n51,1\n",
    "unseen_label.csv": b"temperature,vibration,operating_hours,pressure,machine_type,serviced,"
                        b"label\n50,1,100,5,press,TRUE,exploded\n",
    "odd name \u2013 \u00fcn\u00efc\u00f8d\u00e9..csv": b"",
}


def test_bad_files_are_quarantined_with_a_reason_and_the_cycle_goes_on(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=21))
    for name, content in BAD_FILES.items():
        (production.new_dir / name).write_bytes(content)
    good_before = snapshot(production.new_dir)

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "healthy", summary["reason"]
    quarantined = {entry["file"]: entry for entry in summary["quarantined_files"]}
    assert set(quarantined) == set(BAD_FILES)
    for name, content in BAD_FILES.items():
        kept = production.quarantine_dir / quarantined[name]["quarantined_as"]
        assert kept.read_bytes() == content  # byte for byte, nothing deleted
        reason = kept.with_name(kept.name + ".reason.txt").read_text()
        assert name in reason and quarantined[name]["reason"] in reason
    assert ("other feature columns than the production model"
            in quarantined["other_columns.csv"]["reason"])
    assert "integer labels" in quarantined["integer_labels.csv"]["reason"]
    assert "no label column" in quarantined["no_label.csv"]["reason"]
    assert "never seen: ['exploded']" in quarantined["unseen_label.csv"]["reason"]
    for name in ("garbage_header.csv", "not_utf8.csv", "unparsable_rows.csv"):
        assert "not a readable CSV file" in quarantined[name]["reason"]
    # The good files were monitored and archived as usual.
    assert sorted(summary["archived_files"]) == sorted(n for n in good_before
                                                       if n not in BAD_FILES)
    runs = mlflow.MlflowClient(production.tracking_uri).search_runs(
        [production.client().get_experiment_by_name("classifier-retraining").experiment_id],
        "attributes.run_name = 'DataQuarantine'")
    assert len(runs) == 1 and runs[0].data.metrics["quarantined_files"] == len(BAD_FILES)


def test_trigger_counts_good_files_only(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(3, drift=0.0, seed=22))
    for name in ("empty.csv", "garbage.csv"):
        (production.new_dir / name).write_bytes(BAD_FILES[name])

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "skipped"
    assert len(summary["quarantined_files"]) == 2
    assert sorted(snapshot(production.new_dir)) == ["batch_000.csv", "batch_001.csv",
                                                    "batch_002.csv"]


def test_prepare_hook_exception_quarantines_that_file_with_its_message(production, capsys):
    domain = production.root / "picky_domain.py"
    source = (PROJECT_DIR / "train_classification_model.py").read_text()
    domain.write_text(source.replace(
        '    return frame\n',
        '    if "picky" in path.name:\n        raise ValueError("sensor 7 is unreliable")\n'
        '    return frame\n', 1))
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=23))
    write_csvs(production.new_dir, "picky", machine_files(1, drift=0.0, seed=24))

    code, summary = cycle(production, capsys, "--domain-file", str(domain))

    assert code == 0
    [entry] = summary["quarantined_files"]
    assert entry["file"] == "picky_000.csv" and "sensor 7 is unreliable" in entry["reason"]


def test_dry_run_reports_bad_files_without_moving_them(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=25))
    (production.new_dir / "empty.csv").write_bytes(b"")
    before = snapshot(production.new_dir)

    code, summary = cycle(production, capsys, "--dry-run")

    assert code == 0 and summary["quarantined_files"][0]["quarantined_as"] is None
    assert snapshot(production.new_dir) == before
    assert not production.quarantine_dir.exists()


def test_files_still_settling_are_left_for_the_next_run(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=26))
    old = time.time() - 60
    for path in sorted(production.new_dir.iterdir())[:4]:
        os.utime(path, (old, old))  # four settled files, one just written

    flags = [flag for flag in production.flags]
    flags[flags.index("--settle-seconds") + 1] = "30"
    import pipeline_orchestrator
    from tests.conftest import run_json

    code, summary = run_json(pipeline_orchestrator, [*flags, "--min-new-files", "4"], capsys)

    assert code == 0 and summary["new_files"] == 4
    assert snapshot(production.new_dir).keys() == {"batch_004.csv"}


def test_odd_file_names_are_read_and_archived_under_their_own_names(production, capsys):
    names = ["with spaces.csv", "\u00fcn\u00efc\u00f8d\u00e9 \u6e29\u5ea6.csv", "two..dots.csv",
             "batch_003.csv", "batch_004.csv"]
    for name, frame in zip(names, machine_files(5, drift=0.0, seed=27), strict=True):
        frame.to_csv(production.new_dir / name, index=False)
    # A leading dot is a hidden name, by the writer protocol: not taken, and not touched.
    (production.new_dir / "..hidden.csv").write_bytes(b"still being written")
    batch = snapshot(production.new_dir)

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "healthy"
    assert sorted(summary["archived_files"]) == sorted(names)
    history = snapshot(production.used_dir)
    assert all(history[name] == batch[name] for name in names)
    assert (production.new_dir / "..hidden.csv").read_bytes() == b"still being written"


def test_symbolic_link_is_set_aside_unread_and_its_target_untouched(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=28))
    outside = production.root / "elsewhere"
    outside.mkdir()
    [target] = write_csvs(outside, "secret", machine_files(1, drift=0.0, seed=29))
    content = target.read_bytes()
    os.symlink(target, production.new_dir / "linked.csv")

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "healthy"
    [entry] = summary["quarantined_files"]
    assert entry["file"] == "linked.csv" and "symbolic link" in entry["reason"]
    kept = production.quarantine_dir / entry["quarantined_as"]
    assert kept.is_symlink() and os.readlink(kept) == str(target)
    assert target.read_bytes() == content and os.stat(target).st_nlink == 1
    assert "linked.csv" not in summary["archived_files"]
