# shellcheck shell=bash
# Sourced by scripts/load.sh and scripts/bench_peers.sh: the load generator oha (crates.io),
# installed into tools/ once per version (a stamp file holds the version installed).
#   source scripts/oha.sh; ensure_oha    # then tools/bin/oha
OHA_VERSION=1.16.0

ensure_oha() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if ! [ -x "$root/tools/bin/oha" ] || [ "$(cat "$root/tools/.oha-stamp" 2>/dev/null)" != "$OHA_VERSION" ]; then
    echo "installing oha $OHA_VERSION into tools/ (a few minutes the first time)"
    cargo install --quiet --locked "oha@$OHA_VERSION" --root "$root/tools"
    printf '%s' "$OHA_VERSION" > "$root/tools/.oha-stamp"
  fi
}
