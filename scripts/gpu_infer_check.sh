#!/usr/bin/env bash
# The inference engine's GPU checks (issue: ONNX export and the ort engine), in one command, on a
# host with an NVIDIA GPU. No Rust toolchain needed there: carry target/release/petal and this
# repository. Needs python3 with torch 2.11 (cu130), torchvision for the PyTorch column
# (PETAL_TORCHVISION as in gpu_train_check.sh if the host's python has none), and onnxruntime-gpu
# 1.31.1's three libraries in ORT_GPU_DIR (scripts/ort_gpu_parts.sh packs them for carrying).
#
#   ORT_GPU_DIR=/tmp/ortgpu scripts/gpu_infer_check.sh OUT_DIR
#
# Writes OUT_DIR/{gpu.txt, doctor.json, batch_resnet50.json, batch_mobilenet_v2.json,
# infer_cpu.json, summary.txt}. A step that fails is recorded in summary.txt and the others still
# run. SECONDS_PER (default 5) is the time per measurement; PROVIDER (cuda) and BATCHES
# (1,8,64,256) may be changed for a dry run on a CPU machine:
#   PATH=.venv/bin:$PATH ORT_GPU_DIR=.venv/lib/python3.11/site-packages/onnxruntime/capi \
#     PROVIDER=cpu BATCHES=1,2 SECONDS_PER=0.3 scripts/gpu_infer_check.sh /tmp/gpu_infer_dry
set -uo pipefail
OUT=${1:?usage: gpu_infer_check.sh OUT_DIR}
PETAL=${PETAL:-target/release/petal}
ORT_GPU_DIR=${ORT_GPU_DIR:?set ORT_GPU_DIR to the folder with libonnxruntime.so.1.31.1 and its providers}
SECONDS_PER=${SECONDS_PER:-5} PROVIDER=${PROVIDER:-cuda} BATCHES=${BATCHES:-1,8,64,256}
mkdir -p "$OUT"
SITE=$(python3 -c 'import torch,os;print(os.path.dirname(os.path.dirname(torch.__file__)))')
export LD_LIBRARY_PATH="$SITE/torch/lib:$SITE/nvidia/cu13/lib:$SITE/nvidia/cudnn/lib:$ORT_GPU_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ORT_DYLIB_PATH="$ORT_GPU_DIR/libonnxruntime.so.1.31.1"
export PETAL_PYTHON=${PETAL_PYTHON:-python3}
if [ -n "${PETAL_TORCHVISION:-}" ]; then export PYTHONPATH="$PETAL_TORCHVISION${PYTHONPATH:+:$PYTHONPATH}"; fi
summary="$OUT/summary.txt"
: > "$summary"
step() { # step NAME OUTFILE COMMAND…: runs COMMAND with stdout to OUTFILE, notes how it ended
  local name=$1 out=$2 start end rc
  shift 2
  start=$(date +%s)
  "$@" > "$out" 2> "$OUT/$name.stderr"
  rc=$?
  end=$(date +%s)
  echo "$name: exit $rc in $((end - start)) s" | tee -a "$summary"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
step doctor "$OUT/doctor.json" "$PETAL" doctor --json

# 1. ResNet50 and MobileNetV2 through the CUDA execution provider at fixed batch sizes, next to
#    PyTorch eager fp32 on the same GPU in the same run (and Python onnxruntime when it has CUDA).
for arch in resnet50 mobilenet_v2; do
  step "batch_$arch" "$OUT/batch_$arch.json" "$PETAL" bench batch --arch "$arch" --batches "$BATCHES" \
    --seconds "$SECONDS_PER" --provider "$PROVIDER" --json
done

# 2. The CPU targets on this host's cores (the dev machine has 2): in-process vs session.run,
#    HTTP vs in-process, batching on vs off at 32 clients — the real MobileNetV2 when carried.
if [ -f tools/weights/mobilenet_v2-b0353104.pth ]; then
  "$PETAL" export --arch mobilenet_v2 --weights tools/weights/mobilenet_v2-b0353104.pth --out "$OUT/mb.onnx" > /dev/null
  step infer_cpu "$OUT/infer_cpu.json" "$PETAL" bench infer --onnx "$OUT/mb.onnx" --image tools/testdata/chelsea.png \
    --seconds "$SECONDS_PER" --max-batch 16 --provider cpu --json
  rm -f "$OUT/mb.onnx"
fi

python3 - "$OUT" <<'PY' | tee -a "$summary"
import json, os, sys
out = sys.argv[1]
for arch in ("resnet50", "mobilenet_v2"):
    try:
        r = json.load(open(os.path.join(out, f"batch_{arch}.json")))
    except (OSError, ValueError):
        continue
    print(f"\n{r['arch']} on {r['provider']}, images/s; reference: {r['reference']['about']}")
    print(f"{'batch':>6}{'petal':>10}{'py ort':>10}{'torch dev':>11}{'torch host':>11}{'/torch dev':>11}{'/torch host':>12}")
    f = lambda v: f"{v:10.1f}" if v else f"{'-':>10}"
    for row in r["rows"]:
        ratio = lambda k: f"{row['petal'] / row[k]:11.2f}" if row.get(k) else f"{'-':>11}"
        print(f"{row['batch']:>6}{f(row['petal'])}{f(row['python_ort'])} {f(row['torch_on_device'])} "
              f"{f(row['torch_host'])}{ratio('torch_on_device')} {ratio('torch_host')}")
    for note in r["reference"]["notes"]:
        print("note:", note)
try:
    r = json.load(open(os.path.join(out, "infer_cpu.json")))
    last = lambda m: m["throughput"][-1][1]
    print("\nCPU (this host):")
    print(f"  engine p50 / python session.run p50   {r['engine_off']['p50_ms'] / r['python_session_run']['p50_ms']:.3f} (target <= 1.05)")
    print(f"  http p50 / engine+decode p50          {r['http_off']['p50_ms'] / r['engine_with_preprocess']['p50_ms']:.3f} (target <= 1.3)")
    print(f"  batching on/off, engine, 32 clients   {last(r['engine_on']) / last(r['engine_off']):.3f} (target >= 1.5)")
    print(f"  batching on/off, http, 32 clients     {last(r['http_on']) / last(r['http_off']):.3f}")
except (OSError, ValueError, KeyError, IndexError, ZeroDivisionError):
    pass
PY
