"""The README's "Bring your own data and domain" section, run as a new user runs it.

Its shell blocks are taken from the README itself and run in order, in a fresh copy of the
repository's tracked files (what a clone holds) with a small dataset that is not the demo's:
install, train, register, one cycle. A command the README shows that does not work fails
here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tests.conftest import PROJECT_DIR

SECTION = "## Bring your own data and domain"


def section_commands(readme: str) -> list[str]:
    """The bash blocks of the section, in order, as written (indentation removed)."""
    start = readme.index(SECTION)
    end = readme.index("\n## ", start + len(SECTION))
    blocks = re.findall(r"```bash\n(.*?)```", readme[start:end], flags=re.S)
    return ["\n".join(line.strip() for line in block.splitlines() if line.strip())
            for block in blocks]


def fresh_copy(target: Path) -> None:
    """The tracked files of the working tree, as a clone would hold them."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_DIR, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        source = PROJECT_DIR / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def parcels(count: int, seed: int, heavy_fragile: bool) -> list[pd.DataFrame]:
    """A shipping domain: is a parcel damaged in transit? Its own columns and labels."""
    generator = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        weight = generator.uniform(0.1, 30.0, 120)
        carrier = generator.choice(["north", "south", "east"], 120)
        fragile = generator.choice(["TRUE", "FALSE"], 120)
        damaged = (weight > 20) if heavy_fragile else (carrier == "east")
        frames.append(pd.DataFrame({"weight_kg": weight.round(2), "carrier": carrier,
                                    "fragile": fragile,
                                    "label": np.where(damaged, "damaged", "intact")}))
    return frames


def test_the_bring_your_own_data_section_works_line_by_line(tmp_path):
    project = tmp_path / "project"
    fresh_copy(project)
    commands = section_commands((project / "README.md").read_text())
    assert [command.split()[0:2] for command in commands] == [
        ["bash", "install.sh"],
        [".venv/bin/python", "train_classification_model.py"],
        [".venv/bin/python", "pipeline_orchestrator.py"]]
    # Step 1: the user's history; step 4: files delivered later, settled.
    for index, frame in enumerate(parcels(6, seed=1, heavy_fragile=False)):
        frame.to_csv(project / "used_gts" / f"parcels_{index:02d}.csv", index=False)
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("RETRAIN_", "MLFLOW_"))}

    outputs = []
    for command in commands[:2]:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=project,
                              env=environment, capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        outputs.append(done)
    delivered = []
    for index, frame in enumerate(parcels(16, seed=2, heavy_fragile=True)):
        path = project / "new_gts" / f"parcels_new_{index:02d}.csv"
        frame.to_csv(path, index=False)
        os.utime(path, (time.time() - 60, time.time() - 60))  # settled
        delivered.append(path.name)
    cycle = subprocess.run(["bash", "-euo", "pipefail", "-c", commands[2] + " --json"],
                           cwd=project, env=environment, capture_output=True, text=True,
                           timeout=900)

    assert cycle.returncode == 0, cycle.stderr[-3000:]
    summary = json.loads(cycle.stdout)
    # The new concept (heavy parcels break) is far from the first model's: it retrains, and
    # the challenger learnt it.
    assert summary["outcome"] == "promoted", summary["reason"]
    assert summary["production_version_after"] == "2"
    assert sorted(path.name for path in (project / "new_gts").iterdir()
                  if path.suffix == ".csv") == []
    archived = {path.name for path in (project / "used_gts").iterdir()}
    assert set(delivered) <= archived
    assert (project / "mlflow_server" / "mlflow.db").is_file()
