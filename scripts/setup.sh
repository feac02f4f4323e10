#!/usr/bin/env bash
# One-shot, idempotent set-up of everything petal builds and tests against, from the package
# registries only: a project-local Python venv (libtorch via the torch wheel, onnxruntime, test
# oracles) and s3s-fs in tools/. A second run only checks stamps and costs seconds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

PYTHON="${PYTHON:-python3}"
VENV="$root/.venv"
TOOLS="$root/tools"
TORCHVISION_VERSION=0.26.0
S3S_FS_VERSION=0.14.1

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# --- Python venv ---------------------------------------------------------------------------------
want_py="$(sha256sum scripts/requirements.txt | cut -d' ' -f1) torchvision==$TORCHVISION_VERSION"
if ! stamp_ok "$VENV/.petal-stamp" "$want_py"; then
  log "creating/updating the Python venv in .venv (torch 2.11.0 is a ~2.7 GB download the first time)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip >/dev/null
  "$VENV/bin/pip" install --quiet -r scripts/requirements.txt
  "$VENV/bin/pip" install --quiet --no-deps "torchvision==$TORCHVISION_VERSION"
  "$VENV/bin/python" - <<'PY'
import torch, torchvision, onnxruntime, onnx
assert torch.__version__.startswith("2.11.0"), torch.__version__
assert onnxruntime.__version__ == "1.31.1", onnxruntime.__version__
PY
  printf '%s' "$want_py" > "$VENV/.petal-stamp"
else
  log "Python venv up to date"
fi

# --- s3s-fs (a real S3-compatible server for the registry tests) ----------------------------------
if ! stamp_ok "$TOOLS/.s3s-fs-stamp" "$S3S_FS_VERSION" || [ ! -x "$TOOLS/bin/s3s-fs" ]; then
  log "installing s3s-fs $S3S_FS_VERSION into tools/ (~2-3 min the first time)"
  cargo install --quiet --locked "s3s-fs@$S3S_FS_VERSION" --features binary --root "$TOOLS"
  printf '%s' "$S3S_FS_VERSION" > "$TOOLS/.s3s-fs-stamp"
else
  log "s3s-fs up to date"
fi

log "ready: $(scripts/env.sh sh -c 'echo LIBTORCH from $(python -c "import torch,os;print(os.path.dirname(torch.__file__))")')"
