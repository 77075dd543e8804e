#!/usr/bin/env bash
# Installs the Debian 12 packages the test suite, the aarch64 cross build and the .deb
# packages need, and only those that are missing (so a second run does nothing and needs no
# root). ./test.sh runs this first; run it by hand before cross/build-aarch64.sh or
# cross/package-deb.sh. Uses sudo when not run as root.
#
#     cross/install-deps.sh           # install what is missing
#     cross/install-deps.sh --check   # only list what is missing (exit 1 if anything is)
#
# This is the one list of the project's apt packages (.ci/run and ./test.sh use it).
set -euo pipefail

packages=(
    # Debian's Rust 1.96 with an arm64 std: the aarch64 cross build and its clippy
    # (rustup's toolchain has no aarch64 std here).
    rustc-web cargo-web libstd-rust-web-dev:arm64 rust-web-clippy
    # The aarch64 linker and libc, and qemu-user to run the aarch64 tests.
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
    # The native C toolchain: ring's C code; llama.cpp when the fixtures are regenerated.
    gcc g++ make
    # Python for the reference implementations (gguf-py, mistral-common, llama.cpp's
    # bindings), installed by scripts/python-env.sh into a virtual environment.
    python3 python3-venv
    # The end-to-end tests' broker (they start their own on a free port) and their TLS
    # certificates.
    mosquitto mosquitto-clients openssl
    # systemd-analyze and systemd-sysusers for systemd/check.sh (already there on a full
    # Debian 12, not in minimal containers).
    systemd
    # readelf, strip (binutils) and dpkg-shlibdeps (dpkg-dev) for the .deb packages
    # (cross/package-deb.sh, cross/check-deb.sh), which dpkg-deb builds.
    binutils dpkg-dev
)

check_only=0
case "${1:-}" in
    --check) check_only=1 ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

command -v dpkg-query >/dev/null || { echo "install-deps: not a Debian system (no dpkg-query)" >&2; exit 2; }

arm64_enabled() { dpkg --print-foreign-architectures | grep -qx arm64; }

missing=()
for p in "${packages[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
    [ "${status:0:2}" = "ii" ] || missing+=("$p")
done
need_arch=0
arm64_enabled || need_arch=1

if [ "${#missing[@]}" -eq 0 ] && [ "$need_arch" = 0 ]; then
    exit 0
fi
if [ "$check_only" = 1 ]; then
    [ "${#missing[@]}" -eq 0 ] || echo "missing Debian packages: ${missing[*]}"
    [ "$need_arch" = 0 ] || echo "dpkg has no arm64 architecture (dpkg --add-architecture arm64)"
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
        echo "install-deps: missing Debian packages: ${missing[*]}; run this as root (no sudo here)" >&2
        exit 2
    }
    sudo=(sudo)
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if [ "$need_arch" = 1 ]; then
    "${sudo[@]}" dpkg --add-architecture arm64
fi
"${sudo[@]}" apt-get update -q
[ "${#missing[@]}" -eq 0 ] ||
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
