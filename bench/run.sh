#!/usr/bin/env bash
# Benchmark fleetsync against Syncthing and sendme on this machine.
#   bench/run.sh            full run (what docs/benchmarks.md records)
#   bench/run.sh --quick    small sizes, a smoke run
#   bench/run.sh --lan      (as root) only L1/L2: fan-out on tbf-shaped links in
#                           network namespaces (bench/lan.py); with --quick, small
# Extra arguments go to bench/bench.py (e.g. --tools fleetsync,syncthing).
# Installs what is missing: Debian's syncthing (apt) and sendme (cargo,
# into $FLEETSYNC_BENCH_TOOLS, default ~/.cache/fleetsync-bench-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

tools_dir=${FLEETSYNC_BENCH_TOOLS:-$HOME/.cache/fleetsync-bench-tools}
target_dir=${CARGO_TARGET_DIR:-$PWD/target}

echo "== building fleetsync (release)" >&2
cargo build --release -p fleetsync --bin fleetsync >&2

if ! command -v syncthing >/dev/null; then
  echo "== installing syncthing (Debian package)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y syncthing >&2; else sudo apt-get install -y syncthing >&2; fi
fi

if [ ! -x "$tools_dir/bin/sendme" ]; then
  echo "== installing sendme 0.37.1 (cargo; a few minutes, once)" >&2
  cargo install sendme --version 0.37.1 --locked --root "$tools_dir" >&2
fi

exec python3 bench/bench.py \
  --fleetsync "$target_dir/release/fleetsync" \
  --syncthing "$(command -v syncthing)" \
  --sendme "$tools_dir/bin/sendme" \
  "$@"
