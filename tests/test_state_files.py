"""The product's own files (locks, ledger, archive plan) are never written through a link."""

from __future__ import annotations

import os

import pytest

from retraining.archive import ARCHIVE_PLAN
from retraining.ledger import LEDGER_NAME
from retraining.runlock import LOCK_NAME
from tests.conftest import machine_files, run_script, snapshot, write_csvs


def _batch(workspace):
    write_csvs(workspace.new_dir, "batch", machine_files(5, drift=0.0, seed=71))
    return snapshot(workspace.new_dir), snapshot(workspace.used_dir)


def _cycle(workspace):
    return run_script("pipeline_orchestrator.py",
                      [*workspace.flags, "--min-new-files", "5"])


def _last_line(done) -> str:
    return done.stderr.strip().splitlines()[-1]


@pytest.fixture
def victim(tmp_path):
    """A file elsewhere on the machine that a planted link points at."""
    path = tmp_path / "elsewhere" / "precious.conf"
    path.parent.mkdir()
    path.write_text("root:do-not-touch\n")
    return path


@pytest.mark.parametrize("folder, name", [("new_dir", LOCK_NAME), ("used_dir", LOCK_NAME),
                                          ("used_dir", LEDGER_NAME)])
def test_a_planted_symbolic_link_is_refused_and_its_target_untouched(production, victim,
                                                                     folder, name):
    before = _batch(production)
    link = getattr(production, folder) / name
    link.symlink_to(victim)

    done = _cycle(production)

    assert done.returncode == 1, done.stderr[-2000:]
    assert f"{link} is a symbolic link (to {victim})" in _last_line(done)
    assert f"rm {link}" in _last_line(done)
    assert victim.read_text() == "root:do-not-touch\n" and link.is_symlink()
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


def test_a_hard_link_under_the_lock_name_is_refused(production, victim):
    before = _batch(production)
    os.link(victim, production.new_dir / LOCK_NAME)

    done = _cycle(production)

    assert done.returncode == 1
    assert "a file with 1 other name(s) (a hard link)" in _last_line(done)
    assert victim.read_text() == "root:do-not-touch\n"
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_fifo_under_the_lock_name_gets_one_line(production, kind):
    before = _batch(production)
    lock = production.new_dir / LOCK_NAME
    lock.mkdir() if kind == "folder" else os.mkfifo(lock)

    done = _cycle(production)  # a FIFO must not hang it: run_script's timeout would fail

    assert done.returncode == 1
    assert f"{lock} is a {'folder' if kind == 'folder' else 'FIFO'}" in _last_line(done)
    assert "Traceback" not in done.stderr
    assert (snapshot(production.new_dir), snapshot(production.used_dir)) == before


def test_a_link_planted_as_the_archive_plans_partial_file_is_replaced_not_followed(
        production, victim):
    _batch(production)
    planted = production.used_dir / (ARCHIVE_PLAN + ".part")
    planted.symlink_to(victim)

    done = _cycle(production)

    assert done.returncode == 0, done.stderr[-2000:]
    assert victim.read_text() == "root:do-not-touch\n"
    assert not os.path.lexists(planted)  # the link was removed, the plan written and done
    assert snapshot(production.new_dir) == {}


def test_outputs_named_by_a_person_replace_or_refuse_a_planted_link(production, victim, capsys):
    import registry_tool
    import train_classification_model

    plot = production.root / "plot.png"
    plot.symlink_to(victim)
    assert registry_tool.main(["history", "--output", str(plot), "--tracking-uri",
                               production.tracking_uri]) == 0
    assert victim.read_text() == "root:do-not-touch\n"
    assert not plot.is_symlink() and plot.read_bytes().startswith(b"\x89PNG")

    predictions = production.root / "predictions.csv"
    predictions.symlink_to(production.root / "elsewhere" / "created.csv")  # dangling
    write_csvs(production.new_dir, "batch", machine_files(1, drift=0.0, seed=72))
    assert registry_tool.main(["predict", "--input-dir", str(production.new_dir), "--output",
                               str(predictions), "--tracking-uri", production.tracking_uri]) == 2
    assert not (production.root / "elsewhere" / "created.csv").exists()

    partial = production.model_dir / "model.pkl.part"
    partial.symlink_to(victim)
    assert train_classification_model.main([str(production.used_dir), "--output",
                                            str(production.model_dir / "model.pkl")]) == 0
    assert victim.read_text() == "root:do-not-touch\n"
    assert not (production.model_dir / "model.pkl").is_symlink()
    capsys.readouterr()


def test_a_dry_run_move_writes_no_lock_file(production):
    done = run_script("registry_tool.py", ["set-alias", "staging", "1", "--reason", "look",
                                           "--dry-run", "--tracking-uri",
                                           production.tracking_uri])

    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(production.database.parent.glob(".*.alias.lock"))
