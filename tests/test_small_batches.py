"""No batch size blocks a decision forever: the held-out share grows to what the gate needs,
and a batch that cannot be judged even then waits whole for the next delivery."""

from __future__ import annotations

import argparse
import json

from examples.object_tracking.generate import sequences
from tests.conftest import cycle, machine_files, run_script, snapshot, write_csvs
from tests.test_example_domain import EXAMPLE, register_example_model


def test_fifteen_files_of_forty_rows_are_judged_and_a_better_challenger_promoted(production,
                                                                              capsys):
    # A fifth of 15 files is 3 files and 120 rows: under the 200-row floor, and 3 row slices
    # where a difference at 95% needs 6. Six files of 40 rows meet both.
    write_csvs(production.new_dir, "small", machine_files(15, drift=1.0, seed=7, rows=40))

    code, summary = cycle(production, capsys, "--min-new-files", "15")

    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    assert len(summary["heldout_files"]) == 6
    assert "on the same 6 held-out files, 240 rows" in summary["reason"]
    assert len(summary["archived_files"]) == 15


def test_a_per_file_metric_with_the_default_fifteen_files_can_promote(workspace):
    domain = ["--domain-file", str(EXAMPLE), "--label-column", "ground_truth"]
    register_example_model(workspace, domain)
    write_csvs(workspace.new_dir, "sequence", sequences(15, changed=True, seed=2))

    # Every setting at its default, the trigger of 15 files included.
    done = run_script("pipeline_orchestrator.py", [*workspace.flags, *domain, "--json"],
                      cwd=workspace.root)

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["outcome"] == "promoted", summary["reason"]
    # Six whole files: the fewest whose bootstrap can show a difference at 95%.
    assert len(summary["heldout_files"]) == 6
    assert workspace.alias_version() == "2"

    # The old concept returns. Probation only records (it would restore version 1 on its
    # own), so version 1 must come back as an earlier version, the only one: judged at the
    # full level, on 6 files.
    write_csvs(workspace.new_dir, "returned", sequences(15, changed=False, seed=3))
    done = run_script("pipeline_orchestrator.py", [*workspace.flags, *domain, "--json",
                                                   "--no-auto-rollback"], cwd=workspace.root)

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert len(summary["heldout_files"]) == 6
    [earlier] = summary["earlier_versions"]
    assert earlier["version"] == "1" and earlier["passed"] is True, earlier["reason"]
    assert summary["outcome"] == "promoted" and workspace.alias_version() == "1", \
        summary["reason"]


def test_held_out_files_grow_to_what_earlier_versions_need_when_the_batch_allows(workspace):
    """Two or more earlier versions are each judged at a Bonferroni share of the 5% error
    rate (97.5% for two), where whole files need 7 to show a difference, not 6."""
    from retraining.config import build_settings
    from retraining.datafiles import list_data_files, load_files
    from retraining.domain import load_domain
    from retraining.heldout import choose_heldout

    write_csvs(workspace.new_dir, "sequence", sequences(15, changed=True, seed=2))
    files = load_files(list_data_files(workspace.new_dir), "ground_truth",
                       load_domain(EXAMPLE).prepare_file)
    settings = build_settings(workspace.root, argparse.Namespace(), environ={})

    alone = choose_heldout(files, settings)
    beside_two = choose_heldout(files, settings, earlier_level=0.975)
    beside_many = choose_heldout(files, settings, earlier_level=0.999)

    assert len(alone.names) == 6 and alone.lacks is None
    assert len(beside_two.names) == 7 and beside_two.names > alone.names
    # 11 files would be needed at 99.9%, more than half the batch: the challenger's 6 stay.
    assert beside_many.names == alone.names and beside_many.lacks is None


def test_a_batch_too_small_to_judge_waits_and_is_judged_with_the_next(production, capsys):
    write_csvs(production.new_dir, "first", machine_files(10, drift=1.0, seed=8))
    first_batch = snapshot(production.new_dir)
    flags = ("--min-new-files", "10", "--min-heldout-rows", "2000")

    code, summary = cycle(production, capsys, *flags)

    # Half of 10 files of 300 rows is 1500 rows: no share of this batch reaches 2000.
    assert code == 0 and summary["outcome"] == "deferred", summary["reason"]
    assert ("but the batch cannot be judged yet: with 5 of its 10 files held out, the most "
            "a batch may, 1500 rows where the gate needs 2000. Its 10 files (3000 rows) stay "
            "in new_gts/ and the next cycle judges them together with the files that arrive "
            "by then") in summary["reason"]
    assert summary["challenger_version"] is None and summary["archived_files"] is None
    assert snapshot(production.new_dir) == first_batch
    assert len(production.client().search_model_versions("name='classifier'")) == 1
    monitoring = production.client().get_run(summary["monitoring_run_id"])
    assert monitoring.data.tags["decision"] == "deferred"
    assert monitoring.data.tags["reason"] == summary["reason"]

    write_csvs(production.new_dir, "second", machine_files(6, drift=1.0, seed=9))
    code, summary = cycle(production, capsys, *flags)

    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    assert len(summary["heldout_files"]) == 7  # 2100 rows of 16 files
    assert len(summary["archived_files"]) == 16
    history = snapshot(production.used_dir)
    assert {name: history[name] for name in first_batch} == first_batch
    assert snapshot(production.new_dir) == {}
