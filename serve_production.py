"""Serve the version behind the production alias over HTTP, and follow the alias.

    serve_production.py                         http://127.0.0.1:5002
    serve_production.py --serve-port 8080 --alias-check-seconds 30

GET /health, POST /predict (MLflow's scoring formats; also at /invocations), GET /model-info
(version, alias, when, by whom and why it got there), POST /reload (check the alias now).
After a promotion or a rollback the new version answers within --alias-check-seconds; no
request fails during the swap. Stops on SIGTERM or Ctrl-C. The logic is in
retraining/serving.py.
"""

from __future__ import annotations

from retraining.cli import ArgumentParser, exit_process, run_entry_point
from retraining.config import add_options

OPTIONS = ["tracking_uri", "store_timeout", "experiment", "model_name", "alias", "serve_host",
           "serve_port", "alias_check_seconds", "json"]


def main(argv=None) -> int:
    from retraining.serving import serve

    parser = ArgumentParser(prog="serve_production.py", description=__doc__.splitlines()[0])
    add_options(parser, OPTIONS)
    return run_entry_point(parser, argv, lambda settings, args: serve(settings))


if __name__ == "__main__":
    exit_process(main())
