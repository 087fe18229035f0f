#!/usr/bin/env bash
# The README's first command: install into .venv (install.sh), then run the product end to
# end on the embedded store: history and a drifted batch, the first model, its registration,
# one cycle.
set -euo pipefail
project="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$project"

if [ -e mlflow_server/mlflow.db ] || compgen -G "new_gts/*.csv" >/dev/null \
   || compgen -G "used_gts/*.csv" >/dev/null || compgen -G "model/*.pkl" >/dev/null \
   || compgen -G "model/*.pickle" >/dev/null || compgen -G "model/*.joblib" >/dev/null; then
  echo "run_demo.sh: error: this folder already has a store, data or a model (the demo ran" \
       "before, or your own data is here). Fix: run the demo in a fresh clone, or remove" \
       "mlflow_server/mlflow.db mlflow_server/artifacts new_gts/*.csv used_gts/*.csv" \
       "model/*.pkl if they are only the demo's; to install without the demo, run" \
       "bash install.sh" >&2
  exit 1
fi

echo "== installing into .venv"
bash install.sh

echo "== generating history (used_gts/) and a batch from a hotter regime (new_gts/)"
.venv/bin/python demo/generate_stream.py

echo "== training the first model on history"
.venv/bin/python train_classification_model.py used_gts --output model/initial_model.pkl

echo "== registering it as version 1 with alias 'production'"
.venv/bin/python register_first_model.py

echo "== running one nightly cycle"
.venv/bin/python pipeline_orchestrator.py

echo
echo "Done. See the decision in the MLflow UI: mlflow_server/start_server.sh, then open"
echo "http://127.0.0.1:5000 (experiment 'classifier-retraining', model 'classifier')."
