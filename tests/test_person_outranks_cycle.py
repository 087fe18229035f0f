"""A person's move of the alias outranks a running cycle: the cycle never undoes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from retraining.runlock import alias_lock
from tests.conftest import (
    PROJECT_DIR,
    changed_concept_files,
    cycle,
    machine_files,
    run_script,
    script_environment,
    snapshot,
    start_cycle_waiting_in_training,
    write_csvs,
)


def _tool(workspace, *argv) -> subprocess.CompletedProcess:
    return run_script("registry_tool.py", [*argv, "--tracking-uri", workspace.tracking_uri,
                                           "--json"])


@pytest.fixture
def promoted_twice(production, capsys):
    """Version 1, then version 2 promoted by a cycle: production has a version to go back to."""
    write_csvs(production.new_dir, "first", machine_files(10, drift=1.0, seed=6))
    code, summary = cycle(production, capsys)
    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    return production


def test_rollback_during_training_is_not_undone_by_the_cycle(promoted_twice):
    space = promoted_twice
    write_csvs(space.new_dir, "batch", changed_concept_files(10, seed=61))
    batch = snapshot(space.new_dir)
    process, go = start_cycle_waiting_in_training(space)
    try:
        rolled = _tool(space, "rollback", "--reason", "v2 pages the night shift", "--by", "ann")
        assert rolled.returncode == 0, rolled.stderr[-2000:]
        assert space.alias_version() == "1"
    finally:
        go.write_text("go")
    out, err = process.communicate(timeout=600)

    assert process.returncode == 0, err[-3000:]
    summary = json.loads(out)
    # The challenger beat version 2, the version it was compared with; a person has since
    # chosen version 1. Nothing is promoted, and the batch is archived as for a rejection.
    assert summary["outcome"] == "alias_moved", summary["reason"]
    assert "alias moved by hand during the cycle" in summary["reason"]
    assert "rollback to version 1 by ann" in summary["reason"]
    assert summary["production_version_before"] == "2"
    assert summary["production_version_after"] == "1" == space.alias_version()
    assert snapshot(space.new_dir) == {}
    used = snapshot(space.used_dir)
    assert all(used[name] == content for name, content in batch.items())
    client = space.client()
    assert client.get_model_version("classifier", "2").tags["decision"] == "rolled_back"
    assert client.get_model_version("classifier", "1").tags["decision"] == "restored"
    challenger = client.get_model_version("classifier", summary["challenger_version"])
    assert challenger.tags["decision"] == "alias_moved"
    assert "alias moved by hand" in challenger.description
    assert not any(key.startswith("challenge.v3")
                   for key in client.get_model_version("classifier", "2").tags)
    run = client.get_run(summary["retraining_run_id"])
    assert run.data.tags["decision"] == "alias_moved"

    # Status reads the cycle as it ended, and production as the person left it.
    status = json.loads(_tool(space, "status", "--new-dir", str(space.new_dir)).stdout)
    assert status["production"]["version"] == "1"
    assert status["production"]["moved_by"] == "rollback"
    assert status["cycles"][0]["outcome"] == "alias_moved"


def test_set_alias_back_and_forth_during_a_cycle_still_stops_the_promotion(promoted_twice):
    """Moved away and back to the version the cycle loaded: a person acted, so it defers."""
    space = promoted_twice
    write_csvs(space.new_dir, "batch", changed_concept_files(10, seed=62))
    process, go = start_cycle_waiting_in_training(space)
    try:
        for version in ("1", "2"):
            moved = _tool(space, "set-alias", "production", version, "--reason", "checking")
            assert moved.returncode == 0, moved.stderr[-2000:]
    finally:
        go.write_text("go")
    out, err = process.communicate(timeout=600)

    assert process.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["outcome"] == "alias_moved", summary["reason"]
    assert space.alias_version() == "2"


def test_a_move_by_hand_waits_while_a_cycle_holds_the_alias(promoted_twice):
    """The tool reads and moves the alias under the same lock as a cycle's promotion."""
    import argparse

    from retraining.config import build_settings

    space = promoted_twice
    settings = build_settings(PROJECT_DIR, argparse.Namespace(tracking_uri=space.tracking_uri),
                              {})
    lock = settings.alias_lock_path
    with alias_lock(lock):
        process = subprocess.Popen(
            [sys.executable, str(PROJECT_DIR / "registry_tool.py"), "rollback",
             "--reason", "test", "--tracking-uri", space.tracking_uri, "--json"],
            env=script_environment({}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while str(lock) not in _open_files(process.pid):
            assert process.poll() is None, process.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the tool never reached the alias lock"
            time.sleep(0.05)
        time.sleep(2)
        assert process.poll() is None and space.alias_version() == "2"
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert json.loads(out)["from_version"] == "2" and space.alias_version() == "1"


def _open_files(pid: int) -> set[str]:
    folder = f"/proc/{pid}/fd"
    found = set()
    for name in os.listdir(folder):
        try:
            found.add(os.readlink(os.path.join(folder, name)))
        except FileNotFoundError:  # closed meanwhile
            continue
    return found


def test_promotion_tags_no_version_as_its_own_predecessor(promoted_twice):
    client = promoted_twice.client()
    assert client.get_model_version("classifier", "1").tags[
        "previous_production_version"] == "none"
    assert client.get_model_version("classifier", "2").tags[
        "previous_production_version"] == "1"
