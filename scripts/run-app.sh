#!/usr/bin/env bash
# Set up a virtual environment (if needed), install the runtime requirements, start the app.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
exec .venv/bin/python app.py "$@"
