#!/usr/bin/env bash
# Tools the integration tests need beyond the Rust toolchain, installed
# from the distribution's packages when missing. Idempotent: a machine
# that has them already is left alone. Needs root (apt-get).
#
#   faketime  libfaketime and its launcher: tests/chaos.rs runs a node
#             whose clock is a day ahead (LD_PRELOAD of libfaketime).
set -euo pipefail

missing=()
command -v faketime >/dev/null 2>&1 || missing+=(faketime)

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-test-deps: nothing to install"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: need root to install: ${missing[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get; install by hand: ${missing[*]}" >&2
    exit 1
fi

echo "install-test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet; a stale one may point at
# versions the mirror no longer has: refresh once, then install.
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
command -v faketime >/dev/null 2>&1 || {
    echo "install-test-deps: faketime still missing after apt-get install" >&2
    exit 1
}
