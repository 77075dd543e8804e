#!/usr/bin/env bash
# Builds the aarch64 test suites and runs them under qemu-user twice:
#   -cpu cortex-a53  (ARMv8.0, no dot product: a Pi 3/4 stand-in)  -> must select `neon`
#   -cpu cortex-a76  (ARMv8.2 with dotprod: a Pi 5 / RK3588)        -> must select `dotprod`
# The suites:
#   - spillway-kernels: every test (SIMD paths against the scalar reference, dispatch);
#   - spillway: the engine tests, which need no other process: tests/engine.rs (generation
#     on the fixture models), tests/golden.rs (llama.cpp's logits and greedy continuations)
#     and tests/no_alloc.rs (the token loop allocates nothing). The engine picks the best
#     kernel path itself, so each CPU runs the forward pass on its own path.
#     SPILLWAY_QEMU_LIB_TESTS=1 adds the lib's unit tests: they pass under qemu and run in a
#     second, but they are target-independent logic that runs natively, and building them
#     costs a second optimised compile of the whole crate (5 CPU-minutes), so CI skips them.
# None of these run the `spillway` binary (the end-to-end tests in tests/ do, natively).
# The same tests run natively; here case counts are trimmed because emulation is 10-50x
# slower. Built with the `ci` profile (Cargo.toml): release code without the release
# profile's whole-program link of every test binary.
#
# Usage: cross/test-aarch64.sh [extra cargo test args, for both crates]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
# shellcheck source=cross/env.sh
source "$here/env.sh"

target=aarch64-unknown-linux-gnu
profile=ci

# Builds the tests that cargo selects with "$@" and prints "crate-dir<TAB>test-binary" for
# each: cargo runs a test binary from its crate's directory, and so does this script.
build_tests() {
    "$SPILLWAY_CROSS_CARGO" test --profile "$profile" --locked --target "$target" --no-run \
        --message-format=json "$@" 2>/dev/null |
        python3 -c '
import json, os, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(os.path.dirname(m["manifest_path"]) + "\t" + m["executable"])
'
}

# The same build, showing the errors.
show_build_errors() {
    "$SPILLWAY_CROSS_CARGO" test --profile "$profile" --locked --target "$target" --no-run "$@" || true
    echo "no test binaries were built" >&2
    exit 1
}

echo "== building the kernel and engine tests for $target with $($SPILLWAY_CROSS_CARGO --version)"
start=$SECONDS
mapfile -t kernel_tests < <(build_tests -p spillway-kernels "$@")
[ "${#kernel_tests[@]}" -gt 0 ] || show_build_errors -p spillway-kernels "$@"
spillway_args=(-p spillway --test engine --test golden --test no_alloc)
suites="engine, golden, no_alloc"
if [ "${SPILLWAY_QEMU_LIB_TESTS:-0}" = 1 ]; then
    spillway_args+=(--lib)
    suites="lib, $suites"
fi
spillway_args+=("$@")
mapfile -t spillway_tests < <(build_tests "${spillway_args[@]}")
[ "${#spillway_tests[@]}" -ge 3 ] || show_build_errors "${spillway_args[@]}"
echo "built in $((SECONDS - start)) s"

export PROPTEST_CASES="${PROPTEST_CASES:-48}"
status=0
timings=()
elapsed=0
# Runs the "dir<TAB>binary" entries given under qemu -cpu $1, asserting kernel path $2; sets
# `elapsed` to the seconds taken and `status` to 1 on a failure.
run_tests() {
    local cpu="$1" expect="$2" entry dir bin threads t0=$SECONDS t1
    shift 2
    for entry in "$@"; do
        dir="${entry%%$'\t'*}"
        bin="${entry#*$'\t'}"
        echo "-- $(basename "$bin")"
        t1=$SECONDS
        # no_alloc counts every allocation in the process, and with more than one test
        # thread libtest's main thread allocates to print "has been running for over 60
        # seconds", which an emulated run reaches: one thread (it is a single test anyway).
        threads=2
        case "$(basename "$bin")" in no_alloc-*) threads=1 ;; esac
        # No -L /usr/aarch64-linux-gnu: that loader hangs under qemu-user (cross/README.md).
        if ! (cd "$dir" && SPILLWAY_EXPECT_PATH="$expect" qemu-aarch64 -cpu "$cpu" "$bin" --test-threads "$threads"); then
            echo "FAILED: $(basename "$bin") under -cpu $cpu" >&2
            status=1
        fi
        echo "-- $(basename "$bin"): $((SECONDS - t1)) s under -cpu $cpu"
    done
    elapsed=$((SECONDS - t0))
}

for cpu in cortex-a53:neon cortex-a76:dotprod; do
    name="${cpu%%:*}"
    expect="${cpu##*:}"
    echo "== qemu-aarch64 -cpu $name (expecting the $expect path)"
    run_tests "$name" "$expect" "${kernel_tests[@]}"
    k=$elapsed
    run_tests "$name" "$expect" "${spillway_tests[@]}"
    timings+=("$(printf '%-11s kernels %4d s, spillway (%s) %4d s' "$name" "$k" "$suites" "$elapsed")")
done
echo "== time under qemu"
printf '%s\n' "${timings[@]}"
exit $status
