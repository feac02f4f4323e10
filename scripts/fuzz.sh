#!/usr/bin/env bash
# Runs petal's fuzz targets under libFuzzer (cargo-fuzz, nightly Rust, AddressSanitizer):
#   scripts/fuzz.sh TARGET [SECONDS]     one target (archive, image, request, weights, manifest)
#   scripts/fuzz.sh all [SECONDS]        every target, one after the other
# SECONDS defaults to 600. The corpus grows in var/fuzz/corpus/TARGET (seeded from fuzz/seeds);
# a crash lands in fuzz/artifacts/TARGET/: copy it to fuzz/regressions/TARGET/, fix, and
# tests/robustness/fuzz_regressions.rs replays it forever after. Needs: rustup's nightly toolchain and
# cargo-fuzz (installed into tools/ on first use).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${1:?usage: scripts/fuzz.sh TARGET|all [SECONDS]}"
secs="${2:-600}"
targets=(archive image request weights manifest)
CARGO_FUZZ_VERSION=0.13.2

bash scripts/setup.sh
if ! [ -x tools/bin/cargo-fuzz ] || [ "$(cat tools/.cargo-fuzz-stamp 2>/dev/null)" != "$CARGO_FUZZ_VERSION" ]; then
  cargo install --quiet --locked "cargo-fuzz@$CARGO_FUZZ_VERSION" --root tools
  printf '%s' "$CARGO_FUZZ_VERSION" > tools/.cargo-fuzz-stamp
fi
torch_lib="$(echo "$root"/.venv/lib/python3*/site-packages/torch/lib)"

run() {
  local t="$1" corpus="$root/var/fuzz/corpus/$1"
  mkdir -p "$corpus"
  echo "== fuzzing $t for ${secs}s (corpus $corpus)"
  # The fuzz binaries link libtorch through torch-sys; at run time it is found in the venv.
  scripts/env.sh env LD_LIBRARY_PATH="$torch_lib" \
    cargo +nightly fuzz run -O --fuzz-dir fuzz "$t" "$corpus" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=20 -max_len=1048576 -print_final_stats=1
}

if [ "$target" = all ]; then
  for t in "${targets[@]}"; do run "$t"; done
else
  run "$target"
fi
