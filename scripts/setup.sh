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
# Ray is optional for users (the Ray executor); installed here so the tests cover it.
.venv/bin/python -m pip install --quiet -r requirements-ray.txt
# Browser tests drive Debian's Chromium (Playwright cannot download browsers offline); the
# emoji font draws the status icons in screenshots.
missing=$(for pkg in chromium fonts-noto-color-emoji; do
  dpkg -s "$pkg" >/dev/null 2>&1 || echo "$pkg"; done)
if [ -n "$missing" ] && [ "${MTL_SKIP_BROWSER_INSTALL:-0}" != 1 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "note: missing $missing; browser tests need chromium (apt-get install chromium)" >&2
  fi
fi
