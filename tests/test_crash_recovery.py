"""Killed for real at a step boundary, the next run converges: no second challenger, no
file lost or duplicated, no run left RUNNING."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import mlflow.sklearn
import pytest

from retraining.datafiles import list_data_files
from retraining.ledger import arrival_order
from tests.conftest import (
    PROJECT_DIR,
    cycle,
    cycle_killed_at,
    machine_files,
    run_script,
    snapshot,
    write_csvs,
)


def _killed_after_registration(production, *extra) -> dict[str, bytes]:
    """A cycle on a drifted batch, killed between registering its challenger and judging it."""
    write_csvs(production.new_dir, "batch", machine_files(6, drift=1.0, seed=31))
    batch = snapshot(production.new_dir)
    killed = cycle_killed_at(production, "retraining.decision.compare", "before", 1, *extra)
    assert killed.returncode == -9, killed.stderr[-2000:]
    client = production.client()
    assert sorted(str(v.version) for v in client.search_model_versions("")) == ["1", "2"]
    assert production.alias_version() == "1" and snapshot(production.new_dir) == batch
    return batch


def _rerun(production, *extra):
    return run_script("pipeline_orchestrator.py",
                      [*production.flags, "--min-new-files", "5", "--json", *extra])


def test_killed_after_registration_resumes_with_the_same_challenger(production):
    batch = _killed_after_registration(production)

    rerun = _rerun(production)  # the same settings; nothing kills it now

    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    assert summary["outcome"] == "promoted"
    assert summary["challenger_version"] == "2"  # the same challenger, not a third version
    client = production.client()
    assert summary["training_window"] == client.get_model_version(
        "classifier", "2").tags["training_window"]
    assert sorted(str(v.version) for v in client.search_model_versions("")) == ["1", "2"]
    assert production.alias_version() == "2"
    # Every file exactly once, byte for byte, now in history.
    used = snapshot(production.used_dir)
    assert snapshot(production.new_dir) == {} and all(used[n] == b for n, b in batch.items())
    statuses = {run.info.run_id: run.info.status
                for run in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    assert "RUNNING" not in statuses.values()
    # The promotion is recorded on a finished run of the cycle that made it, which status
    # shows, and not on the run the kill left behind.
    finishing = client.get_run(summary["retraining_run_id"])
    assert finishing.info.status == "FINISHED"
    assert finishing.data.tags["decision"] == "promoted"
    assert finishing.data.tags["resumed_from_run_id"] != finishing.info.run_id
    status = run_script("registry_tool.py", ["status", "--tracking-uri",
                                             production.tracking_uri, "--json"])
    shown = json.loads(status.stdout)
    assert shown["cycles"][0]["outcome"] == "promoted"
    assert shown["cycles"][0]["retraining_run_id"] == finishing.info.run_id
    assert shown["production"]["moved_by"] == "promoted"


def test_a_rerun_with_other_settings_trains_a_new_challenger(production):
    """Another seed holds out other files: the old challenger was trained on some of them."""
    _killed_after_registration(production)

    rerun = _rerun(production, "--seed", "7")

    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    assert summary["challenger_version"] == "3"
    client = production.client()
    orphan = client.get_model_version("classifier", "2").tags
    assert orphan["decision"] == "orphaned"
    assert "other settings" in orphan["orphaned_because"]
    assert "seed" in json.loads(client.get_model_version("classifier", "3").tags["settings"])
    assert json.loads(client.get_model_version("classifier", "3").tags["settings"])["seed"] == 7


LINEAGE = ("batch_key", "training_window", "data_manifest_sha256", "training_files",
           "training_rows", "settings", "git_commit", "parent_production_version")


def test_a_challenger_resumed_after_an_outage_carries_its_whole_lineage(production, capsys):
    """Killed after registration but before its tags were written (where a store outage
    stops a cycle), the challenger is promoted with the tags of an uninterrupted one."""
    write_csvs(production.new_dir, "batch", machine_files(6, drift=1.0, seed=31))
    killed = cycle_killed_at(production, "retraining.lineage.describe", "before", 1)
    assert killed.returncode == -9, killed.stderr[-2000:]
    client = production.client()
    assert not set(LINEAGE) & set(client.get_model_version("classifier", "2").tags)

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "promoted" and summary["challenger_version"] == "2"
    resumed = client.get_model_version("classifier", "2")
    assert set(LINEAGE) <= set(resumed.tags)
    assert resumed.tags["parent_production_version"] == "1"
    assert resumed.tags["previous_production_version"] == "1"
    # Every tag the description names exists, on the version or on the run that made it.
    run = client.get_run(summary["retraining_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["decision"] == "promoted"
    assert client.get_run(run.data.tags["resumed_from_run_id"]).info.status == "KILLED"
    assert "training_window_reason" in run.data.tags
    assert resumed.tags["data_manifest_sha256"] in resumed.description
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"data_manifest.json", "training_windows.json"} <= artifacts


def test_killed_inside_the_retraining_run_is_marked_killed_and_retrained_once(production,
                                                                              capsys):
    write_csvs(production.new_dir, "batch", machine_files(6, drift=1.0, seed=33))
    batch = snapshot(production.new_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    process = subprocess.Popen([sys.executable, str(PROJECT_DIR / "pipeline_orchestrator.py"),
                                *production.flags, "--min-new-files", "5"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = production.client()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        open_runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            "attributes.status = 'RUNNING' and attributes.run_name = 'ModelRetraining'")
        if open_runs:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert process.wait(timeout=60) == -9, "the cycle ended before it could be killed"

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "promoted"
    assert sorted(str(v.version) for v in client.search_model_versions("")) == ["1", "2"]
    assert production.alias_version() == "2"
    killed = client.get_run(open_runs[0].info.run_id)
    assert killed.info.status == "KILLED" and "interrupted" in killed.data.tags
    used = snapshot(production.used_dir)
    assert snapshot(production.new_dir) == {} and all(used[n] == b for n, b in batch.items())


def test_hard_link_of_history_in_new_gts_is_quarantined_as_a_redelivery(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=32))
    # One inode under two names, as a kill between link and unlink would leave, but made by
    # a person: only an archive plan may say a file was being archived.
    os.link(production.used_dir / "history_000.csv", production.new_dir / "again.csv")
    history = snapshot(production.used_dir)

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["outcome"] == "healthy"
    [entry] = summary["quarantined_files"]
    assert entry["file"] == "again.csv" and "history_000.csv in used_gts/" in entry["reason"]
    used = snapshot(production.used_dir)
    assert {name: used[name] for name in history} == history and len(used) == len(history) + 5
    assert (production.quarantine_dir / "again.csv").read_bytes() == history["history_000.csv"]


def test_unreadable_archive_plan_needs_a_person_and_moves_nothing(production):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=34))
    plan = production.used_dir / ".archive_in_progress.json"
    plan.write_text('{"archive_id": "1-ab", "fi')  # cut short, as a failing disk could
    before = snapshot(production.new_dir), snapshot(production.used_dir)

    done = run_script("pipeline_orchestrator.py", [*production.flags, "--min-new-files", "5"])

    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "archive plan" in last and f"mv {plan} {plan}.bad" in last
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


def test_dry_run_leaves_a_half_quarantined_file_as_it_is(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(5, drift=0.0, seed=35))
    production.quarantine_dir.mkdir()
    os.link(production.new_dir / "batch_000.csv", production.quarantine_dir / "batch_000.csv")

    code, _ = cycle(production, capsys, "--dry-run")

    assert code == 0
    assert (production.quarantine_dir / "batch_000.csv").exists()
    assert os.stat(production.new_dir / "batch_000.csv").st_nlink == 2


# Every boundary of a promoting cycle whose batch also holds a bad file, in the order the cycle
# reaches them. The first file move is the bad file's, into quarantine; the next are archives.
BOUNDARIES = {
    "after open_cycle: bad file quarantined": ("pipeline_orchestrator.open_cycle", "after", 1),
    "mid-quarantine: reason written, file not moved": (
        "retraining.archive.move_without_overwrite", "before", 1),
    "mid-quarantine: file under both names": ("retraining.archive.move_without_overwrite",
                                              "linked", 1),
    "after monitoring": ("pipeline_orchestrator.monitor", "after", 1),
    "after the challenger is registered": ("retraining.training.train_challenger", "after", 1),
    "after the comparison, before the alias": ("retraining.decision.compare", "after", 1),
    "after the decision, before the alias moves": ("retraining.decision.promote", "before", 1),
    "after the alias moved, before the promotion is recorded": (
        "retraining.decision.complete_promotion", "before", 1),
    "after the alias moved, before archiving": ("retraining.decision.promote", "after", 1),
    "mid-archive: file under both names": ("retraining.archive.move_without_overwrite",
                                           "linked", 4),
    "mid-archive: between two files": ("retraining.archive.move_without_overwrite", "before", 4),
    "after the moves, before the ledger": ("retraining.archive.record_batch", "before", 1),
}


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_killed_at_any_boundary_the_next_run_converges(production, capsys, boundary):
    write_csvs(production.new_dir, "batch", machine_files(6, drift=1.0, seed=41))
    (production.new_dir / "broken.csv").write_bytes(b"\x00\xff\xfe garbage \x00\n\x01")
    every_file = sorted([*snapshot(production.used_dir).values(),
                         *snapshot(production.new_dir).values()])

    target, when, nth = BOUNDARIES[boundary]
    killed = cycle_killed_at(production, target, when, nth)
    assert killed.returncode == -9, f"not killed at {boundary}: {killed.stderr[-2000:]}"

    code, summary = cycle(production, capsys)

    assert code == 0, capsys.readouterr().err
    if boundary.startswith("mid-archive") or "ledger" in boundary:
        # The killed cycle had completed: its batch is finished, not judged again.
        assert summary["resumed_archive"] and summary["outcome"] == "skipped"
    else:
        assert summary["outcome"] in ("promoted", "healthy", "rejected")
    # Every file exactly once, byte for byte, in history or quarantine; none left waiting.
    assert snapshot(production.new_dir) == {}
    kept = [*snapshot(production.used_dir).values(),
            *(content for name, content in snapshot(production.quarantine_dir).items()
              if not name.endswith(".reason.txt"))]
    assert sorted(kept) == every_file
    # The batch is history's newest arrival, whatever names its files were given.
    newest = arrival_order(production.used_dir, list_data_files(production.used_dir))[-1]
    assert sorted(newest) == [f"batch_{i:03d}.csv" for i in range(6)]
    reasons = [p for p in production.quarantine_dir.iterdir() if p.name.endswith(".reason.txt")]
    assert len(reasons) == 1 and "broken.csv" in reasons[0].read_text()
    # One challenger for the batch, and the alias on a version that loads.
    client = production.client()
    assert sorted(str(v.version) for v in client.search_model_versions("")) == ["1", "2"]
    assert production.alias_version() == "2"
    mlflow.set_tracking_uri(production.tracking_uri)
    assert hasattr(mlflow.sklearn.load_model("models:/classifier@production"), "predict")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {run.info.status for run in runs} <= {"FINISHED", "KILLED"}
    # The alias history holds the one promotion that happened, so a rollback goes to v1.
    status = json.loads(run_script("registry_tool.py", ["status", "--tracking-uri",
                                                        production.tracking_uri,
                                                        "--json"]).stdout)
    assert status["production"]["moved_by"] == "promoted"
    assert status["production"]["rollback_target"] == "1"
    assert client.get_model_version("classifier", "2").tags["decision"] == "promoted"
    assert client.get_model_version("classifier", "1").tags["decision"] == "replaced"


def test_killed_before_the_alias_moves_leaves_no_promotion_to_roll_back_to(production):
    """A rollback between the kill and the next cycle must not go forward to the challenger."""
    write_csvs(production.new_dir, "batch", machine_files(6, drift=1.0, seed=42))
    killed = cycle_killed_at(production, "retraining.decision.promote", "before", 1)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert production.alias_version() == "1"

    status = json.loads(run_script("registry_tool.py", ["status", "--tracking-uri",
                                                        production.tracking_uri,
                                                        "--json"]).stdout)
    rollback = run_script("registry_tool.py", ["rollback", "--reason", "test",
                                               "--tracking-uri", production.tracking_uri])

    assert status["production"]["rollback_target"] is None
    assert rollback.returncode == 1 and production.alias_version() == "1"
    assert "no production version before version 1" in rollback.stderr


def test_a_person_moving_the_alias_between_a_kill_and_the_rerun_is_not_overruled(production,
                                                                                 capsys):
    """The rerun's production is the person's choice: the old challenger is not reused."""
    write_csvs(production.new_dir, "second", machine_files(6, drift=1.0, seed=43))
    assert cycle(production, capsys)[1]["outcome"] == "promoted"  # v2 over v1
    write_csvs(production.new_dir, "batch", machine_files(6, drift=2.0, seed=44))
    killed = cycle_killed_at(production, "retraining.decision.compare", "before", 1,
                        "--error-threshold", "0", "--no-require-significance")
    assert killed.returncode == -9, killed.stderr[-2000:]
    moved = run_script("registry_tool.py", ["set-alias", "production", "1", "--reason",
                                            "v2 misbehaves", "--by", "ann", "--tracking-uri",
                                            production.tracking_uri])
    assert moved.returncode == 0, moved.stderr[-2000:]

    code, summary = cycle(production, capsys, "--error-threshold", "0",
                          "--no-require-significance")

    assert code == 0, summary
    orphan = production.client().get_model_version("classifier", "3").tags
    assert orphan["decision"] == "orphaned"
    assert "challenge version 2, and production is now version 1" in orphan["orphaned_because"]
    assert summary["challenger_version"] == "4"
    assert summary["production_version_before"] == "1"
    assert production.client().get_model_version("classifier", "1").tags[
        "decision"] in ("set_by_hand", "replaced")


def test_a_resumed_challenger_that_no_longer_loads_is_orphaned_not_a_stall(production, capsys):
    write_csvs(production.new_dir, "batch", machine_files(6, drift=1.0, seed=45))
    killed = cycle_killed_at(production, "retraining.decision.compare", "before", 1)
    assert killed.returncode == -9, killed.stderr[-2000:]
    newest = max(production.database.parent.rglob("model.skops"),
                 key=lambda path: path.stat().st_mtime_ns)
    newest.unlink()  # version 2's model, lost from the artifact store

    code, summary = cycle(production, capsys)

    assert code == 0 and summary["challenger_version"] == "3", summary
    orphan = production.client().get_model_version("classifier", "2").tags
    assert orphan["decision"] == "orphaned" and "cannot be loaded" in orphan["orphaned_because"]
    assert snapshot(production.new_dir) == {}
