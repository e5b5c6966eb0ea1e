#!/usr/bin/env bash
# Installs everything minivision needs on a fresh Debian machine (idempotent; fast when done).
#   ./install.sh          the package, its dependencies and the Fashion-MNIST data
#   ./install.sh --test   also what the tests need (pytest, ruff, playwright, Debian's chromium)
set -euo pipefail
cd "$(dirname "$0")"

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

die() { echo "install.sh: $*" >&2; exit 1; }

# Fashion-MNIST from Debian's package (the four IDX .gz files in /usr/share/datasets/fashion-mnist):
# the README's first command trains on it, so not getting it is an error, not a warning.
if [ -n "${MINIVISION_DATA:-}" ] && [ -f "$MINIVISION_DATA/train-images-idx3-ubyte.gz" ]; then
  :  # a copy of the user's own
elif ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  command -v apt-get >/dev/null || die "no apt-get here: Fashion-MNIST cannot be installed from Debian's \
dataset-fashion-mnist; put its four .gz files in a folder and set MINIVISION_DATA to it (see README)"
  echo "installing dataset-fashion-mnist (Debian package)..."
  sudo_ apt-get update -qq || true
  sudo_ apt-get install -y -qq dataset-fashion-mnist >/dev/null || \
    die "could not install Debian's dataset-fashion-mnist (apt-get failed; see its output above)"
fi

# The browser tests (report.html, the web page) drive Debian's chromium through Playwright.
if [ -n "$extras" ] && ! command -v chromium >/dev/null 2>&1; then
  command -v apt-get >/dev/null || die "no apt-get here: install chromium for the browser tests"
  echo "installing chromium (Debian package, for the browser tests)..."
  sudo_ apt-get install -y -qq chromium >/dev/null || { sudo_ apt-get update -qq || true; \
    sudo_ apt-get install -y -qq chromium >/dev/null; } || die "could not install Debian's chromium (apt-get failed)"
fi

# axe-core (from the npm registry), injected by the browser tests to check the page, /docs and
# report.html for accessibility; kept in .tools/ beside the checkout (not committed).
AXE_VERSION=4.14.1
if [ -n "$extras" ] && [ ! -f .tools/node_modules/axe-core/axe.min.js ]; then
  command -v npm >/dev/null || die "no npm here: install Debian's npm (apt-get install npm) for the accessibility tests"
  echo "installing axe-core $AXE_VERSION (npm, for the accessibility tests)..."
  mkdir -p .tools
  npm install --prefix .tools --no-audit --no-fund --silent "axe-core@$AXE_VERSION" >/dev/null || \
    die "could not install axe-core $AXE_VERSION from the npm registry (npm failed; see its output above)"
fi

# Fonts with wide coverage (Debian's Noto), so class names in any script (Chinese, Japanese, Arabic,
# accented Latin...) are drawn in the report's pictures, report.html and the web page, not as boxes.
# Not an error without them: pictures then show boxes for those names, with a one-line note.
fonts_note="class names in scripts DejaVu Sans lacks (Chinese, Japanese, ...) will be drawn as boxes"
if ! dpkg -s fonts-noto-core fonts-noto-cjk >/dev/null 2>&1; then
  if command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
    echo "installing fonts-noto-core and fonts-noto-cjk (Debian packages, for class names in every script)..."
    sudo_ apt-get install -y -qq fonts-noto-core fonts-noto-cjk >/dev/null 2>&1 || { sudo_ apt-get update -qq || true; \
      sudo_ apt-get install -y -qq fonts-noto-core fonts-noto-cjk >/dev/null; } || \
      echo "install.sh: note: could not install fonts-noto-core and fonts-noto-cjk (apt-get failed): $fonts_note" >&2
  else
    echo "install.sh: note: no apt-get here: install Noto Sans and Noto Sans CJK yourself, or $fonts_note" >&2
  fi
fi

PY=${PYTHON:-python3}
# Pin the CPU build of PyTorch first: an unpinned torch pulls gigabytes of CUDA packages.
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".${extras}"
"$PY" -c 'from minivision.data.sources import find_local; import sys; sys.exit(find_local("fashion-mnist") is None)' \
  || die "Fashion-MNIST is not complete on this machine (its files are missing or renamed)"
"$PY" -c 'import minivision, torch; print(f"minivision {minivision.__version__} installed (torch {torch.__version__})")'
