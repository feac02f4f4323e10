#!/usr/bin/env bash
# The fine-tuning engine's GPU checks, in one command, on a host with an NVIDIA GPU and the torch
# 2.11.0 wheel (no Rust toolchain needed: carry target/release/petal and this repository).
#
#   scripts/gpu_train_check.sh DATA_DIR OUT_DIR
#
# DATA_DIR: Oxford Flowers 102 (jpg/, imagelabels.mat, setid.mat). Needs python3 with torch and
# torchvision (for the reference pipeline; set PETAL_TORCHVISION to a folder holding a `torchvision`
# package if the host's python has none, e.g. a copy of .venv/lib/python3.11/site-packages/torchvision).
# Writes OUT_DIR/{doctor.json, bench_train.{txt,json}, recipe_resnet50/, recipe.log, times.txt}.
set -euo pipefail
DATA=${1:?usage: gpu_train_check.sh DATA_DIR OUT_DIR}
OUT=${2:?usage: gpu_train_check.sh DATA_DIR OUT_DIR}
PETAL=${PETAL:-target/release/petal}
# Overridable for a dry run on CPU with tiny numbers (DEVICE=cpu IMAGES=32 STEPS=2 …).
DEVICE=${DEVICE:-cuda} IMAGES=${IMAGES:-6149} PIPELINE_IMAGES=${PIPELINE_IMAGES:-2000}
STEPS=${STEPS:-60} WARMUP=${WARMUP:-15} BATCH=${BATCH:-64} EPOCHS1=${EPOCHS1:-16} EPOCHS2=${EPOCHS2:-8}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ -n "${PETAL_TORCHVISION:-}" ]; then export PYTHONPATH="$PETAL_TORCHVISION${PYTHONPATH:+:$PYTHONPATH}"; fi
export PETAL_PYTHON=${PETAL_PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true
"$PETAL" doctor --json > "$OUT/doctor.json" || true

# 1. ResNet50 full fine-tuning: the reference stack vs petal, and the bare step, in one run.
"$PETAL" bench train --data "$DATA" --backbone resnet50 --batch "$BATCH" --images "$IMAGES" --pipeline-images "$PIPELINE_IMAGES" \
  --steps "$STEPS" --warmup "$WARMUP" --device "$DEVICE" --json > "$OUT/bench_train.json"
python3 - "$OUT/bench_train.json" > "$OUT/bench_train.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]; ref = r["reference"]
rows = [("pipeline one core", ref["pipeline_one_core"], r["petal_pipeline_one_core"]),
        ("pipeline all workers", ref.get("pipeline_loader"), r["petal_pipeline_all_threads"]),
        ("bare step", ref["bare_step"], r["petal_bare_step"]),
        ("end to end", ref["end_to_end"], r["petal_end_to_end"])]
for name, a, b in rows:
    print(f"{name:<22} reference {a:10.1f}  petal {b:10.1f}  ratio {b / a:6.2f}")
print(f"petal end-to-end / petal bare step {r['petal_end_to_end'] / r['petal_bare_step']:.2f}")
print(f"petal end-to-end / reference end-to-end {r['petal_end_to_end'] / ref['end_to_end']:.2f}")
PY

# 2. The whole reference recipe for ResNet50 (16 + 8 epochs, validation every epoch), timed.
#    Batch 64 (the reference used 16); random initial weights unless RESNET50_WEIGHTS names a file
#    (the speed does not depend on them).
start=$(date +%s.%N)
"$PETAL" finetune --data "$DATA" --backbone resnet50 --weights "${RESNET50_WEIGHTS:-scratch}" \
  --batch-size "$BATCH" --epochs1 "$EPOCHS1" --epochs2 "$EPOCHS2" --device "$DEVICE" --out "$OUT/recipe_resnet50" \
  > "$OUT/recipe.log" 2>&1
end=$(date +%s.%N)
echo "resnet50 reference recipe wall time: $(python3 -c "print(round($end - $start, 1))") s (process start to exit, dataset ingest included)" | tee "$OUT/times.txt"
cat "$OUT/bench_train.txt"
