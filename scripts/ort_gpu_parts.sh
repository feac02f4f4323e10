#!/usr/bin/env bash
# Packs onnxruntime-gpu 1.31.1's three libraries (libonnxruntime.so.1.31.1,
# libonnxruntime_providers_shared.so, libonnxruntime_providers_cuda.so: ~300 MB, the CUDA provider
# built for CUDA 13 / cuDNN 9 like torch 2.11's wheels) from PyPI into xz parts small enough to carry
# to a GPU host one call at a time (the device tool carries at most 64 MiB per call).
#
#   scripts/ort_gpu_parts.sh DIR      # writes DIR/ort-gpu.tar.xz.part-aa, -ab, … and DIR/SHA256SUMS
#
# Parts are 45 MiB (PART_MB): a call carries the tracked tree too (~11 MB) and at most 64 MiB in all.
# The xz stream is ~195 MB: five parts. A GPU session then makes its calls back to back (a carried
# folder is gone at the next call; /tmp stays while the machine is warm), DIR under the ignored var/:
#   1–4: carry var/ort-gpu/ort-gpu.tar.xz.part-a[a-d] (and SHA256SUMS with the first); each call
#        runs: mkdir -p /tmp/ortgpu && cp var/ort-gpu/* /tmp/ortgpu/
#   5:   carry part-ae and the venv's torchvision (.venv/lib/python3.11/site-packages/torchvision and
#        torchvision.libs, 23 MB, for the PyTorch column, if the device's python has none): copy them,
#        the torchvision folders to /tmp/tv
#   6:   carry target/release/petal, tools/weights/mobilenet_v2-b0353104.pth and tools/testdata; run
#        cat /tmp/ortgpu/ort-gpu.tar.xz.part-* | tar -xJ -C /tmp/ortgpu && (cd /tmp/ortgpu && sha256sum -c SHA256SUMS)
#        ORT_GPU_DIR=/tmp/ortgpu PETAL_TORCHVISION=/tmp/tv scripts/gpu_infer_check.sh $OUT/infer
set -euo pipefail
DIR=${1:?usage: ort_gpu_parts.sh DIR}
PART_MB=${PART_MB:-45}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$DIR"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --dest "$work/wheel" onnxruntime-gpu==1.31.1
mkdir "$work/libs"
"$PYTHON" - "$work/wheel"/onnxruntime_gpu-*.whl "$work/libs" <<'PY'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
want = {"libonnxruntime.so.1.31.1", "libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"}
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if os.path.basename(name) in want:
            with z.open(name) as src, open(os.path.join(out, os.path.basename(name)), "wb") as dst:
                dst.write(src.read())
            want.discard(os.path.basename(name))
if want:
    sys.exit(f"not in {wheel}: {sorted(want)}")
PY
rm -f "$DIR"/ort-gpu.tar.xz.part-*
tar -C "$work/libs" -cf - . | xz -T0 -6 | split -b "${PART_MB}m" - "$DIR/ort-gpu.tar.xz.part-"
(cd "$work/libs" && sha256sum ./*) > "$DIR/SHA256SUMS"
ls -l "$DIR"
