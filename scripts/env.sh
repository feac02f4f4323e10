#!/usr/bin/env bash
# Runs a command with the environment that builds and runs petal against the project-local venv:
#   scripts/env.sh cargo build
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
site="$(echo "$venv"/lib/python3*/site-packages)"
export PATH="$venv/bin:$root/tools/bin:$PATH"
export VIRTUAL_ENV="$venv"
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK="${LIBTORCH_BYPASS_VERSION_CHECK:-0}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$site/onnxruntime/capi/libonnxruntime.so.1.31.1}"
export PETAL_PYTHON="$venv/bin/python"
export PETAL_S3S_FS="$root/tools/bin/s3s-fs"
export PETAL_TOOLS="$root/tools"
exec "$@"
