#!/usr/bin/env bash
# Start the MLflow UI and tracking server, by default on the project's embedded store, so the
# UI shows the runs and the alias that the nightly cycle wrote. Bound to 127.0.0.1: see the
# README before exposing it (basic auth, --allowed-hosts); never bind 0.0.0.0 without auth.
#
#   mlflow_server/start_server.sh            # http://127.0.0.1:5000
#   PORT=5001 mlflow_server/start_server.sh
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@db.example/mlflow \
#   MLFLOW_DEFAULT_ARTIFACT_ROOT=s3://team-bucket/mlflow mlflow_server/start_server.sh
#
# Settings, by the names `mlflow server` itself reads: MLFLOW_BACKEND_STORE_URI (default the
# embedded mlflow_server/mlflow.db), MLFLOW_DEFAULT_ARTIFACT_ROOT (default
# mlflow_server/artifacts); HOST, PORT; MLFLOW, the mlflow command. Other flags are passed on.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="$(dirname "$here")"
mlflow="${MLFLOW:-$project/.venv/bin/mlflow}"
if [ ! -x "$mlflow" ]; then
  mlflow="$(command -v mlflow || true)"
fi
if [ -z "$mlflow" ]; then
  echo "start_server.sh: error: mlflow is not installed. Fix: run the README's first command" >&2
  exit 2
fi
backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$here/mlflow.db}"
artifacts="${MLFLOW_DEFAULT_ARTIFACT_ROOT:-$here/artifacts}"
# SQLAlchemy 2.1 reads postgresql:// as postgresql+psycopg:// (psycopg 3); without the
# driver, mlflow would stop with a trace at its first query instead of this line.
driver=""
case "$backend" in
  postgres://*)
    echo "start_server.sh: error: MLFLOW_BACKEND_STORE_URI starts with postgres://, which SQLAlchemy does not read. Fix: write postgresql:// instead" >&2
    exit 2 ;;
  postgresql://*|postgresql+psycopg://*) driver=psycopg ;;
  postgresql+psycopg2://*) driver=psycopg2 ;;
esac
if [ -n "$driver" ]; then
  python="$(dirname "$mlflow")/python"
  if ! "$python" -c "import $driver" 2>/dev/null; then
    if [ "$driver" = psycopg ]; then
      fix="$python -m pip install -r $project/requirements-server.txt"
    else
      fix="$python -m pip install psycopg2-binary, or write postgresql:// for psycopg 3 from $project/requirements-server.txt"
    fi
    echo "start_server.sh: error: MLFLOW_BACKEND_STORE_URI is a PostgreSQL database, and $python cannot import its driver $driver. Fix: $fix" >&2
    exit 2
  fi
fi
# Artifacts as plain file paths (not proxied mlflow-artifacts: URIs) by default, so
# experiments created through the server stay readable by the nightly cycle on the embedded
# store, and back. A shared server gives a destination every client can reach (s3://, ...).
case "$artifacts" in
  *://*) ;;
  *) mkdir -p "$artifacts" ;;
esac
# The store by its variable, not a flag: a flag would show its password to every user of
# this machine in `ps`.
export MLFLOW_BACKEND_STORE_URI="$backend"
exec "$mlflow" server \
  --default-artifact-root "$artifacts" --no-serve-artifacts \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-5000}" --workers 1 "$@"
