#!/usr/bin/env bash
# Build the Debian package of fleetsync with cargo-deb:
#   scripts/build-deb.sh                      release build, then dist/fleetsync_<version>-1_<arch>.deb
#   scripts/build-deb.sh --profile P          build with cargo profile P instead
#   scripts/build-deb.sh --no-build --profile dev --output DIR
#                                             package the binary already built (the test does this)
#   scripts/build-deb.sh --install-tools      only install cargo-deb (scripts/install-test-deps.sh)
# Arguments after -- go to `cargo deb` (e.g. -- --fast).
# It installs cargo-deb (the pinned version) on first use, writes the man
# page, the completions (bash, zsh, fish), the unit with /usr/bin paths and
# the maintainer scripts into dist/debian/ (node/Cargo.toml's
# [package.metadata.deb] points there), then runs `cargo deb --no-build`.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
profile=release
build=1
tools_only=0
output=dist
deb_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --profile) profile=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --output) output=$2; shift 2 ;;
        --install-tools) tools_only=1; shift ;;
        --) shift; deb_args=("$@"); break ;;
        *) echo "usage: $0 [--profile P] [--no-build] [--output DIR] [--install-tools] [-- CARGO-DEB-ARGS]" >&2; exit 2 ;;
    esac
done

if [ "$(cargo deb --version 2>/dev/null || true)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    echo "build-deb: installing cargo-deb $CARGO_DEB_VERSION" >&2
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked || {
        echo "build-deb: could not install cargo-deb $CARGO_DEB_VERSION (needs crates.io);" \
            "install it by hand: cargo install cargo-deb --version $CARGO_DEB_VERSION --locked" >&2
        exit 1
    }
fi
[ $tools_only -eq 0 ] || exit 0

# The target dir as cargo resolves it (CARGO_TARGET_DIR, .cargo/config.toml).
target=$(cargo metadata --no-deps --format-version 1 |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
case $profile in
    dev) profile_dir=debug ;;
    *) profile_dir=$profile ;;
esac
bin=$target/$profile_dir/fleetsync

if [ $build -eq 1 ]; then
    cargo build --locked --profile "$profile" -p fleetsync --bin fleetsync
fi
if [ ! -x "$bin" ]; then
    echo "build-deb: no binary at $bin: build it (cargo build --profile $profile -p fleetsync) or drop --no-build" >&2
    exit 1
fi

staging=dist/debian
rm -rf "$staging"
mkdir -p "$staging"
"$bin" man | gzip -9n > "$staging/fleetsync.1.gz"
"$bin" completions bash > "$staging/fleetsync.bash"
"$bin" completions zsh > "$staging/_fleetsync"
"$bin" completions fish > "$staging/fleetsync.fish"
cp deploy/debian/postinst deploy/debian/postrm deploy/debian/fleetsync.sysusers "$staging/"
# One unit for both installs: deploy/fleetsync.service names the hand-installed
# /usr/local/bin/fleetsync; the package's binary is /usr/bin/fleetsync.
sed 's#/usr/local/bin/fleetsync#/usr/bin/fleetsync#g' deploy/fleetsync.service > "$staging/fleetsync.service"
grep -q '^ExecStart=/usr/bin/fleetsync ' "$staging/fleetsync.service" || {
    echo "build-deb: deploy/fleetsync.service has no ExecStart=/usr/local/bin/fleetsync line to adapt" >&2
    exit 1
}

mkdir -p "$output"
# --strip: the profiles keep line tables for backtraces (release: ~170 MB of
# them); the package ships the stripped binary (~25 MB).
# ${arr[@]+...}: an empty array is "unbound" to bash < 4.4 under set -u.
cargo deb -p fleetsync --no-build --profile "$profile" --output "$output" --strip \
    ${deb_args[@]+"${deb_args[@]}"}
