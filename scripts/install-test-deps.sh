#!/usr/bin/env bash
# Tools the integration tests need beyond the Rust toolchain, installed
# from the distribution's packages when missing. Idempotent: a machine
# that has them already is left alone. Needs root (apt-get).
#
#   faketime         libfaketime and its launcher: tests/chaos.rs runs a node
#                    whose clock is a day ahead (LD_PRELOAD of libfaketime).
#   python3-seccomp  tests/deploy.rs runs nodes under the systemd unit's
#                    seccomp filters (libseccomp, for Debian's /usr/bin/python3).
#   systemd          systemd-analyze verify/security/syscall-filter (tests/deploy.rs).
#   ShellCheck       (package shellcheck) tests/deploy.rs lints deploy/deploy-fleet.sh.
#   setpriv          (package util-linux) tests/admin_socket.rs runs the CLI as
#                    another user and group.
#   chromium         headless browser: tests/status_page.rs loads the admin
#                    API's status page and checks the rendered text.
#   dpkg-deb         (package dpkg) tests/package.rs inspects the Debian package.
#   cargo-deb        (from crates.io, not apt) tests/package.rs builds the package
#                    with it: installed by scripts/build-deb.sh, which pins its version.
set -euo pipefail

"$(dirname "$0")/build-deb.sh" --install-tools

missing=()
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
/usr/bin/python3 -c 'import seccomp' >/dev/null 2>&1 || missing+=(python3-seccomp)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)

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
for tool in faketime shellcheck systemd-analyze setpriv chromium dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "install-test-deps: $tool still missing after apt-get install" >&2
        exit 1
    }
done
/usr/bin/python3 -c 'import seccomp' || {
    echo "install-test-deps: python3-seccomp still missing after apt-get install" >&2
    exit 1
}
