#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run is just this): formatting, clippy
# with warnings denied (x86_64 and aarch64), every native test (unit, property, golden,
# end-to-end), the systemd unit, the kernel and engine suites on aarch64 under qemu-user as a
# Cortex-A53 (NEON) and a Cortex-A76 (NEON + dot product), then the .deb packages of the
# binaries those tests built (checked, the amd64 one installed and purged: needs root or
# passwordless sudo, else skipped).
#
# Needs only Debian 12 with rustup's stable toolchain; installs the rest itself:
#   * the Debian packages of cross/install-deps.sh that are missing (through sudo when not
#     root): Debian's aarch64 Rust, the cross gcc, qemu-user, mosquitto, python3-venv, ...;
#   * rustfmt and clippy (rustup components);
#   * a Python virtual environment with gguf-py (scripts/python-env.sh), under
#     ~/.cache/spillway/venv; the tests run it as $SPILLWAY_PYTHON;
#   * the reference fixtures: $SPILLWAY_FIXTURES, else ../shared/fixtures beside the checkout
#     (CI's), else regenerated once into ~/.cache/spillway/fixtures-<version> from the
#     independent implementations (scripts/fixtures/: mistral-common, gguf-py, llama.cpp
#     built from llama-cpp-python's source; a long first run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

step() { printf '\n==== %s\n' "$*"; }

step "prerequisites"
cross/install-deps.sh
if command -v rustup >/dev/null; then
    rustup component add rustfmt clippy >/dev/null 2>&1 ||
        echo "test.sh: could not add rustup's rustfmt and clippy components" >&2
fi
missing=()
for tool in cargo /usr/bin/cargo /usr/bin/rustc qemu-aarch64 aarch64-linux-gnu-gcc mosquitto openssl \
    dpkg-deb readelf; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test.sh: missing after cross/install-deps.sh: ${missing[*]}" >&2
    exit 2
fi
SPILLWAY_PYTHON="$(scripts/python-env.sh)"
SPILLWAY_FIXTURES="$(scripts/fixtures/ensure.sh)"
export SPILLWAY_PYTHON SPILLWAY_FIXTURES
echo "python: $SPILLWAY_PYTHON"
echo "fixtures: $SPILLWAY_FIXTURES"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (x86_64, warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (broken intra-doc links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items --locked

step "cargo test (native)"
cargo test --workspace --locked

step "cargo clippy (aarch64, warnings denied)"
(
    # shellcheck source=cross/env.sh
    source cross/env.sh
    # Debian's cargo-clippy must come first on PATH: rustup's has no aarch64 std.
    PATH="/usr/bin:$PATH" /usr/bin/cargo clippy --locked --target aarch64-unknown-linux-gnu \
        -p spillway-kernels --all-targets -- -D warnings
)

if command -v systemd-analyze >/dev/null; then
    step "systemd unit (verify, sysusers, tmpfiles, Jetson drop-in, security exposure <= 1.5)"
    SPILLWAY_BIN="$PWD/target/debug/spillway" systemd/check.sh
else
    step "systemd unit: skipped (no systemd-analyze; apt-get install systemd)"
fi

step "kernel and engine tests on aarch64 under qemu (cortex-a53: neon, cortex-a76: dotprod)"
cross/test-aarch64.sh

# The packages carry the binaries the tests built: the native one (`test` profile, what the
# end-to-end tests ran) and the aarch64 one cargo built beside the engine tests (`ci`
# profile). Building the release profile here would compile everything twice more and end
# in two fat-LTO links, a quarter of an hour that tests nothing the packaging checks.
step "Debian packages (amd64, arm64): build, check, install and purge the amd64 one"
SPILLWAY_DEB_BIN_AMD64=target/debug/spillway \
    SPILLWAY_DEB_BIN_ARM64="$(source cross/env.sh && echo "$CARGO_TARGET_DIR")/aarch64-unknown-linux-gnu/ci/spillway" \
    cross/package-deb.sh all
cross/check-deb.sh all

step "all tests passed"
