#!/usr/bin/env bash
# Set-up if needed, then start the dashboard on its embedded defaults (runs in ./runs).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
exec .venv/bin/streamlit run app.py "$@"
