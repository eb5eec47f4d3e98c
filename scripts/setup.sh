#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with the runtime and
# test requirements, and Debian's Chromium for the browser tests (skipped when not root/apt).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
if ! command -v chromium >/dev/null 2>&1 && [ "${MTL_SKIP_BROWSER_INSTALL:-0}" != 1 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium not found; browser tests need it (apt-get install chromium)" >&2
  fi
fi
