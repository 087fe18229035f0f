"""Reading files, splitting a batch, and building settings: the parts every cycle relies on."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from retraining.config import add_options, build_settings
from retraining.datafiles import list_data_files, load_file, load_files, release_rows
from retraining.errors import DataError, UsageError

IDENTITY = lambda frame, path: frame  # noqa: E731


def test_listing_skips_hidden_in_progress_and_non_csv_names(tmp_path):
    for name in ("a.csv", "B.CSV", ".hidden.csv", "c.csv.part", "d.csv.tmp", "notes.txt"):
        (tmp_path / name).write_text("x,label\n1,a\n")
    (tmp_path / "folder.csv").mkdir()
    assert [path.name for path in list_data_files(tmp_path)] == ["B.CSV", "a.csv"]


def test_types_booleans_gaps_and_integer_labels_are_read_consistently(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("size,colour,flag,label\n1.5,red,TRUE,1\n,blue,False,2\n3,,true,\n"
                    "4,red,,1\n")
    loaded = load_file(path, "label", IDENTITY)

    assert loaded.rows == 3 and loaded.dropped_rows == 1  # the unlabelled row is counted
    assert str(loaded.labels.dtype) == "int64" and loaded.labels.tolist() == [1, 2, 1]
    assert loaded.features["flag"].tolist()[:2] == [1.0, 0.0]
    assert loaded.features["flag"].isna().tolist() == [False, False, True]
    assert loaded.features["size"].dtype.kind == "f"
    assert len(loaded.sha256) == 64


def test_string_labels_and_a_custom_label_column(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("x,target\n1,cat\n2,dog\n")
    loaded = load_file(path, "target", IDENTITY)
    assert loaded.labels.tolist() == ["cat", "dog"]
    assert list(loaded.features.columns) == ["x"]


@pytest.mark.parametrize("content, message", [
    ("x,other\n1,a\n", "no label column 'label'"),
    ("x,label\n1,\n2,\n", "no labelled rows: 2 data rows, none with a value in 'label'"),
    ("x,label\n", r"no labelled rows: only a header \(\['x', 'label'\]"),
    ("", "not a readable CSV"),
    (b"x,camera,label\n1,ok,0\n2,caf\xe9 one,1\n".decode("latin-1"),
     r"'camera' has text that is not UTF-8, first on line 3: b'2,caf\\xe9 one,1'"),
])
def test_unusable_file_raises_a_data_error_naming_it(tmp_path, content, message):
    path = tmp_path / "bad file.csv"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(DataError, match=message) as raised:
        load_file(path, "label", IDENTITY)
    assert "bad file.csv" in raised.value.one_line()


def test_prepare_hook_error_names_the_file_and_the_hook(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("x,label\n1,a\n")

    def prepare(frame, path):
        raise KeyError("needs column y")

    with pytest.raises(DataError, match="prepare_file rejected f.csv: KeyError"):
        load_file(path, "label", prepare)


def test_heldout_is_whole_files_reproducible_and_never_empty(tmp_path):
    from retraining.heldout import choose_heldout

    for index in range(10):
        (tmp_path / f"f{index}.csv").write_text(f"x,label\n{index},a\n")
    files = load_files(list_data_files(tmp_path), "label", IDENTITY)
    # The gate's needs switched off: the share alone sizes the held-out set.
    settings = SimpleNamespace(holdout_fraction=0.2, seed=1, min_heldout_files=1,
                               min_heldout_rows=0, require_significance=False)

    first = choose_heldout(files, settings).names
    assert first == choose_heldout(files, settings).names
    assert len(first) == 2 and first <= {f.name for f in files}
    assert len(choose_heldout(files, settings, fraction=0.01).names) == 1
    assert len({frozenset(choose_heldout(files, SimpleNamespace(**vars(settings) | {"seed": s})
                                         ).names) for s in range(10)}) > 1


def test_released_files_keep_their_facts_and_free_their_rows(tmp_path):
    import pyarrow as pa

    for index in range(3):
        rows = "".join(f"{i}.5,{i % 7},t{i % 3},{'ab'[i % 2]}\n" for i in range(20_000))
        (tmp_path / f"f{index}.csv").write_text("x,y,z,label\n" + rows)
    pool = pa.default_memory_pool()
    before = pool.bytes_allocated()
    files = load_files(list_data_files(tmp_path), "label", IDENTITY)
    entries = [f.manifest_entry("history") for f in files]
    assert pool.bytes_allocated() > before + 3 * 20_000 * 8  # the rows live in pyarrow's pool

    release_rows(files)

    assert all(f.features is None and f.labels is None for f in files)
    assert [f.manifest_entry("history") for f in files] == entries  # rows counted, hash kept
    assert pool.bytes_allocated() <= before  # nothing still holds the rows


RESIDENT_AFTER_RELEASE = """
import re, sys
from pathlib import Path
import pyarrow as pa
from retraining.datafiles import list_data_files, load_files, release_rows

def resident_mb():
    return int(re.search(r"VmRSS:\\s+(\\d+)", Path("/proc/self/status").read_text())[1]) / 1024

files = load_files(list_data_files(Path(sys.argv[1])), "label", lambda frame, path: frame)
held_mb = pa.default_memory_pool().bytes_allocated() / 2**20
before = resident_mb()
release_rows(files)
print(held_mb, before - resident_mb())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_released_rows_leave_the_process(tmp_path):
    # pyarrow's allocator keeps freed blocks for later reads: dropping the frames alone left
    # every byte resident through the fit. A fresh process, so other tests' memory is apart.
    import subprocess
    import sys

    import numpy as np
    import pandas as pd

    generator = np.random.default_rng(0)
    for index in range(4):
        pd.DataFrame({"a": generator.random(100_000), "b": generator.random(100_000),
                      "label": generator.integers(0, 2, 100_000)}).to_csv(
            tmp_path / f"f{index}.csv", index=False)
    done = subprocess.run([sys.executable, "-c", RESIDENT_AFTER_RELEASE, str(tmp_path)],
                          capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    held_mb, returned_mb = map(float, done.stdout.split())
    assert held_mb > 5
    assert returned_mb >= held_mb / 2, (held_mb, returned_mb)


def settings_from(argv, environ=None, names=("new_dir", "used_dir", "tracking_uri",
                                               "min_new_files", "holdout_fraction", "dry_run",
                                               "seed", "threads")):
    parser = argparse.ArgumentParser()
    add_options(parser, names)
    return build_settings(Path("/srv/project"), parser.parse_args(argv), environ or {})


def test_default_paths_and_store_resolve_from_the_project_not_the_working_directory(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = settings_from([])
    assert settings.new_dir == Path("/srv/project/new_gts")
    assert settings.used_dir == Path("/srv/project/used_gts")
    assert settings.tracking_uri == "sqlite:////srv/project/mlflow_server/mlflow.db"
    assert settings.artifact_location == "file:///srv/project/mlflow_server/artifacts"


def test_flag_beats_environment_beats_default():
    assert settings_from([]).min_new_files == 15
    assert settings_from([], {"RETRAIN_MIN_NEW_FILES": "3"}).min_new_files == 3
    flag_and_env = settings_from(["--min-new-files", "4"], {"RETRAIN_MIN_NEW_FILES": "3"})
    assert flag_and_env.min_new_files == 4
    assert settings_from([], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}).tracking_uri == \
        "http://127.0.0.1:5000"
    assert settings_from([], {"RETRAIN_DRY_RUN": "true"}).dry_run is True


@pytest.mark.parametrize("argv, environ, threads", [
    ([], {}, None),  # auto: the cores other processes leave free
    ([], {"OMP_NUM_THREADS": "4"}, 0),  # the person's OpenMP setting is left to OpenMP
    (["--threads", "auto"], {"OMP_NUM_THREADS": "4"}, None),  # ... unless they ask for auto
    ([], {"RETRAIN_THREADS": "3", "OMP_NUM_THREADS": "4"}, 3),
    (["--threads", "2"], {"RETRAIN_THREADS": "3"}, 2),
])
def test_threads_are_auto_unless_a_person_chose(argv, environ, threads):
    assert settings_from(argv, environ, names=("threads",)).threads == threads


def test_no_form_of_a_flag_overrides_its_environment_variable():
    assert settings_from(["--no-dry-run"], {"RETRAIN_DRY_RUN": "1"}).dry_run is False


@pytest.mark.parametrize("argv", [["--holdout-fraction", "0"], ["--min-new-files", "-1"],
                                  ["--seed", "-1"], ["--threads", "0"], ["--threads", "many"],
                                  ["--new-dir", "/x", "--used-dir", "/x"]])
def test_invalid_settings_are_usage_errors(argv):
    with pytest.raises(UsageError):
        settings_from(argv)


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "ten minutes"])
def test_a_spark_executor_wait_that_is_not_a_number_of_seconds_is_a_usage_error(value):
    with pytest.raises(UsageError) as refused:
        settings_from(["--spark-executor-wait", value], names=("spark_executor_wait",))
    assert refused.value.one_line().startswith(f"--spark-executor-wait={value!r} ")
    assert "0: wait for ever" in refused.value.one_line()


def test_settings_are_immutable():
    settings = settings_from([])
    with pytest.raises(AttributeError):
        settings.seed = 3


def option_helps(help_text: str) -> dict[str, str]:
    """Each option of an argparse --help text -> its help, whitespace collapsed."""
    entries: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line
        else:
            current = None
    return {flag: " ".join(text.split()) for flag, text in entries.items() if flag != "-h"}


@pytest.mark.parametrize("argv", [
    ["pipeline_orchestrator"], ["register_first_model"], ["train_classification_model"],
    *[["registry_tool", command] for command in ("status", "versions", "history", "rollback",
                                                 "set-alias", "predict")]])
def test_every_option_of_every_entry_point_shows_its_default_in_help(argv, capsys):
    import importlib

    entry_point = importlib.import_module(argv[0])
    assert entry_point.main([*argv[1:], "--help"]) == 0
    helps = option_helps(capsys.readouterr().out)

    assert len(helps) >= 2
    missing = {flag: text for flag, text in helps.items()
               if "(default: " not in text and "(required)" not in text}
    assert missing == {}
    # Paths are shown relative to the project, where they resolve, not to the caller's folder.
    for flag in ("--new-dir", "--used-dir", "--model-dir", "--domain-file", "--tracking-uri"):
        if flag in helps:
            assert "in the project folder" in helps[flag] and "<project>" not in helps[flag]
