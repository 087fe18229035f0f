"""The gate's arithmetic and the archive's refusals, on small hand-made cases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from retraining.archive import archive_files
from retraining.datafiles import LoadedFile, check_columns, load_files
from retraining.domain import Domain
from retraining.errors import DataError, NeedsAttention
from retraining.evaluation import error_on, judge_challenger, needs_retraining


def domain(lower_is_better=True, metric=lambda labels, predictions: 0.0) -> Domain:
    return Domain(source=Path("d.py"), prepare_file=None, train_model=None, error_metric=metric,
                  error_metric_name="error", error_per_file=False,
                  lower_error_is_better=lower_is_better)


def test_challenger_exactly_at_the_margin_is_promoted_and_a_tie_is_not():
    assert judge_challenger(domain(), 0.30, 0.25, 0.05).promote
    assert judge_challenger(domain(), 0.7, 0.6, 0.1).promote
    assert not judge_challenger(domain(), 0.30, 0.26, 0.05).promote
    assert not judge_challenger(domain(), 0.30, 0.30, 0.0).promote


def test_scores_where_higher_is_better_flip_both_decisions():
    scores = domain(lower_is_better=False)
    assert needs_retraining(scores, 0.80, threshold=0.90)
    assert not needs_retraining(scores, 0.90, threshold=0.90)
    assert judge_challenger(scores, 0.80, 0.85, 0.0).promote
    assert not judge_challenger(scores, 0.85, 0.80, 0.0).promote


def loaded(tmp_path, name="a.csv", labels=("x",)) -> LoadedFile:
    path = tmp_path / name
    path.write_text("f,label\n" + "".join(f"1,{label}\n" for label in labels))
    return load_files([path], "label", lambda frame, path: frame)[0]


def test_a_metric_returning_nan_is_refused(tmp_path):
    nan_domain = domain(metric=lambda labels, predictions: float("nan"))
    one = loaded(tmp_path)
    with pytest.raises(NeedsAttention, match="returned nan"):
        error_on(nan_domain, [one], {one.name: ["x"]})


def test_mixed_label_kinds_name_the_odd_file(tmp_path):
    files = [loaded(tmp_path, "a.csv", ("1", "2")), loaded(tmp_path, "b.csv", ("3",)),
             loaded(tmp_path, "c.csv", ("cat",))]
    with pytest.raises(DataError, match="c.csv has text labels"):
        check_columns(files)


def test_dangling_link_in_history_is_a_taken_name(tmp_path):
    new, used = tmp_path / "new", tmp_path / "used"
    new.mkdir(), used.mkdir()
    os.symlink(tmp_path / "nowhere", used / "a.csv")
    one = loaded(new)

    assert archive_files([one], used) == [f"a.{one.sha256[:12]}.csv"]
    assert os.path.islink(used / "a.csv") and not (new / "a.csv").exists()


def test_file_replaced_after_it_was_read_stays_for_the_next_cycle(tmp_path):
    new, used = tmp_path / "new", tmp_path / "used"
    new.mkdir(), used.mkdir()
    one = loaded(new)
    replacement = new / "a.csv.part"
    replacement.write_text("f,label\n2,y\n")
    os.replace(replacement, new / "a.csv")  # a writer following the safe protocol

    assert archive_files([one], used) == []
    assert (new / "a.csv").read_text() == "f,label\n2,y\n" and list(used.iterdir()) == []


def test_domain_file_named_like_a_library_module_does_not_replace_it(tmp_path):
    import json

    from retraining.domain import load_domain

    path = tmp_path / "json.py"
    path.write_text("def train_model(features, labels, **options):\n"
                    "    return options\n"
                    "def error_metric(labels, predictions):\n    return 0.0\n")
    loaded = load_domain(path)
    assert json.dumps({"a": 1}) == '{"a": 1}'
    assert loaded.train(None, None, random_state=7) == {"random_state": 7}
