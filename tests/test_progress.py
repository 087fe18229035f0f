"""Progress lines while a long step runs: the heartbeat, and a real cycle whose fit is slow."""

from __future__ import annotations

import logging
import re
import time

from retraining import progress
from tests.conftest import cycle, machine_files, write_csvs

log = logging.getLogger("tests.progress")


def test_heartbeat_logs_while_the_block_runs_and_stops_when_it_ends(caplog):
    caplog.set_level(logging.INFO, logger="tests.progress")
    done_files = []

    with progress.heartbeat(log, lambda: f"reading: {len(done_files)} files", interval=0.1):
        for index in range(5):
            time.sleep(0.07)
            done_files.append(index)
    ended = len(caplog.records)
    time.sleep(0.3)

    lines = [record.getMessage() for record in caplog.records]
    assert 2 <= len(lines) <= 4, lines
    assert all(re.fullmatch(r"reading: [0-5] files, 0 s so far", line) for line in lines)
    assert len(caplog.records) == ended  # nothing after the block


def test_a_block_shorter_than_the_interval_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger="tests.progress")
    with progress.heartbeat(log, "quick", interval=5):
        pass
    assert caplog.records == []


# Trains as the default domain does, a little slower than the test's heartbeat, and reads
# each file a little slower too: the shape of a long night in a second.
SLOW_DOMAIN = """
import time
from train_classification_model import ERROR_METRIC_NAME, error_metric
from train_classification_model import train_model as _train_model

def prepare_file(frame, path):
    time.sleep(0.05)
    return frame

def train_model(features, labels, random_state=0, sample_weight=None):
    time.sleep(0.5)
    return _train_model(features, labels, random_state, sample_weight)
"""


def test_a_slow_retraining_reports_progress_on_each_fit_and_on_reading_history(
        production, capsys, caplog, monkeypatch):
    # The interval is the module's constant, made short for this process only.
    monkeypatch.setattr(progress, "HEARTBEAT_SECONDS", 0.2)
    domain = production.root / "slow_domain.py"
    domain.write_text(SLOW_DOMAIN)
    write_csvs(production.new_dir, "batch", machine_files(10, drift=1.0, seed=6))
    caplog.set_level(logging.INFO)

    # The summary is parsed from stdout as one JSON object: a progress line there fails it.
    code, summary = cycle(production, capsys, "--domain-file", str(domain))

    assert code == 0 and summary["outcome"] in {"promoted", "rejected"}, summary["reason"]
    lines = [record.getMessage() for record in caplog.records]
    beats = [line for line in lines if line.endswith(" s so far")]
    challenger = [line for line in beats if line.startswith(
        f"training the challenger on window {summary['training_window']!r}: ")]
    assert challenger and re.search(r": [0-9,]+ rows, [0-9]+ s so far$", challenger[0])
    assert any(line.startswith("training window 'all' to compare it: ") for line in beats)
    assert any(re.match(r"reading history: [0-9]+ of 8 files, ", line) for line in beats)
