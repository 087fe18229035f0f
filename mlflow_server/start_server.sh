#!/usr/bin/env bash
# Start the MLflow UI and tracking server on the project's embedded store, so the UI shows
# the runs and the alias that the nightly cycle wrote. Bound to 127.0.0.1: see the README
# before exposing it (basic auth, --allowed-hosts); never bind 0.0.0.0 without auth.
#
#   mlflow_server/start_server.sh            # http://127.0.0.1:5000
#   PORT=5001 mlflow_server/start_server.sh
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
# Artifacts as plain file paths (not proxied mlflow-artifacts: URIs), so experiments created
# through the server stay readable by the nightly cycle on the embedded store, and back.
mkdir -p "$here/artifacts"
exec "$mlflow" server \
  --backend-store-uri "sqlite:///$here/mlflow.db" \
  --default-artifact-root "$here/artifacts" --no-serve-artifacts \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-5000}" --workers 1 "$@"
