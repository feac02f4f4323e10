#!/usr/bin/env bash
# petal's POST /classify against two peer servers serving THE SAME ONNX FILE on this machine, in one run:
#   scripts/bench_peers.sh [SECONDS]      default 15 s a measurement
# The model is flowers102@production from ./registry (its model.onnx, checked against the manifest's
# sha256). The servers, one at a time (nothing else of the run is up while one is measured):
#   - python session.run: onnxruntime's InferenceSession on the preprocessed image, 1 and 32 threads
#     calling one session (scripts/peers/bench_session.py); the raw reference, no HTTP, no decoding;
#   - petal: target/release/petal serve, POST /classify?model=flowers102 with the raw JPEG;
#   - TorchServe 0.12.0: a BaseHandler subclass running the ONNX file with onnxruntime, archived with
#     torch-model-archiver (scripts/peers/ts_handler.py), POST /predictions/flowers102 with the JPEG;
#   - KServe 0.21.0: a kserve.Model with onnxruntime behind kserve.ModelServer
#     (scripts/peers/kserve_server.py), POST /v1/models/flowers102:predict, v1 JSON with base64.
# The peers decode and transform with PIL + numpy (scripts/peers/peer_transform.py). Load: oha
# (tools/, as scripts/load.sh), a 5 s warm-up at 32 clients, then SECONDS at 1 client and SECONDS at
# 32, keep-alive. Every answer must be 200 and every server's top-1 class the same. Prints the machine,
# the versions and a table (images/s, p50, p99 at 1 and 32 clients) with petal's ratios to the others.
# Environment:
#   PEERS_JSON=FILE     also write the results as JSON to FILE
#   PEERS_IMAGE2=FILE   a second (e.g. larger) JPEG, measured the same way after the first
#   PETAL_BIN=FILE      bench this petal binary instead of building target/release/petal
# The peers live in their own venv, target/peers/venv (not the project's .venv), made on first use
# (torch 2.11.0, which TorchServe's handler modules import, is a ~2.7 GB download the first time).
set -euo pipefail
# Paths given by the caller, taken relative to where it was called from.
image2="${PEERS_IMAGE2:+$(realpath "$PEERS_IMAGE2")}"
export PEERS_JSON="${PEERS_JSON:+$(realpath -m "$PEERS_JSON")}"
petal_bin="${PETAL_BIN:+$(realpath "$PETAL_BIN")}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
secs="${1:-15}"
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || { echo "usage: scripts/bench_peers.sh [SECONDS]" >&2; exit 2; }
CLIENTS=32
WARMUP_S=5
MODEL=flowers102
ALIAS=production
TORCHSERVE_VERSION=0.12.0
KSERVE_VERSION=0.21.0
ORT_VERSION=1.31.1    # scripts/requirements.txt's, which petal loads too
TORCH_VERSION=2.11.0  # the project's; ts.torch_handler and ts.protocol import torch
PILLOW_VERSION=12.3.0 # kserve 0.21.0 needs pillow>=12.3.0 (the project's .venv has 12.0.0)
NUMPY_VERSION=2.3.5
venv="$root/target/peers/venv"
peers="$root/scripts/peers"

bash scripts/setup.sh
# shellcheck source=scripts/oha.sh
source scripts/oha.sh
ensure_oha
oha="$root/tools/bin/oha"
if [ -n "$petal_bin" ]; then
  petal_src="$petal_bin"
else
  scripts/env.sh cargo build --release --quiet
  petal_src="$root/target/release/petal"
fi

# --- the peers' venv ---------------------------------------------------------------------------------
want="torchserve==$TORCHSERVE_VERSION torch-model-archiver==$TORCHSERVE_VERSION kserve==$KSERVE_VERSION"
want="$want onnxruntime==$ORT_VERSION torch==$TORCH_VERSION pillow==$PILLOW_VERSION numpy==$NUMPY_VERSION"
if ! [ -x "$venv/bin/python" ] || [ "$(cat "$venv/.peers-stamp" 2>/dev/null)" != "$want" ]; then
  echo "creating/updating the peers' venv in target/peers/venv ($want)"
  mkdir -p "$(dirname "$venv")"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip > /dev/null
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet $want
  printf '%s' "$want" > "$venv/.peers-stamp"
fi
py="$venv/bin/python"
tools() { "$py" "$peers/tools.py" "$@"; }

# --- one work folder; every server in its own process group, all of them ended at exit -------------
work="$(mktemp -d)"
pgids=()
ts_dir="$work/torchserve"
group_alive() { ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'; }
stop_group() { # pgid: TERM, then KILL whatever is left of the group after 10 s
  local g="$1"
  kill -TERM -- "-$g" 2>/dev/null || true
  for _ in $(seq 1 50); do
    group_alive "$g" || break
    sleep 0.2
  done
  kill -KILL -- "-$g" 2>/dev/null || true
  wait "$g" 2>/dev/null || true
}
stop_torchserve() {
  if [ -f "$ts_dir/tmp/.model_server.pid" ]; then
    (cd "$ts_dir" && TMPDIR="$ts_dir/tmp" "$venv/bin/torchserve" --stop > /dev/null 2>&1) || true
  fi
}
cleanup() {
  local status=$? g
  stop_torchserve
  for g in "${pgids[@]}"; do stop_group "$g"; done
  if [ "$status" -eq 0 ]; then
    rm -rf "$work"
  else
    echo "failed; the servers' logs and oha's reports are kept in $work" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_ports() { # N distinct ports free on 127.0.0.1 now, one a line
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))' "$1"
}
wait_for() { # seconds log-file command...: until the command succeeds
  local limit="$1" log="$2"; shift 2
  local end=$((SECONDS + limit))
  until "$@" > /dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then
      echo "not ready after ${limit} s: $*; its log:" >&2
      tail -50 "$log" >&2
      exit 1
    fi
    sleep 0.5
  done
}

# --- the model, the images, the facts ---------------------------------------------------------------
resolved="$(tools resolve registry "$MODEL" "$ALIAS" "$work/labels.json")"
read -r version sha onnx <<< "$resolved"
jpgs=(tests/fixtures/flowers102/*/*.jpg) # the first, as load.sh's `ls … | head -1`
images=("${jpgs[0]}")
if [ -n "$image2" ]; then images+=("$image2"); fi
mkdir -p "$work/res" "$work/probe"
cp "$petal_src" "$work/petal" # a rebuild during the run does not swap the binary under the server
# shellcheck disable=SC2016
ort_petal="$(scripts/env.sh sh -c 'basename "$ORT_DYLIB_PATH"')"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || commit="$commit + uncommitted changes"
meta=(
  "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" "commit=$commit"
  "nproc=$(nproc)" "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  "seconds=$secs" "warmup_s=$WARMUP_S" "clients=$CLIENTS" "model=$MODEL@$ALIAS (version $version, $onnx)"
  "sha256=$sha" "version.petal=$("$work/petal" --version | awk '{print $2}') (onnxruntime ${ort_petal##*.so.})"
)
mapfile -t -O "${#meta[@]}" meta < <("$py" - <<'PY'
import platform
from importlib.metadata import version
for label, dist in (("TorchServe", "torchserve"), ("torch-model-archiver", "torch-model-archiver"),
                    ("KServe", "kserve"), ("onnxruntime (peers)", "onnxruntime"), ("torch (peers)", "torch"),
                    ("pillow (peers)", "pillow"), ("numpy (peers)", "numpy"), ("fastapi (KServe's)", "fastapi"),
                    ("uvicorn (KServe's)", "uvicorn")):
    print(f"version.{label}={version(dist)}")
print(f"version.python (peers)={platform.python_version()}")
PY
)
meta+=(
  "version.java=$(java -version 2>&1 | head -1 | sed 's/.*version "\([^"]*\)".*/\1/')"
  "version.oha=$("$oha" --version | awk '{print $2}')"
)
for image in "${images[@]}"; do meta+=("image=$image"); done
tools meta "$work/meta.json" "${meta[@]}"
tools header "$work/meta.json"
echo

# Agreement: each server's top-1 class for image n against session.run's.
check_top1() { # n label top1-line
  local want_line
  want_line="$(tools top1 session "$work/probe/$1.session.json")"
  if [ "$3" != "$want_line" ]; then
    echo "$2 answers top-1 '$3' for ${images[$1]}; session.run says '$want_line'" >&2
    exit 1
  fi
}
load() { # n name label url content-type body-file probe-kind [metrics-url]: probe, warm up, 1 client, 32 clients
  local n="$1" name="$2" label="$3" url="$4" type="$5" body="$6" kind="$7" metrics="${8:-}" top c
  curl -fsS -X POST -H "Content-Type: $type" --data-binary "@$body" "$url" -o "$work/probe/$n.$name.json"
  top="$(tools top1 "$kind" "$work/probe/$n.$name.json")"
  check_top1 "$n" "$label" "$top"
  # -w everywhere: oha waits for its requests in flight at the deadline, so that none of them is
  # still queued in the server when the next measurement starts.
  "$oha" -z "${WARMUP_S}s" -w -c "$CLIENTS" --no-tui -m POST -T "$type" -D "$body" "$url" > /dev/null
  for c in one many; do
    [ -z "$metrics" ] || curl -fsS "$metrics" > "$work/res/$n.$name.$c.metrics0"
    "$oha" -z "${secs}s" -w -c "$([ "$c" = one ] && echo 1 || echo "$CLIENTS")" --no-tui --output-format json \
      -m POST -T "$type" -D "$body" "$url" > "$work/res/$n.$name.$c.oha.json"
    [ -z "$metrics" ] || curl -fsS "$metrics" > "$work/res/$n.$name.$c.metrics1"
  done
  tools record "$work/res/$n.$name.json" "$label" "$top" \
    "$work/res/$n.$name.one.oha.json" "$work/res/$n.$name.many.oha.json"
  if [ -n "$metrics" ]; then # where the server's time went (its own histograms)
    tools stages "$label" 1 "$work/res/$n.$name.one.metrics0" "$work/res/$n.$name.one.metrics1" "$work/res/$n.$name.one.oha.json"
    tools stages "$label" "$CLIENTS" "$work/res/$n.$name.many.metrics0" "$work/res/$n.$name.many.metrics1" \
      "$work/res/$n.$name.many.oha.json"
  fi
}

# --- 1. the raw reference: python session.run ---------------------------------------------------------
echo "python session.run (1 and $CLIENTS threads, ${secs} s each after 2 s of warm-up)"
for n in "${!images[@]}"; do
  "$py" "$peers/bench_session.py" "$onnx" "${images[$n]}" "$work/labels.json" "$secs" "$CLIENTS" \
    > "$work/probe/$n.session.json"
  tools record-session "$work/res/$n.session.json" "python session.run" "$work/probe/$n.session.json"
done

# --- 2. petal ------------------------------------------------------------------------------------------
echo "petal /classify"
cp -r registry "$work/registry"
port="$(free_ports 1)"
(
  export PETAL__REGISTRY__PATH="$work/registry" PETAL__JOBS__WORK_DIR="$work/petal-jobs"
  exec setsid scripts/env.sh "$work/petal" serve --port "$port" --log-format json
) > "$work/petal.log" 2>&1 &
pgids+=("$!")
wait_for 120 "$work/petal.log" curl -fs "http://127.0.0.1:$port/readyz"
# The same bytes: petal's ETag for the served version's ONNX file is its sha256.
etag="$(curl -fsS -o /dev/null -D - "http://127.0.0.1:$port/models/$MODEL/versions/$version/onnx" \
  | tr -d '\r"' | awk 'tolower($1) == "etag:" {print $2}')"
[ "$etag" = "$sha" ] || { echo "petal serves ONNX $etag, not $sha" >&2; exit 1; }
for n in "${!images[@]}"; do
  load "$n" petal "petal /classify" "http://127.0.0.1:$port/classify?model=$MODEL" image/jpeg "${images[$n]}" petal \
    "http://127.0.0.1:$port/metrics"
done
"$py" -c 'import json,sys; r=json.load(open(sys.argv[1])); assert (r["model"], r["version"]) == (sys.argv[2], int(sys.argv[3])), r' \
  "$work/probe/0.petal.json" "$MODEL" "$version"
stop_group "${pgids[-1]}"

# --- 3. TorchServe ---------------------------------------------------------------------------------------
echo "TorchServe $TORCHSERVE_VERSION"
mkdir -p "$ts_dir/model-store" "$ts_dir/tmp" "$ts_dir/logs"
"$venv/bin/torch-model-archiver" --model-name "$MODEL" --version "$version" --serialized-file "$onnx" \
  --handler "$peers/ts_handler.py" --extra-files "$peers/peer_transform.py,$work/labels.json" \
  --export-path "$ts_dir/model-store"
mar_sha="$(tools mar-sha "$ts_dir/model-store/$MODEL.mar" "$(basename "$onnx")")"
[ "$mar_sha" = "$sha" ] || { echo "the .mar holds ONNX $mar_sha, not $sha" >&2; exit 1; }
{ read -r ts_inf; read -r ts_mgmt; read -r ts_metrics; } < <(free_ports 3)
cat > "$ts_dir/config.properties" <<EOF
inference_address=http://127.0.0.1:$ts_inf
management_address=http://127.0.0.1:$ts_mgmt
metrics_address=http://127.0.0.1:$ts_metrics
model_store=$ts_dir/model-store
EOF
(
  cd "$ts_dir"
  # Its pid file goes to TMPDIR, its logs to LOG_LOCATION: all inside the work folder.
  export TMPDIR="$ts_dir/tmp" TEMP="$ts_dir/tmp" LOG_LOCATION="$ts_dir/logs" METRICS_LOCATION="$ts_dir/logs"
  exec setsid "$venv/bin/torchserve" --start --foreground --ncs --disable-token-auth \
    --ts-config "$ts_dir/config.properties" --model-store "$ts_dir/model-store" --models "$MODEL=$MODEL.mar"
) > "$ts_dir/stdout.log" 2>&1 &
pgids+=("$!")
ts_ready() { # every worker of the model READY
  curl -fs "http://127.0.0.1:$ts_mgmt/models/$MODEL" | "$py" -c \
    'import json,sys; w=json.load(sys.stdin)[0]["workers"]; sys.exit(not w or any(x["status"] != "READY" for x in w))'
}
wait_for 300 "$ts_dir/stdout.log" ts_ready
ts_workers="$(curl -fs "http://127.0.0.1:$ts_mgmt/models/$MODEL" | "$py" -c 'import json,sys; print(len(json.load(sys.stdin)[0]["workers"]))')"
echo "  $ts_workers workers (default_workers_per_model: TorchServe's default)"
for n in "${!images[@]}"; do
  load "$n" torchserve "TorchServe $TORCHSERVE_VERSION" "http://127.0.0.1:$ts_inf/predictions/$MODEL" \
    image/jpeg "${images[$n]}" torchserve
done
stop_torchserve
stop_group "${pgids[-1]}"

# --- 4. KServe -------------------------------------------------------------------------------------------
echo "KServe $KSERVE_VERSION"
{ read -r ks_http; read -r ks_grpc; } < <(free_ports 2)
(
  exec setsid "$py" "$peers/kserve_server.py" --model_name "$MODEL" --onnx "$onnx" --labels "$work/labels.json" \
    --http_port "$ks_http" --grpc_port "$ks_grpc"
) > "$work/kserve.log" 2>&1 &
pgids+=("$!")
ks_ready() { curl -fs "http://127.0.0.1:$ks_http/v1/models/$MODEL" | grep -q '"ready":true'; }
wait_for 120 "$work/kserve.log" ks_ready
for n in "${!images[@]}"; do
  tools kserve-body "${images[$n]}" "$work/kserve.$n.json"
  load "$n" kserve "KServe $KSERVE_VERSION" "http://127.0.0.1:$ks_http/v1/models/$MODEL:predict" \
    application/json "$work/kserve.$n.json" kserve
done
stop_group "${pgids[-1]}"

echo
tools report "$work/meta.json" "$work/res"
