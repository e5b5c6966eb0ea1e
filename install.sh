#!/usr/bin/env bash
# Installs everything minivision needs on a fresh Debian machine (idempotent; fast when done).
#   ./install.sh          the package, its dependencies and the Fashion-MNIST data
#   ./install.sh --test   also what the tests need (pytest, ruff, playwright, Debian's chromium)
set -euo pipefail
cd "$(dirname "$0")"

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

# Fashion-MNIST from Debian's package (the four IDX .gz files in /usr/share/datasets/fashion-mnist).
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  if command -v apt-get >/dev/null; then
    echo "installing dataset-fashion-mnist (Debian package)..."
    sudo_ apt-get update -qq || true
    sudo_ apt-get install -y -qq dataset-fashion-mnist >/dev/null || \
      echo "warning: could not install dataset-fashion-mnist; minivision will try to download the data" >&2
  fi
fi

# The browser tests (report.html, the web page) drive Debian's chromium through Playwright.
if [ -n "$extras" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null; then
    echo "installing chromium (Debian package, for the browser tests)..."
    sudo_ apt-get install -y -qq chromium >/dev/null || { sudo_ apt-get update -qq || true; \
      sudo_ apt-get install -y -qq chromium >/dev/null; } || echo "warning: could not install chromium" >&2
  fi
fi

PY=${PYTHON:-python3}
# Pin the CPU build of PyTorch first: an unpinned torch pulls gigabytes of CUDA packages.
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".${extras}"
"$PY" -c 'import minivision, torch; print(f"minivision {minivision.__version__} installed (torch {torch.__version__})")'
