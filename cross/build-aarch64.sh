#!/usr/bin/env bash
# Builds the release `spillway` binary for aarch64 with Debian's toolchain (cross/env.sh),
# prints its path and size, and runs `spillway --version` under qemu-aarch64 as a smoke test.
#
# Usage: cross/build-aarch64.sh [extra cargo build args]
# The binary: target/cross/aarch64-unknown-linux-gnu/release/spillway (what the arm64 .deb
# ships). SPILLWAY_PROFILE=<profile> builds another cargo profile, in
# target/cross/aarch64-unknown-linux-gnu/<profile>/: `ci`, for example, is the qemu tests'
# profile, the same code without fat LTO. Prerequisites: sudo cross/install-deps.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
# shellcheck source=cross/env.sh
source "$here/env.sh"

target=aarch64-unknown-linux-gnu
profile="${SPILLWAY_PROFILE:-release}"
echo "== building spillway ($profile profile) for $target with $("$SPILLWAY_CROSS_CARGO" --version)"
"$SPILLWAY_CROSS_CARGO" build --profile "$profile" --locked --target "$target" -p spillway --bin spillway "$@"

bin="$CARGO_TARGET_DIR/$target/$(profile_dir "$profile")/spillway"
[ -x "$bin" ] || {
    echo "no binary at $bin" >&2
    exit 1
}
size="$(stat -c %s "$bin")"
echo "$bin"
echo "size: $size bytes ($(numfmt --to=iec-i --suffix=B "$size"))"

# No -L /usr/aarch64-linux-gnu: that loader hangs under qemu-user (cross/README.md).
echo "== smoke test: qemu-aarch64 -cpu cortex-a76 spillway --version"
version="$(qemu-aarch64 -cpu cortex-a76 "$bin" --version)"
echo "$version"
case "$version" in
spillway\ *) ;;
*)
    echo "unexpected --version output: $version" >&2
    exit 1
    ;;
esac
