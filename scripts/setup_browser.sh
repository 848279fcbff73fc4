#!/usr/bin/env bash
# What the browser tests need besides .venv: Playwright (from PyPI, pinned) and a Chromium
# (the system's: Playwright's own browser download is not used). Installs Chromium with
# apt-get where it can; otherwise says how and fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HEADWAY_VENV:-.venv}
"$VENV/bin/python" -m pip --disable-pip-version-check -q install -c constraints.txt \
  "playwright==$(grep -E '^playwright==' constraints.txt | cut -d= -f3)"
found() {
  [ -n "${HEADWAY_CHROMIUM:-}" ] && command -v "$HEADWAY_CHROMIUM" >/dev/null && return 0
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
    || command -v google-chrome >/dev/null
}
if ! found; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "headway: installing Chromium (apt-get install chromium) for the browser tests"
    apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null
  elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    echo "headway: installing Chromium (sudo apt-get install chromium) for the browser tests"
    sudo apt-get update -q >/dev/null && sudo apt-get install -y -q chromium >/dev/null
  fi
fi
if ! found; then
  echo "headway: the browser tests need Chromium: install it (Debian/Ubuntu: sudo apt-get" \
       "install chromium) or set HEADWAY_CHROMIUM to a Chrome or Chromium executable" >&2
  exit 1
fi
