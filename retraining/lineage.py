"""Where a registered version came from: its data, its code, its settings, its parent.

Written as tags on every version, and as a description a person can read in the MLflow UI.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any, Mapping

from retraining.config import Settings

# The settings that shape a model or the decision about it; paths and output switches do not.
_LINEAGE_SETTINGS = ("label_column", "seed", "holdout_fraction", "error_threshold",
                     "min_improvement", "min_heldout_files", "min_heldout_rows",
                     "max_file_regression", "max_recall_drop", "confidence_level",
                     "bootstrap_resamples", "require_significance", "non_inferiority_margin",
                     "training_windows",
                     "recent_files",
                     "recency_half_life", "validation_fraction", "window_sample_rows", "engine")


@functools.cache
def git_commit(folder: Path) -> str:
    """The commit checked out in `folder`, "-dirty" appended if files differ from it.

    "unknown" when the folder is not in a git repository or git is not installed: lineage
    is worth recording, not worth failing a cycle for. Asked once per process.
    """
    try:
        # --exclude='*' leaves no tag to describe by, so the answer is the full commit hash.
        done = subprocess.run(["git", "-C", str(folder), "describe", "--always", "--dirty",
                               "--abbrev=40", "--exclude=*"],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def settings_json(settings: Settings, domain_file: Path | None = None) -> str:
    """The settings that shaped a version, as compact JSON (infinity written as "inf")."""
    values: dict[str, Any] = {name: getattr(settings, name) for name in _LINEAGE_SETTINGS}
    values = {name: ("inf" if value == float("inf") else value)
              for name, value in values.items()}
    values["domain_file"] = (domain_file or settings.domain_file).name
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


def lineage_tags(settings: Settings, parent_production_version: str | None,
                 **facts: Any) -> dict[str, str]:
    """Tags every registered version carries; `facts` adds the data's (manifest hash...)."""
    return {"git_commit": git_commit(settings.project_dir),
            "settings": settings_json(settings),
            "parent_production_version": parent_production_version or "none",
            **{name: str(value) for name, value in facts.items()}}


def describe(tags: Mapping[str, str]) -> str:
    """The lineage as sentences, from a version's tags."""
    parts = []
    if "data_manifest_sha256" in tags:
        parts.append(f"Trained on {tags.get('training_files', '?')} files "
                     f"({tags.get('training_rows', '?')} rows) listed in the retraining run's "
                     f"data_manifest.json, sha256 {tags['data_manifest_sha256']}.")
    if "training_window" in tags:
        parts.append(f"Training window {tags['training_window']!r}, chosen on validation "
                     "files (the retraining run's tag training_window_reason says why).")
    parts.append(f"Code at git commit {tags.get('git_commit', 'unknown')}; parent production "
                 f"version {tags.get('parent_production_version', 'none')}; settings in the "
                 "tag 'settings'.")
    return " ".join(parts)
