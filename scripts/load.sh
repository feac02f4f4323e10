#!/usr/bin/env bash
# Load and soak of POST /classify on loopback with oha (crates.io, installed into tools/):
#   scripts/load.sh [SECONDS] [CLIENTS]     default 60 s, 64 clients
# Builds the release binary, serves the bundled flowers102@production model from a fresh copy of
# the registry, warms it up, then runs oha against /classify with a real photo. Prints oha's
# summary, the status-code counts, and the server's resident memory before and after (VmRSS,
# sampled every 5 s during the run). Fails when any answer is neither 200 nor an intended 429,
# or when resident memory grew by 10 % or more over the run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
secs="${1:-60}"
clients="${2:-64}"

bash scripts/setup.sh
# shellcheck source=scripts/oha.sh
source scripts/oha.sh
ensure_oha
scripts/env.sh cargo build --release --quiet

work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cp -r registry "$work/registry"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
PETAL__REGISTRY__PATH="$work/registry" PETAL__JOBS__WORK_DIR="$work/work" \
  scripts/env.sh target/release/petal serve --port "$port" --log-format json > "$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:$port/readyz" > /dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$port/readyz" > /dev/null || { cat "$work/server.log"; exit 1; }
image="$(ls tests/fixtures/flowers102/*/*.jpg | head -1)"
rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }

# Warm-up (allocator pools, ort arenas, connection handling) before the first measurement.
tools/bin/oha -z 10s -c "$clients" --no-tui -m POST -T image/jpeg -D "$image" \
  "http://127.0.0.1:$port/classify" > /dev/null
before="$(rss)"
( while kill -0 "$pid" 2>/dev/null; do echo "$(date +%s) $(rss)"; sleep 5; done ) > "$work/rss.txt" &
sampler=$!
tools/bin/oha -z "${secs}s" -w -c "$clients" --no-tui --output-format json -m POST -T image/jpeg -D "$image" \
  "http://127.0.0.1:$port/classify" > "$work/oha.json"
after="$(rss)"
kill "$sampler" 2>/dev/null || true
python3 - "$work/oha.json" "$before" "$after" "$work/rss.txt" "$secs" "$clients" <<'PY'
import json, sys
report, before, after, samples, secs, clients = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
r = json.load(open(report))
s, p = r["summary"], r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
errors = r.get("errorDistribution", {})
trace = [(int(t), int(k)) for t, k in (l.split() for l in open(samples) if len(l.split()) == 2)]
peak = max([k for _, k in trace] or [after])
print(f"{clients} clients, {secs} s: {s['requestsPerSec']:.1f} req/s, success rate {s['successRate']:.4f}")
print(f"latency p50 {p['p50']*1000:.1f} ms, p99 {p['p99']*1000:.1f} ms, max {s['slowest']*1000:.1f} ms")
print(f"status codes {codes}; connection errors {errors}")
if trace:
    t0, step = trace[0][0], max(5, int(secs) // 10)
    marks, due = [], 0
    for t, k in trace:
        if t - t0 >= due:
            marks.append(f"{t - t0}s {k/1024:.0f}")
            due += step
    print("VmRSS MiB over the run: " + ", ".join(marks))
growth = (after - before) / before
print(f"VmRSS before {before/1024:.1f} MiB, after {after/1024:.1f} MiB, peak {peak/1024:.1f} MiB: growth {growth*100:+.1f} %")
bad = {c: n for c, n in codes.items() if c not in ("200", "429")}
ok = not bad and not errors and growth < 0.10
print("PASS" if ok else f"FAIL: unexpected codes {bad}, errors {errors}, growth {growth*100:.1f} %")
sys.exit(0 if ok else 1)
PY
