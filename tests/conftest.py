"""Shared fixtures: a throwaway project with a real SQLite MLflow store and generated data."""

from __future__ import annotations

import dataclasses
import json
import os

# Test data are tiny, where OpenMP threads only add overhead; and libgomp's spinning threads
# slow a fit many times over when another process competes for the two cores. Set before
# scikit-learn loads; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

import pipeline_orchestrator
import register_first_model
from demo.generate_stream import readings
from train_classification_model import train_model

PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Workspace:
    """Folders and store of one test; `flags` point every entry point at them."""

    root: Path
    new_dir: Path
    used_dir: Path
    model_dir: Path
    tracking_uri: str

    @property
    def flags(self) -> list[str]:
        # Test files are complete when written: no need to wait for them to settle.
        return ["--new-dir", str(self.new_dir), "--used-dir", str(self.used_dir),
                "--quarantine-dir", str(self.quarantine_dir), "--settle-seconds", "0",
                "--tracking-uri", self.tracking_uri]

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def database(self) -> Path:
        return Path(self.tracking_uri[len("sqlite:///"):])

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    def alias_version(self, alias: str = "production") -> str:
        return str(self.client().get_model_version_by_alias("classifier", alias).version)

    def load_version(self, version: str):
        """The scikit-learn model of one registered version, loaded as MLflow stores it."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow.sklearn.load_model(f"models:/classifier/{version}")


def new_workspace(root: Path, store_root: Path | None = None) -> Workspace:
    """The data folders under `root`, made; the model folder and the store under
    `store_root` (`root` unless given: a test may put the data on a filesystem of its own)."""
    store_root = store_root or root
    space = Workspace(root=root, new_dir=root / "new_gts", used_dir=root / "used_gts",
                      model_dir=store_root / "model",
                      tracking_uri="sqlite:///" + str(store_root / "store" / "mlflow.db"))
    for folder in (space.new_dir, space.used_dir, space.model_dir, space.database.parent):
        folder.mkdir()
    return space


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return new_workspace(tmp_path)


def write_csvs(folder: Path, prefix: str, frames) -> list[Path]:
    paths = []
    for index, frame in enumerate(frames):
        path = folder / f"{prefix}_{index:03d}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def machine_files(count: int, drift: float, seed: int, rows: int = 300):
    generator = np.random.default_rng(seed)
    return [readings(rows, drift, generator) for _ in range(count)]


def changed_concept_files(count: int, seed: int, rows: int = 300):
    """Files labelled by a new policy (worn after 3,000 hours): production is now wrong."""
    generator = np.random.default_rng(seed)
    return [readings(rows, 1.0, generator, worn_after_hours=3_000) for _ in range(count)]


def new_concept_files(count: int, seed: int, rows: int = 300):
    """The same inputs as history, labelled by a new policy (worn after 3,000 hours)."""
    generator = np.random.default_rng(seed)
    return [readings(rows, 0.0, generator, worn_after_hours=3_000) for _ in range(count)]


def promote_new_concept(workspace: Workspace, capsys) -> None:
    """Version 2, promoted for a new concept and confirmed on probation by a second batch."""
    # 15 files: the 9 not held out outweigh the 8 of history, so version 2 knows the concept.
    write_csvs(workspace.new_dir, "changed", new_concept_files(15, seed=51))
    code, summary = cycle(workspace, capsys)
    assert code == 0 and summary["outcome"] == "promoted", summary["reason"]
    write_csvs(workspace.new_dir, "changed_again", new_concept_files(10, seed=52))
    code, summary = cycle(workspace, capsys)
    assert code == 0 and summary["probation"]["verdict"] == "passed", summary["probation"]
    assert workspace.alias_version() == "2", (summary["reason"], summary["monitoring_error"])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Name -> bytes of every data file in a folder, to prove nothing was lost or changed."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())
            if path.is_file() and not path.name.startswith(".")}


def run_json(entry_point, argv, capsys) -> tuple[int, dict]:
    """Run an entry point in-process with --json; return its exit code and summary."""
    code = entry_point.main([*argv, "--json"])
    out = capsys.readouterr().out.strip()
    return code, (json.loads(out) if code == 0 else {})


def run_script(script: str, argv, cwd=None, env_extra=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(PROJECT_DIR / script), *argv],
                          cwd=cwd or PROJECT_DIR,
                          env=env, capture_output=True, text=True, timeout=600)


def train_on_folder(folder: Path):
    """Train the default model the way the product does: files read by its own reader."""
    from retraining.datafiles import concat_files, list_data_files, load_files

    files = load_files(list_data_files(folder), "label", lambda frame, path: frame)
    features, labels = concat_files(files)
    return train_model(features, labels, random_state=0)


def train_and_register_first(workspace: Workspace, domain: Sequence[str], cwd=None) -> None:
    """The first model trained on used_gts/ and registered, by the product's own scripts
    with a domain's flags, as a user of an example domain does."""
    model_file = workspace.model_dir / "initial_model.pkl"
    trained = run_script("train_classification_model.py",
                         [str(workspace.used_dir), "--output", str(model_file), *domain],
                         cwd=cwd)
    assert trained.returncode == 0, trained.stderr[-2000:]
    registered = run_script("register_first_model.py",
                            ["--used-dir", str(workspace.used_dir), "--model-file",
                             str(model_file), "--tracking-uri", workspace.tracking_uri,
                             *domain, "--json"], cwd=cwd)
    assert registered.returncode == 0, registered.stderr[-2000:]


def register_pickle(workspace: Workspace, model, capsys, extra=()) -> dict:
    path = workspace.model_dir / "initial.pkl"
    with open(path, "wb") as handle:
        pickle.dump(model, handle)
    code, summary = run_json(register_first_model,
                             ["--used-dir", str(workspace.used_dir), "--model-file", str(path),
                              "--tracking-uri", workspace.tracking_uri, *extra], capsys)
    assert code == 0
    return summary


@pytest.fixture
def production(workspace, capsys) -> Workspace:
    """History in used_gts/ and a model trained on it registered as production version 1."""
    write_csvs(workspace.used_dir, "history", machine_files(8, drift=0.0, seed=1))
    register_pickle(workspace, train_on_folder(workspace.used_dir), capsys)
    return workspace


def cycle(workspace: Workspace, capsys, *extra) -> tuple[int, dict]:
    return run_json(pipeline_orchestrator,
                    [*workspace.flags, "--min-new-files", "5", *extra], capsys)


def wait_until_answering(process: subprocess.Popen, url: str, seconds: float,
                         refusal_counts: bool = False) -> None:
    """Poll `url` until it answers 200 (or, with `refusal_counts`, any HTTP status: a 403 is
    an answer too); fail with the process's stderr if it dies or hangs."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError as error:
            if refusal_counts and isinstance(error, urllib.error.HTTPError):
                return
            if process.poll() is not None:
                pytest.fail(f"the process behind {url} exited: "
                            + process.stderr.read().decode()[-2000:])
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"{url} did not answer within {seconds:.0f} s")
            time.sleep(0.5)


# Trains as the default domain does, but the first fit (the cycle's first training) waits
# until the test says go: the moment chosen for a fault (a person acting, a signal) while
# the cycle trains. Nothing else of the cycle is changed.
WAITING_DOMAIN = """
import os, time
from pathlib import Path
from train_classification_model import ERROR_METRIC_NAME, error_metric
from train_classification_model import train_model as _train_model

def train_model(features, labels, random_state=0, sample_weight=None):
    started = Path(os.environ["TRAINING_STARTED"])
    if not started.exists():
        started.write_text("training")
        deadline = time.monotonic() + 300
        while not Path(os.environ["GO"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return _train_model(features, labels, random_state, sample_weight)
"""



def script_environment(extra: dict[str, str]) -> dict[str, str]:
    """The environment for an entry point run as a process: no settings of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env | {"PYTHONPATH": str(PROJECT_DIR)} | extra


def cycle_killed_at(workspace: Workspace, target: str, when: str, nth: int, *extra: str):
    """Run a cycle through tests/kill_at.py: SIGKILLed at `target`'s `nth` call (`when`)."""
    return subprocess.run([sys.executable, str(PROJECT_DIR / "tests" / "kill_at.py"), target,
                           when, str(nth), "--", *workspace.flags, "--min-new-files", "5",
                           *extra],
                          env=script_environment({}), capture_output=True, text=True,
                          timeout=600)


def start_cycle_waiting_in_training(workspace: Workspace, *extra):
    """Start a cycle (--json) that stops in its first fit; return it and the file that lets
    it go on. Returns once it is waiting there."""
    domain = workspace.root / "waiting_domain.py"
    domain.write_text(WAITING_DOMAIN)
    started, go = workspace.root / "training_started", workspace.root / "go"
    started.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "pipeline_orchestrator.py"), *workspace.flags,
         "--min-new-files", "5", "--domain-file", str(domain), "--json", *extra],
        env=script_environment({"TRAINING_STARTED": str(started), "GO": str(go)}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not started.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the cycle never started training"
        time.sleep(0.05)
    return process, go
