"""The text example domain, run as a user runs it: reviews whose vocabulary shifts are seen
as drift in their length and words, and the retrained model is promoted."""

from __future__ import annotations

import json

import pandas as pd

from examples.text_reviews.generate import days
from retraining.drift import is_free_text
from tests.conftest import PROJECT_DIR, run_script, train_and_register_first, write_csvs

EXAMPLE = PROJECT_DIR / "examples" / "text_reviews" / "train_classification_model.py"


def test_reviews_with_new_words_drift_in_vocabulary_and_the_retrained_model_wins(workspace):
    domain = ["--domain-file", str(EXAMPLE), "--label-column", "sentiment",
              "--quarantine-dir", str(workspace.quarantine_dir)]
    write_csvs(workspace.used_dir, "reviews_old", days(12, changed=False, seed=1))
    train_and_register_first(workspace, domain)
    write_csvs(workspace.new_dir, "reviews_new", days(15, changed=True, seed=2))

    done = run_script("pipeline_orchestrator.py", [*workspace.flags, *domain, "--json"])

    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["outcome"] == "promoted", summary["reason"]
    # Words history never saw: the old model guesses on most new reviews.
    assert summary["challenger_error"] < 0.10 < 0.25 < summary["production_error"]
    client = workspace.client()
    path = client.download_artifacts(summary["monitoring_run_id"], "drift.csv",
                                     str(workspace.root))
    drift = pd.read_csv(path).set_index("feature")
    # The review is tested as text, never as 3,000 categories of one review each.
    assert "review" not in drift.index
    assert drift.loc["review.vocabulary", "kind"] == "text"
    assert bool(drift.loc["review.vocabulary", "drifted"])
    assert drift.loc["review.length", "test"] == "ks"
    assert drift.loc["channel", "kind"] == "categorical"
    assert not bool(drift.loc["channel", "drifted"])


def test_free_text_is_told_from_categories():
    reviews = days(1, changed=False, seed=3)[0]

    assert is_free_text(reviews["review"])
    assert not is_free_text(reviews["channel"])
    assert not is_free_text(pd.Series(["drill", "press", "mill"] * 50))
    # Identifiers are distinct but one word each: categories of a kind, not documents.
    assert not is_free_text(pd.Series([f"SN-{n:05d}" for n in range(200)]))
    assert not is_free_text(pd.Series([1.5, 2.5, None]))
