"""Probation: the first cycle after a promotion judges it against the version it replaced on
files neither saw, and moves the alias back by itself when that version is significantly
better, unless a person decided otherwise or --no-auto-rollback is given."""

from __future__ import annotations

import json

import pytest

from tests.conftest import (
    changed_concept_files,
    cycle,
    machine_files,
    run_script,
    snapshot,
    write_csvs,
)


@pytest.fixture
def promoted(production, capsys):
    """Version 2 promoted after a change of concept; version 1 knew the old concept."""
    write_csvs(production.new_dir, "changed", changed_concept_files(10, seed=41))
    code, summary = cycle(production, capsys)
    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    assert summary["probation"] is None  # version 1 was registered, not promoted
    return production


def _tool(workspace, *argv):
    return run_script("registry_tool.py", [*argv, "--tracking-uri", workspace.tracking_uri,
                                           "--json"])


def test_a_returning_concept_rolls_the_promotion_back_by_itself(promoted, capsys):
    # The old concept returns: version 1 is right on it, version 2 is not.
    write_csvs(promoted.new_dir, "old_again", machine_files(10, drift=0.0, seed=42))
    batch = snapshot(promoted.new_dir)

    code, summary = cycle(promoted, capsys)

    assert code == 0, summary["reason"]
    trial = summary["probation"]
    assert "probation" in summary["timings"]
    assert trial["version"] == "2" and trial["replaced"] == "1"
    assert trial["verdict"] == "failed" and trial["rolled_back"] is True
    assert trial["reason"].startswith(
        "version 2 failed probation: the version it replaced, 1, is significantly better on "
        "the next batch: misclassification_rate ")
    assert "on the 10 new files, 3000 rows, that neither was trained on (95% interval" in \
        trial["reason"]
    assert summary["reason"].startswith(trial["reason"] + "; alias moved back to version 1; "
                                                          "then: ")
    # The cycle goes on with the restored version: it monitors the batch and keeps it.
    assert summary["outcome"] == "healthy"
    assert promoted.alias_version() == summary["production_version_after"] == "1"
    assert set(summary["archived_files"]) == set(batch)
    client = promoted.client()
    failed, restored = (client.get_model_version("classifier", v).tags for v in ("2", "1"))
    assert failed["decision"] == "rolled_back" and failed["probation"].startswith("failed: ")
    assert restored["decision"] == "restored"
    assert restored["alias_changed_by"] == "pipeline_orchestrator.py (probation)"
    monitoring = client.get_run(summary["monitoring_run_id"])
    assert monitoring.data.tags["production_version"] == "1"
    # Recorded like a rollback: the registry tool shows who moved it and why.
    status = json.loads(_tool(promoted, "status").stdout)
    assert status["production"]["version"] == "1"
    assert status["production"]["moved_by"] == "auto_rollback"
    assert status["production"]["why"] == trial["reason"]

    # Probation is held once: the next batch of the new concept is judged against version 1,
    # and version 2, which probation turned away from, is not brought back by it.
    write_csvs(promoted.new_dir, "changed_again", changed_concept_files(10, seed=43))
    code, summary = cycle(promoted, capsys)
    assert code == 0 and summary["probation"] is None
    assert summary["challenger_version"] == "3"


def test_a_dry_run_says_it_would_roll_back_and_goes_on_as_if_it_had(promoted, capsys):
    write_csvs(promoted.new_dir, "old_again", machine_files(10, drift=0.0, seed=42))
    batch = snapshot(promoted.new_dir)
    tags_before = promoted.client().get_model_version("classifier", "2").tags

    code, summary = cycle(promoted, capsys, "--dry-run")

    assert code == 0, summary["reason"]
    assert summary["probation"]["verdict"] == "failed"
    assert summary["probation"]["reason"].endswith("; dry run: the alias stays")
    assert summary["reason"].startswith(summary["probation"]["reason"]
                                        + "; alias would move back to version 1; then: ")
    # Monitored as the real cycle would: version 1, right on its old concept, is healthy.
    assert summary["outcome"] == "healthy", summary["reason"]
    assert summary["reason"].split("; then: ")[1].startswith("production v1 ")
    # ... and nothing moved or was written.
    assert promoted.alias_version() == summary["production_version_after"] == "2"
    assert promoted.client().get_model_version("classifier", "2").tags == tags_before
    assert snapshot(promoted.new_dir) == batch

    # Retraining too, the version it would have rolled back is no earlier version to judge.
    code, summary = cycle(promoted, capsys, "--dry-run", "--error-threshold", "0")
    assert code == 0 and summary["probation"]["rolled_back"] is True, summary["reason"]
    assert "2" not in [c["version"] for c in summary["earlier_versions"] or []]
    assert promoted.alias_version() == "2" and snapshot(promoted.new_dir) == batch


def test_a_promotion_that_holds_passes_probation(promoted, capsys):
    write_csvs(promoted.new_dir, "changed_again", changed_concept_files(10, seed=44))

    code, summary = cycle(promoted, capsys)

    assert code == 0
    assert summary["probation"]["verdict"] == "passed", summary["probation"]["reason"]
    assert promoted.alias_version() == "2"
    tags = promoted.client().get_model_version("classifier", "2").tags
    assert tags["probation"].startswith("passed: version 2 keeps production on probation: "
                                        "version 1 is not significantly better: ")


def test_no_auto_rollback_records_the_failure_and_moves_nothing(promoted, capsys):
    write_csvs(promoted.new_dir, "old_again", machine_files(10, drift=0.0, seed=42))

    # Earlier versions off too: judged as a candidate beside the challenger, version 1
    # would be promoted again by the gate, which is another mechanism.
    code, summary = cycle(promoted, capsys, "--no-auto-rollback", "--earlier-versions", "0")

    assert code == 0
    assert summary["probation"]["verdict"] == "failed"
    assert summary["probation"]["rolled_back"] is False
    assert summary["probation"]["reason"].endswith("; --no-auto-rollback: the alias stays")
    # The cycle goes on with version 2 (which may then be replaced by a new challenger);
    # version 1 is not restored.
    assert summary["production_version_before"] == "2" != promoted.alias_version() or \
        summary["outcome"] != "promoted"
    client = promoted.client()
    assert client.get_model_version("classifier", "2").tags["decision"] != "rolled_back"
    assert client.get_model_version("classifier", "1").tags.get("decision") != "restored"
    assert promoted.alias_version() != "1"


def test_a_version_a_person_set_is_not_on_probation(promoted, capsys):
    moved = _tool(promoted, "set-alias", "production", "1", "--reason", "back to the old one")
    assert moved.returncode == 0, moved.stderr
    moved = _tool(promoted, "set-alias", "production", "2", "--reason", "no, the new one")
    assert moved.returncode == 0, moved.stderr
    write_csvs(promoted.new_dir, "old_again", machine_files(10, drift=0.0, seed=42))

    code, summary = cycle(promoted, capsys)

    # Version 2 is production by a person's decision: the cycle does not second-guess it.
    assert code == 0 and summary["probation"] is None
    assert promoted.alias_version() != "1"
