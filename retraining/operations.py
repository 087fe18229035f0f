"""Operating the registry by hand: status, versions, history, moving the alias, predictions.

The logic behind `registry_tool.py`. It reads what the cycle records (runs ModelMonitoring,
ModelRetraining and FirstModelRegistration; tags and descriptions on versions) and records
its own changes the same way: a run (AliasChange, RegistryHistory, BatchPredictions) and,
for alias moves, tags and a description on the versions, saying who and why.

MLflow keeps no history of an alias, so the history is rebuilt from those runs: the first
registration, each promoted retraining run, each AliasChange run. Replaying them gives the
line of production versions, which is what a rollback walks back along.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import re
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

from retraining.config import Settings
from retraining.errors import NeedsAttention, UsageError

log = logging.getLogger(__name__)

RECENT_CYCLES = 10
LOW_CONFIDENCE = 0.6


def _registry(settings: Settings, read_only: bool = False):
    """The store the settings name; a SQLite file that does not exist is refused (Registry)."""
    from retraining.registry import Registry

    return Registry(dataclasses.replace(settings, dry_run=True) if read_only else settings)


def _when(milliseconds: int | None) -> str | None:
    if not milliseconds:
        return None
    moment = datetime.datetime.fromtimestamp(milliseconds / 1000, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="seconds")


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")


def _runs(registry, run_name: str, extra_filter: str = "", newest_first: bool = False,
          max_results: int = 5000) -> list:
    if registry.experiment_id is None:  # nothing was ever logged
        return []
    query = f"attributes.run_name = '{run_name}'" + (f" and {extra_filter}" if extra_filter
                                                     else "")
    order = "DESC" if newest_first else "ASC"
    return list(registry.client.search_runs([registry.experiment_id], query,
                                            max_results=max_results,
                                            order_by=[f"attributes.start_time {order}"]))


def _metric(run, name: str) -> float | None:
    return run.data.metrics.get(name)


# --- the alias history -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AliasMove:
    version: str
    previous: str | None
    action: str  # registered_first, promoted, rollback, set-alias
    when: int | None  # milliseconds since the epoch
    reason: str
    by: str | None
    run_id: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"when": _when(self.when)}


def alias_moves(registry, alias: str) -> list[AliasMove]:
    """Every recorded move of `alias`, oldest first."""
    from retraining.registry import ALIAS_CHANGE_RUN, REGISTRATION_RUN, RETRAINING_RUN

    name = registry.model_name
    version_of_run = {
        version.run_id: str(version.version)
        for version in registry.client.search_model_versions(f"name='{_quoted(name)}'")}
    moves = []
    for run in _runs(registry, REGISTRATION_RUN):
        version = version_of_run.get(run.info.run_id)
        # Runs from before the alias tag existed set the default alias.
        if version and run.data.tags.get("alias", alias) == alias:
            moves.append(AliasMove(version, None, "registered_first", run.info.start_time,
                                   "first model registered", run.info.user_id, run.info.run_id))
    for run in _runs(registry, RETRAINING_RUN, "tags.decision = 'promoted'"):
        # A resumed challenger was logged by an earlier run; the run that promoted it
        # names it.
        version = (run.data.tags.get("promoted_version") or run.data.tags.get("challenger_version")
                   or version_of_run.get(run.info.run_id))
        if version:
            moves.append(AliasMove(version, run.data.tags.get("production_version_before"),
                                   "promoted", run.info.end_time or run.info.start_time,
                                   run.data.tags.get("reason", ""), run.info.user_id,
                                   run.info.run_id))
    unfinished = []
    for run in _runs(registry, ALIAS_CHANGE_RUN,
                     f"tags.alias = '{_quoted(alias)}' and tags.model_name = '{_quoted(name)}'"):
        tags = run.data.tags
        move = AliasMove(tags["to_version"], tags.get("from_version") or None, tags["action"],
                         run.info.start_time, tags.get("reason", ""), tags.get("changed_by"),
                         run.info.run_id)
        (moves if run.info.status == "FINISHED" else unfinished).append(move)
    if not unfinished:
        return sorted(moves, key=lambda move: move.when or 0)
    # A move whose process was stopped inside its run may or may not have moved the alias:
    # it did when what came next starts from its version. Walked newest first, from the
    # alias as it is now, so that two such moves in a row are both judged rightly.
    finished_ids = {move.run_id for move in moves}
    timeline = sorted(moves + unfinished, key=lambda move: move.when or 0, reverse=True)
    expected, kept = _alias_version(registry, alias), []
    for move in timeline:
        if move.run_id in finished_ids:
            kept.append(move)
        elif move.version == expected:
            kept.append(dataclasses.replace(
                move, reason=f"{move.reason} (its run did not finish; the alias had moved)"))
        else:
            continue
        expected = move.previous
    return kept[::-1]


def production_line(moves: Sequence[AliasMove], current: str | None) -> list[str]:
    """The versions production went through, rollbacks undone: the last one is `current`.

    A rollback undoes the move before it, so rolling back twice goes two steps back
    rather than toggling between two versions. A move made outside this tool and the
    cycle (another client) is taken as the last one.
    """
    line: list[str] = []
    for move in moves:
        if move.action in ("rollback", "auto_rollback") and line:
            line.pop()
        if not line or line[-1] != move.version:
            line.append(move.version)
    if current is not None and (not line or line[-1] != current):
        line.append(current)
    return line


# --- status and versions -----------------------------------------------------------------

def status(settings: Settings, last: int = RECENT_CYCLES) -> dict[str, Any]:
    """Production, when and why it got there, the last cycles, and the files waiting."""
    from retraining.datafiles import list_data_files

    registry = _registry(settings, read_only=True)
    current = registry.production_version()
    production: dict[str, Any] = {"version": current}
    if current is not None:
        production |= production_summary(registry, settings.alias, current)
    waiting = list_data_files(settings.new_dir, settings.settle_seconds)
    return {"model_name": settings.model_name, "alias": settings.alias,
            "production": production, "cycles": recent_cycles(registry, last),
            "new_files_waiting": len(waiting), "new_dir": str(settings.new_dir),
            "waiting_files": [path.name for path in waiting]}


def production_summary(registry, alias: str, current: str) -> dict[str, Any]:
    """When and why `current` got the alias, by whom, and where a rollback would go."""
    moves = alias_moves(registry, alias)
    latest = next((move for move in reversed(moves) if move.version == current), None)
    line = production_line(moves, current)
    version = registry.client.get_model_version(registry.model_name, current)
    return {
        "decision": version.tags.get("decision"),
        "description": version.description or None,
        "since": _when(latest.when) if latest else None,
        "moved_by": latest.action if latest else None,
        "changed_by": latest.by if latest else None,
        "why": latest.reason if latest else None,
        "previous_production_version": version.tags.get("previous_production_version"),
        "rollback_target": line[-2] if len(line) >= 2 else None,
    }


def recent_cycles(registry, last: int) -> list[dict[str, Any]]:
    """The last cycles that reached monitoring, newest first, with their outcome."""
    from retraining.registry import MONITORING_RUN, RETRAINING_RUN

    monitoring = _runs(registry, MONITORING_RUN, newest_first=True, max_results=last)
    retraining = {run.data.tags.get("monitoring_run_id"): run
                  for run in _runs(registry, RETRAINING_RUN, newest_first=True,
                                   max_results=max(100, 2 * last))}
    cycles = []
    for run in monitoring:
        tags, retrained = run.data.tags, retraining.get(run.info.run_id)
        if tags.get("decision") != "retrain":
            outcome, reason = tags.get("decision", run.info.status.lower()), tags.get("reason")
        elif retrained is not None and "decision" in retrained.data.tags:
            outcome, reason = retrained.data.tags["decision"], retrained.data.tags.get("reason")
        else:
            outcome = "retrain: " + (retrained.info.status.lower() if retrained
                                     else "no retraining run")
            reason = tags.get("reason")
        cycles.append({"started": _when(run.info.start_time), "outcome": outcome,
                       "production_version": tags.get("production_version"),
                       "monitoring_error": _metric(run, "monitoring_error"),
                       "threshold": _float(run.data.params.get("threshold")),
                       "drift_share": _metric(run, "drift_share"), "reason": reason,
                       "monitoring_run_id": run.info.run_id,
                       "retraining_run_id": retrained.info.run_id if retrained else None})
    return cycles


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def versions(settings: Settings) -> dict[str, Any]:
    """Every version with its aliases, errors and decision, newest first."""
    registry = _registry(settings, read_only=True)
    name = registry.model_name
    try:
        aliases = registry.client.get_registered_model(name).aliases
    except Exception as error:
        if getattr(error, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            raise NeedsAttention(f"no registered model {name!r} in {settings.tracking_uri}",
                                 fix="run register_first_model.py, or check --model-name "
                                     "and --tracking-uri") from error
        raise
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    found = registry.client.search_model_versions(f"name='{_quoted(name)}'")
    for version in sorted(found, key=lambda item: -int(item.version)):
        tags = version.tags
        rows.append({"version": str(version.version),
                     "aliases": sorted(by_version.get(str(version.version), [])),
                     "decision": tags.get("decision"),
                     "production_error": _float(tags.get("production_error")),
                     "challenger_error": _float(tags.get("challenger_error")),
                     "previous_production_version": tags.get("previous_production_version"),
                     "created": _when(version.creation_timestamp),
                     "description": version.description or None,
                     "run_id": version.run_id})
    return {"model_name": name, "versions": rows}


# --- history -----------------------------------------------------------------------------

def history(settings: Settings, output: Path) -> dict[str, Any]:
    """Monitoring error over time, and a plot of it logged to a RegistryHistory run."""
    from retraining.registry import HISTORY_RUN, MONITORING_RUN

    registry = _registry(settings)
    cycles = [{"started": _when(run.info.start_time), "time": run.info.start_time,
               "production_version": run.data.tags.get("production_version"),
               "monitoring_error": _metric(run, "monitoring_error"),
               "threshold": _float(run.data.params.get("threshold")),
               "drift_share": _metric(run, "drift_share"),
               "decision": run.data.tags.get("decision")}
              for run in _runs(registry, MONITORING_RUN)]
    moves = alias_moves(registry, settings.alias)
    # absolute, not resolve: a link planted at the output's name is replaced, not followed.
    output = output.expanduser().absolute()
    if not output.parent.is_dir():
        raise UsageError(f"folder {output.parent} does not exist",
                         fix="create it or pass --output a path in an existing folder")
    _plot_history(output, cycles, moves, settings)
    summary = {"model_name": settings.model_name, "alias": settings.alias,
               "cycles": [{key: value for key, value in cycle.items() if key != "time"}
                          for cycle in cycles],
               "alias_moves": [move.as_dict() for move in moves], "plot": str(output),
               "history_run_id": None}
    with registry.run(HISTORY_RUN, {"model_name": settings.model_name}) as run:
        if run is not None:
            registry.log_summary(metrics={"cycles": len(cycles), "alias_moves": len(moves)})
            registry.log_artifact(output)
            registry.log_dict(summary, "history.json")
            summary["history_run_id"] = run.info.run_id
    return summary


# Around the measured span, this share of it; at least a minute, so the markers of one cycle
# (a span of seconds) stay off the edges without stretching it to an hour.
_PLOT_PADDING_SHARE = 0.06
_PLOT_MIN_PADDING_MS = 60 * 1000
_MOVE_COLOURS = {"rollback": "tab:orange", "set-alias": "tab:purple"}
_MOVE_LABEL_ROWS = 3


def _plot_history(output: Path, cycles: list[dict], moves: list[AliasMove],
                  settings: Settings) -> dict[str, Any]:
    """Error per cycle, the threshold, and each move of the alias, in a band above.

    Move labels are written across the band, each in the first row where it overlaps no
    other (moves hours apart on a plot of months fall at one spot), and the legend beside
    the plot, so neither ever covers a point. Returns the layout drawn (the time span in
    seconds, each label's row and horizontal extent in pixels), for checking it.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: cron and SSH sessions have none
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    def moment(milliseconds):
        return datetime.datetime.fromtimestamp(milliseconds / 1000, tz=datetime.timezone.utc)

    # Constrained layout keeps the legend outside the plot without cutting it off.
    figure, (band, axes) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, layout="constrained",
                                        gridspec_kw={"height_ratios": [1, 4]})
    measured = [cycle for cycle in cycles if cycle["monitoring_error"] is not None]
    stamps = [cycle["time"] for cycle in measured] + [move.when for move in moves if move.when]
    if stamps:
        padding = max((max(stamps) - min(stamps)) * _PLOT_PADDING_SHARE, _PLOT_MIN_PADDING_MS)
        left, right = moment(min(stamps) - padding), moment(max(stamps) + padding)
        axes.set_xlim(left, right)
    if measured:
        times = [moment(cycle["time"]) for cycle in measured]
        axes.plot(times, [cycle["monitoring_error"] for cycle in measured], marker="o",
                  label="monitoring error")
        thresholds = [math.nan if cycle["threshold"] is None else cycle["threshold"]
                      for cycle in measured]
        # Each threshold holds until the next cycle; the first from the left edge, the last
        # to the right one, so a single cycle still shows its threshold as a line.
        axes.step([left, *times[1:], right], thresholds + thresholds[-1:], where="post",
                  linestyle="--", color="tab:red", label="threshold")
    else:
        axes.text(0.5, 0.5, "no monitoring run yet", ha="center", va="center",
                  transform=axes.transAxes)
    timed_moves = [move for move in moves if move.when is not None]
    for index, move in enumerate(timed_moves):
        colour = _MOVE_COLOURS.get(move.action, "tab:green")
        for where in (band, axes):
            where.axvline(moment(move.when), color=colour, linestyle=":",
                          label=f"{settings.alias} moves" if index == 0 and where is axes
                          else None)
    band.set_title(f"{settings.model_name}@{settings.alias}: error on each night's new files")
    band.set_yticks([])
    band.set_ylabel("alias", rotation=0, ha="right", va="center")
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=datetime.timezone.utc))
    axes.set_xlabel("cycle start (UTC)")
    axes.set_ylabel("monitoring error")
    highest = max([cycle["monitoring_error"] for cycle in measured]
                  + [cycle["threshold"] for cycle in measured if cycle["threshold"] is not None],
                  default=0.0)
    axes.set_ylim(0, highest * 1.12 if highest > 0 else 1.0)
    figure.legend(loc="outside right upper", fontsize=8, frameon=False)
    # Last: the labels are placed by their measured size in the final layout.
    labels = _label_moves(figure, band,
                          [(moment(move.when), f"v{move.version} {move.action}",
                            _MOVE_COLOURS.get(move.action, "tab:green")) for move in timed_moves])
    first, last = axes.get_xlim()  # in days, matplotlib's date unit
    layout = {"span_seconds": (last - first) * 86400, "move_labels": labels}
    # Written beside the target then renamed: a reader never sees half a PNG.
    handle, partial = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part",
                                       dir=output.parent)
    os.close(handle)
    try:
        figure.savefig(partial, format="png", dpi=100)
        os.replace(partial, output)
    finally:
        plt.close(figure)
        if os.path.exists(partial):
            os.unlink(partial)
    return layout


def _label_moves(figure, band, labels: list[tuple[Any, str, str]]) -> list[dict[str, Any]]:
    """Write each (time, text, colour) in the band, in the lowest row it overlaps nothing.

    Widths are measured by the renderer, so the rows hold whatever the labels' lengths; past
    the last row a label goes in the least crowded one.
    """
    import matplotlib.dates as mdates

    band.set_ylim(-0.5, _MOVE_LABEL_ROWS - 0.5)
    renderer = figure.canvas.get_renderer()
    # Laid out first, so the band has the size it is drawn at.
    figure.canvas.draw()
    rows: list[list] = [[] for _ in range(_MOVE_LABEL_ROWS)]
    placed = []
    first, last = band.get_xlim()
    for when, text, colour in labels:
        # Right of its line in the plot's left half, left of it in the right half: the text
        # stays inside the band.
        left_half = mdates.date2num(when) < (first + last) / 2
        label = band.text(when, 0, f" {text} ", ha="left" if left_half else "right",
                          va="center", fontsize=8, color=colour, clip_on=False)
        label.set_in_layout(False)  # placed in a band already laid out
        fitting = [row for row in range(_MOVE_LABEL_ROWS) if _fits(label, rows[row], renderer)]
        row = fitting[0] if fitting else min(range(_MOVE_LABEL_ROWS),
                                             key=lambda index: len(rows[index]))
        label.set_y(row)
        rows[row].append(label.get_window_extent(renderer))
        placed.append({"text": text, "row": row, "x0": rows[row][-1].x0,
                       "x1": rows[row][-1].x1})
    return placed


def _fits(label, placed: list, renderer) -> bool:
    extent = label.get_window_extent(renderer)
    return not any(extent.x0 < other.x1 and other.x0 < extent.x1 for other in placed)

# --- moving the alias --------------------------------------------------------------------

def rollback(settings: Settings, reason: str, by: str) -> dict[str, Any]:
    """Move the alias back to the version production had before its last move."""
    registry = _registry(settings)
    # Read and moved under the alias lock: a cycle promoting meanwhile would make the
    # version read here stale, and the rollback would go back from the wrong one.
    with registry.alias_lock():
        current = registry.production_version()
        if current is None:
            raise NeedsAttention(f"{settings.model_name!r} has no alias {settings.alias!r}",
                                 fix="run register_first_model.py, or set-alias a version")
        line = production_line(alias_moves(registry, settings.alias), current)
        if len(line) < 2:
            raise NeedsAttention(f"no production version before version {current} is "
                                 f"recorded for alias {settings.alias!r}",
                                 fix="pick one with set-alias (the versions command lists "
                                     "them)")
        return move_alias(registry, settings, settings.alias, line[-2], "rollback", reason, by)


def set_alias(settings: Settings, alias: str, version: str, reason: str,
              by: str) -> dict[str, Any]:
    """Point `alias` at `version` by hand, recorded like a promotion."""
    registry = _registry(settings)
    with registry.alias_lock():
        return move_alias(registry, settings, alias, version, "set-alias", reason, by)


def move_alias(registry, settings: Settings, alias: str, version: str, action: str,
               reason: str, by: str, run_tags: Mapping[str, str] | None = None
               ) -> dict[str, Any]:
    """Check the version loads, move the alias in an AliasChange run, tag both versions.

    Call under `registry.alias_lock()`: the version moved from is read here, and a cycle
    checks the AliasChange runs before it promotes, so it never undoes this move.
    """
    from retraining.registry import ALIAS_CHANGE_RUN

    name = registry.model_name
    check_loadable(registry, version)
    current = _alias_version(registry, alias)
    summary = {"model_name": name, "alias": alias, "action": action,
               "from_version": current, "to_version": version, "reason": reason,
               "changed_by": by, "changed": False, "dry_run": registry.read_only,
               "run_id": None}
    if current == version:
        log.info("alias %r already points at version %s: nothing to do", alias, version)
        return summary
    if registry.read_only:
        log.info("dry run: %s", alias_move_words(summary, would=True))
        return summary
    summary["changed"] = True
    with registry.run(ALIAS_CHANGE_RUN, {"model_name": name, "alias": alias, "action": action,
                                         "from_version": current or "",
                                         "to_version": version, "reason": reason,
                                         "changed_by": by, **(run_tags or {})}) as run:
        registry.client.set_registered_model_alias(name, alias, version)
        summary["run_id"] = run.info.run_id
        note = f"{action} by {by}: {reason} ({alias_move_words(summary)})"
        back = action in ("rollback", "auto_rollback")
        if alias == settings.alias:  # a production move: tagged like a promotion
            registry.annotate_version(version, {
                "decision": "restored" if back else "set_by_hand",
                "previous_production_version": current or "none",
                "alias_changed_by": by, "alias_change_reason": reason}, description=note)
            if current is not None:
                registry.annotate_version(current, {
                    "decision": "rolled_back" if back else "replaced_by_hand",
                    "replaced_by_version": version})
        else:
            registry.annotate_version(version, {f"alias_{alias}_set_by": by,
                                                f"alias_{alias}_reason": reason})
    log.info("%s (%s)", alias_move_words(summary), action)
    return summary


def alias_move_words(summary: Mapping[str, Any], would: bool = False) -> str:
    """The move in words, for the log, the versions' descriptions and the printed summary.

    An alias that pointed at no version is set, not moved: 'from version None' says nothing.
    """
    alias, before, after = summary["alias"], summary["from_version"], summary["to_version"]
    if before is None:
        return (f"alias {alias!r} {'would be set' if would else 'set'} to version {after} "
                f"(it {'points' if would else 'pointed'} at no version)")
    return (f"alias {alias!r} {'would move' if would else 'moved'} from version {before} "
            f"to {after}")


def _alias_version(registry, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(registry.client.get_model_version_by_alias(registry.model_name,
                                                              alias).version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def check_loadable(registry, version: str) -> None:
    """A version the alias may point at: it exists, is READY, and its model loads."""
    from mlflow.exceptions import MlflowException

    name = registry.model_name
    if not re.fullmatch(r"[1-9][0-9]*", version):
        raise UsageError(f"version {version!r} is not a version number",
                         fix="give a number the versions command lists")
    try:
        found = registry.client.get_model_version(name, version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise UsageError(f"version {version} of {name!r} does not exist",
                             fix="give a version the versions command lists") from None
        raise
    if found.status != "READY":
        raise NeedsAttention(f"version {version} of {name!r} is {found.status}, not READY",
                             fix="pick a version whose registration completed")
    try:
        registry.load_version(version)
    except Exception as error:  # whatever the cause, the alias must not point at it
        raise NeedsAttention(f"version {version} of {name!r} cannot be loaded "
                             f"({type(error).__name__}: {' '.join(str(error).split())[:200]})",
                             fix="pick another version, or restore its artifacts") from error


# --- batch predictions -------------------------------------------------------------------

def predict(settings: Settings, input_dir: Path, output: Path,
            low_confidence: float = LOW_CONFIDENCE) -> dict[str, Any]:
    """Predict every row of the CSVs in `input_dir` with production; write one CSV.

    Labels are optional in the inputs. The output is never written over an existing file.
    """
    import numpy as np
    import pandas as pd

    from retraining.archive import move_without_overwrite
    from retraining.datafiles import column_problem, list_data_files, load_file
    from retraining.domain import load_domain
    from retraining.errors import DataError
    from retraining.registry import BATCH_PREDICTIONS_RUN

    if not 0.0 < low_confidence <= 1.0:
        raise UsageError(f"--low-confidence {low_confidence} is not in (0, 1]",
                         fix="give the probability under which a prediction is doubtful")
    output = output.expanduser().absolute()  # a link at that name is refused, not followed
    _check_free_output(output)
    paths = list_data_files(input_dir.expanduser().resolve())
    if not paths:
        raise UsageError(f"no CSV files in {input_dir}", fix="point --input-dir at CSV files")
    domain = load_domain(settings.domain_file)
    registry = _registry(settings)
    production = registry.load_production()
    files = [load_file(path, settings.label_column, domain.prepare_file, labels_required=False)
             for path in paths]
    columns = production.input_columns or list(files[0].features.columns)
    for loaded in files:
        problem = column_problem(loaded, columns)
        if problem:
            raise DataError(f"{loaded.name} {problem}", fix=f"fix or remove {loaded.path}")
    features = pd.concat([loaded.features[columns] for loaded in files])
    if len(features) == 0:
        raise UsageError(f"the CSV files in {input_dir} have no rows",
                         fix="point --input-dir at files with data")
    model = production.model
    table = pd.DataFrame({
        "source_file": np.concatenate([[loaded.name] * len(loaded.features)
                                       for loaded in files]),
        # The file's own data row, never an index prepare_file set; empty where it made rows
        # of its own (aggregated them), which no line of the file is.
        "row": pd.concat([pd.Series(loaded.features.index if loaded.file_rows
                                    else [pd.NA] * len(loaded.features), dtype="Int64")
                          for loaded in files], ignore_index=True).array,
        "predicted_class": np.asarray(model.predict(features.reset_index(drop=True)))})
    low_share = None
    if hasattr(model, "predict_proba"):
        probabilities = np.asarray(model.predict_proba(features.reset_index(drop=True)))
        for index, label in enumerate(model.classes_):
            table[f"proba_{label}"] = probabilities[:, index]
        low_share = float(np.mean(probabilities.max(axis=1) < low_confidence))
    _write_new_csv(table, output, move_without_overwrite)
    distribution = {str(label): int(count)
                    for label, count in table["predicted_class"].value_counts().items()}
    summary = {"model_name": settings.model_name, "production_version": production.version,
               "output": str(output), "files": len(files), "rows": len(table),
               "prediction_distribution": distribution,
               "low_confidence_threshold": low_confidence, "low_confidence_share": low_share,
               "run_id": None}
    with registry.run(BATCH_PREDICTIONS_RUN, {"model_name": settings.model_name,
                                              "production_version": production.version,
                                              "output": str(output)}) as run:
        if run is not None:
            registry.log_summary(
                params={"input_dir": str(input_dir), "model_version": production.version,
                        "low_confidence_threshold": low_confidence, "files": len(files)},
                metrics={"rows": len(table), "low_confidence_share": low_share,
                         **{f"predicted_share_{_metric_name(label)}": count / len(table)
                            for label, count in distribution.items()}})
            registry.log_dict(summary, "prediction_distribution.json")
            summary["run_id"] = run.info.run_id
    return summary


def _check_free_output(output: Path) -> None:
    if os.path.lexists(output):
        raise UsageError(f"{output} already exists",
                         fix="pass --output a new path, or move the old file away")
    if not output.parent.is_dir():
        raise UsageError(f"folder {output.parent} does not exist",
                         fix="create it or pass --output a path in an existing folder")


def _write_new_csv(table, output: Path, move_without_overwrite) -> None:
    """Write beside the target, then link it in: an existing file is never replaced."""
    handle, partial = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part",
                                       dir=output.parent)
    os.close(handle)
    try:
        table.to_csv(partial, index=False)
        move_without_overwrite(Path(partial), output)
    except FileExistsError:
        raise UsageError(f"{output} appeared while predicting; it was left as it was",
                         fix="pass --output a new path") from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _metric_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", label)


# --- readable tables ---------------------------------------------------------------------

def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], width: int = 60) -> str:
    """Rows as aligned text columns; floats to 4 decimals, lists joined, None as '-'.

    Cells longer than `width` are cut (the JSON output has them whole).
    """
    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}"
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value)) or "-"
        text = " ".join(str(value).split())
        return text if len(text) <= width else text[:width - 3] + "..."

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[index]) for line in cells])
              for index, column in enumerate(columns)]
    return "\n".join("  ".join(value.ljust(width)
                               for value, width in zip(line, widths, strict=True)).rstrip()
                     for line in [list(columns), *cells])


def render_status(summary: Mapping[str, Any]) -> str:
    production = summary["production"]
    lines = [f"{summary['model_name']}@{summary['alias']}: version "
             f"{production.get('version') or 'none'}"]
    for key in ("since", "moved_by", "changed_by", "why", "decision",
                "previous_production_version", "rollback_target"):
        if production.get(key) is not None:
            lines.append(textwrap.fill(f"{key}: {production[key]}", width=96,
                                       initial_indent="  ", subsequent_indent="    "))
    # Reasons are left to --json: they would make each row hundreds of characters wide.
    lines += ["", f"last {len(summary['cycles'])} cycles (newest first):",
              table(summary["cycles"], ["started", "outcome", "production_version",
                                        "monitoring_error", "threshold", "drift_share"]),
              "", f"new files waiting in {summary['new_dir']}: {summary['new_files_waiting']}"]
    return "\n".join(lines)


def render_versions(summary: Mapping[str, Any]) -> str:
    return table(summary["versions"], ["version", "aliases", "decision", "production_error",
                                       "challenger_error", "previous_production_version"])


def render_history(summary: Mapping[str, Any]) -> str:
    moves = summary["alias_moves"]
    return "\n".join([
        table(summary["cycles"], ["started", "production_version", "monitoring_error",
                                  "threshold", "drift_share", "decision"]),
        "", f"moves of alias {summary['alias']!r}:",
        table(moves, ["when", "version", "previous", "action", "by", "reason"], width=28),
        "", f"plot: {summary['plot']}"
        + (f" (logged to run {summary['history_run_id']})" if summary["history_run_id"]
           else "")])


def render_alias_change(summary: Mapping[str, Any]) -> str:
    if summary["from_version"] == summary["to_version"]:
        return f"alias {summary['alias']!r} already points at version {summary['to_version']}"
    why = f"({summary['action']} by {summary['changed_by']}: {summary['reason']})"
    if not summary["changed"]:  # a dry run: say what it would do, and that it did not
        return f"dry run: {alias_move_words(summary, would=True)} {why}; nothing was changed"
    return f"{alias_move_words(summary)} {why}; run {summary['run_id']}"


def render_predictions(summary: Mapping[str, Any]) -> str:
    rows = [{"predicted_class": label, "rows": count,
             "share": count / summary["rows"]}
            for label, count in summary["prediction_distribution"].items()]
    low = summary["low_confidence_share"]
    return "\n".join([
        f"{summary['rows']} rows from {summary['files']} files predicted by version "
        f"{summary['production_version']} -> {summary['output']}",
        table(rows, ["predicted_class", "rows", "share"]),
        "low-confidence share (max probability < "
        f"{summary['low_confidence_threshold']}): {'-' if low is None else f'{low:.4f}'}"])
