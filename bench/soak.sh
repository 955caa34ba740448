#!/usr/bin/env bash
# Soak: 3 fleetsync nodes on 127.0.0.1 under seeded churn, printing RSS,
# index size and versions size per node every minute and a verdict line.
#   bench/soak.sh                       30 minutes (what docs/benchmarks.md records)
#   bench/soak.sh --duration 2m         a short run
# Extra arguments go to bench/soak.py (--rate, --seed, --files, --max-size,
# --every, --tolerance, --keep). FLEETSYNC_SOAK_BIN=PATH skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${FLEETSYNC_SOAK_BIN:-}
if [ -z "$bin" ]; then
  target_dir=${CARGO_TARGET_DIR:-$PWD/target}
  echo "== building fleetsync (release)" >&2
  cargo build --release -p fleetsync --bin fleetsync >&2
  bin="$target_dir/release/fleetsync"
fi
exec python3 bench/soak.py --fleetsync "$bin" "$@"
