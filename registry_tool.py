"""Operate the registry: status, versions, history, rollback, set-alias, predict.

    registry_tool.py status                     production, why it is there, the last cycles
    registry_tool.py versions                   every version: aliases, errors, decision
    registry_tool.py history [--output PNG]     monitoring error over time, plotted
    registry_tool.py rollback --reason TEXT     alias back to the previous production version
    registry_tool.py set-alias NAME VERSION --reason TEXT
    registry_tool.py predict --input-dir DIR --output CSV

Each prints a readable table, or one JSON object with --json. Alias moves are recorded as
an AliasChange run and as tags and a description on the versions. The logic is in
retraining/operations.py.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

from retraining import operations
from retraining.cli import PROJECT_DIR, ArgumentParser, run_entry_point
from retraining.config import add_options

STORE = ["tracking_uri", "store_timeout", "experiment", "model_name", "json"]


def main(argv=None) -> int:
    parser = ArgumentParser(prog="registry_tool.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser("status", help="production, why it is there, recent cycles")
    add_options(status, [*STORE, "alias", "new_dir", "settle_seconds"])
    status.add_argument("--last", type=int, default=operations.RECENT_CYCLES,
                        help="how many recent cycles to show (default: %(default)s)")

    versions = commands.add_parser("versions", help="every version with aliases and errors")
    add_options(versions, STORE)

    history = commands.add_parser("history", help="monitoring error over time, as a PNG")
    add_options(history, [*STORE, "alias", "dry_run"])
    history.add_argument("--output", type=Path, default=PROJECT_DIR / "registry_history.png",
                         help="where to write the plot, replaced if it exists "
                              "(default: registry_history.png in the project folder)")

    rollback = commands.add_parser("rollback", help="alias back to the previous version")
    add_options(rollback, [*STORE, "alias", "dry_run"])

    set_alias = commands.add_parser("set-alias", help="point an alias at a version by hand")
    set_alias.add_argument("alias_name", metavar="NAME", help="the alias, e.g. production")
    set_alias.add_argument("version", metavar="VERSION", help="the version number")
    add_options(set_alias, [*STORE, "dry_run"])

    for command in (rollback, set_alias):
        command.add_argument("--reason", required=True,
                             help="why, recorded on the versions (required)")
        command.add_argument("--by", default=None,
                             help="who, recorded on the versions (default: your login)")

    predict = commands.add_parser("predict", help="batch predictions with production")
    add_options(predict, [*STORE, "alias", "domain_file", "label_column"])
    predict.add_argument("--input-dir", type=Path, required=True,
                         help="folder of CSV files (required)")
    predict.add_argument("--output", type=Path, required=True,
                         help="predictions CSV to create, never replaced (required)")
    predict.add_argument("--low-confidence", type=float, default=operations.LOW_CONFIDENCE,
                         help="probability under which a prediction counts as low-confidence "
                              "(default: %(default)s)")

    def act(settings, args):
        return {"command": args.command} | run_command(settings, args)

    def render(summary):
        return RENDERERS[summary["command"]](summary)

    return run_entry_point(parser, argv, act, render)


def run_command(settings, args):
    if args.command == "status":
        return operations.status(settings, args.last)
    if args.command == "versions":
        return operations.versions(settings)
    if args.command == "history":
        return operations.history(settings, args.output)
    if args.command == "rollback":
        return operations.rollback(settings, args.reason, args.by or _login())
    if args.command == "set-alias":
        return operations.set_alias(settings, args.alias_name, args.version, args.reason,
                                    args.by or _login())
    return operations.predict(settings, args.input_dir, args.output, args.low_confidence)


RENDERERS = {"status": operations.render_status, "versions": operations.render_versions,
             "history": operations.render_history, "rollback": operations.render_alias_change,
             "set-alias": operations.render_alias_change,
             "predict": operations.render_predictions}


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in a bare container
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
