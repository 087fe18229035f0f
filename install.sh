#!/usr/bin/env bash
# Install the product for your own data: create .venv in the project folder and install
# requirements.txt into it. Nothing else: no data, model or store is created or touched, so
# it is safe to run again in a folder in use (after a git pull changed requirements.txt).
set -euo pipefail
project="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$project"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "install.sh: error: $python is not Python 3.10 or newer. Fix: install Python 3.10+," \
       "or name one with PYTHON=/path/to/python3 bash install.sh" >&2
  exit 2
fi
# An existing .venv is kept: pip then only installs what requirements.txt adds or changes.
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
echo "installed into $project/.venv"
