#!/usr/bin/env bash
# Builds the kernel test suite for aarch64 and runs it under qemu-user twice:
#   -cpu cortex-a53  (ARMv8.0, no dot product: a Pi 3/4 stand-in)  -> must select `neon`
#   -cpu cortex-a76  (ARMv8.2 with dotprod: a Pi 5 / RK3588)        -> must select `dotprod`
# The same tests run natively; here sizes and case counts are trimmed because emulation is
# 10-50x slower.
#
# Usage: cross/test-aarch64.sh [extra cargo test args]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
# shellcheck source=cross/env.sh
source "$here/env.sh"

target=aarch64-unknown-linux-gnu
echo "== building the kernel tests for $target with $($SPILLWAY_CROSS_CARGO --version)"
# --no-run prints the test binaries; collect them from the JSON messages.
mapfile -t bins < <("$SPILLWAY_CROSS_CARGO" test --release --locked --target "$target" \
    -p spillway-kernels --no-run --message-format=json "$@" 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])
')
if [ "${#bins[@]}" -eq 0 ]; then
    # Show the build errors.
    "$SPILLWAY_CROSS_CARGO" test --release --locked --target "$target" -p spillway-kernels --no-run "$@"
    echo "no test binaries were built" >&2
    exit 1
fi

export PROPTEST_CASES="${PROPTEST_CASES:-48}"
# The fixtures are read relative to the crate directory, as cargo would run the tests.
cd kernels
status=0
for cpu in cortex-a53:neon cortex-a76:dotprod; do
    name="${cpu%%:*}"
    expect="${cpu##*:}"
    echo "== qemu-aarch64 -cpu $name (expecting the $expect path)"
    for bin in "${bins[@]}"; do
        echo "-- $(basename "$bin")"
        if ! SPILLWAY_EXPECT_PATH="$expect" qemu-aarch64 -cpu "$name" "$bin" --test-threads 2; then
            echo "FAILED: $(basename "$bin") under -cpu $name" >&2
            status=1
        fi
    done
done
exit $status
