"""Earlier versions are candidates: a returning concept gets its old model back in the cycle
that sees it return, unless a person turned away from that version."""

from __future__ import annotations

import json

import pytest

from tests.conftest import (
    cycle,
    cycle_killed_at,
    machine_files,
    new_concept_files,
    promote_new_concept,
    run_script,
    write_csvs,
)

# Trained on every file, the challenger mixes both concepts: worse on the old one than the
# version that knew only it.
ALL = ("--training-windows", "all")


def _tool(workspace, *argv):
    return run_script("registry_tool.py", [*argv, "--tracking-uri", workspace.tracking_uri,
                                           "--json"])


@pytest.fixture
def new_concept_in_production(production, capsys):
    promote_new_concept(production, capsys)
    return production


def test_a_returning_concept_gets_its_old_version_back(new_concept_in_production, capsys):
    workspace = new_concept_in_production
    write_csvs(workspace.new_dir, "old_again", machine_files(10, drift=0.0, seed=53))

    code, summary = cycle(workspace, capsys, *ALL)

    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    assert workspace.alias_version() == summary["production_version_after"] == "1"
    [earlier] = summary["earlier_versions"]  # version 2 is production, 3 the challenger
    assert earlier["version"] == "1" and earlier["passed"] is True
    assert earlier["error"] < summary["challenger_error"]
    assert summary["reason"].startswith("version 1 is better: version 1 misclassification_rate ")
    assert "of the candidates that pass the gate it has the lowest misclassification_rate " \
        "(the challenger: " in summary["reason"]
    client = workspace.client()
    challenger = client.get_model_version("classifier", summary["challenger_version"]).tags
    assert challenger["decision"] == "passed_over"
    restored = client.get_model_version("classifier", "1").tags
    assert restored["decision"] == "promoted" and restored["previous_production_version"] == "2"
    assert restored["probation"] == "pending"
    assert restored["baseline_from"] == "its 4 held-out files when it was promoted again"
    assert client.get_model_version("classifier", "2").tags["decision"] == "replaced"
    run = client.get_run(summary["retraining_run_id"])
    assert run.data.tags["decision"] == "promoted" and run.data.tags["promoted_version"] == "1"
    assert run.data.metrics["earlier_v1_error"] == earlier["error"]
    assert json.loads(run.data.tags["earlier_versions"]) == summary["earlier_versions"]
    status = json.loads(_tool(workspace, "status").stdout)
    assert status["production"]["version"] == "1"
    assert status["production"]["moved_by"] == "promoted"


def test_an_earlier_version_behind_pages_of_newer_ones_is_still_found(
        new_concept_in_production, capsys):
    # Versions are read a page at a time, newest first: 25 never-judged versions (registered
    # by hand, say) sit between production and version 1.
    workspace = new_concept_in_production
    client = workspace.client()
    production = client.get_model_version("classifier", "2")
    for _ in range(25):
        client.create_model_version("classifier", production.source, run_id=production.run_id)
    write_csvs(workspace.new_dir, "old_again", machine_files(10, drift=0.0, seed=53))

    code, summary = cycle(workspace, capsys, *ALL)

    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    assert [earlier["version"] for earlier in summary["earlier_versions"]] == ["1"]
    assert workspace.alias_version() == "1"


def test_an_earlier_version_promoted_by_a_killed_cycle_keeps_its_new_baseline(
        new_concept_in_production, capsys):
    """Killed the instant the alias moved back to version 1, the next run completes the
    promotion: version 1's baseline is then the held-out files that judged it again, not
    the old concept's figures from before version 2."""
    workspace = new_concept_in_production
    write_csvs(workspace.new_dir, "old_again", machine_files(10, drift=0.0, seed=53))
    killed = cycle_killed_at(workspace, "retraining.decision.promote", "after", 1, *ALL)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert workspace.alias_version() == "1"

    code, summary = cycle(workspace, capsys, *ALL)

    assert code == 0, summary["reason"]
    restored = workspace.client().get_model_version("classifier", "1").tags
    assert restored["decision"] == "promoted" and restored["probation"] == "pending"
    assert restored["baseline_from"] == "its 4 held-out files when it was promoted again"


def test_a_version_a_person_rolled_back_is_never_a_candidate(production, capsys):
    write_csvs(production.new_dir, "changed", new_concept_files(10, seed=51))
    code, summary = cycle(production, capsys)
    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    rolled = _tool(production, "rollback", "--reason", "version 2 misbehaves in the field")
    assert rolled.returncode == 0, rolled.stderr
    # The batch that would favour version 2 again.
    write_csvs(production.new_dir, "changed_again", new_concept_files(10, seed=52))

    code, summary = cycle(production, capsys)

    assert code == 0, summary["reason"]
    assert summary["probation"] is None  # version 1 was restored by a person
    assert summary["earlier_versions"] == []  # version 1 is production, 2 turned away from
    assert production.alias_version() != "2"


def test_earlier_versions_zero_judges_the_challenger_alone(new_concept_in_production, capsys):
    workspace = new_concept_in_production
    write_csvs(workspace.new_dir, "old_again", machine_files(10, drift=0.0, seed=53))

    code, summary = cycle(workspace, capsys, *ALL, "--earlier-versions", "0")

    assert code == 0 and summary["earlier_versions"] == []
    assert workspace.alias_version() in ("2", summary["challenger_version"])
