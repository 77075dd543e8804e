# shellcheck shell=bash
# Environment for building and running aarch64 artefacts on an x86_64 Debian 12 host with
# Debian's rustc-web/cargo-web 1.96 and qemu-user (see cross/README.md). Source it.
#
# rustup cannot fetch other targets here; Debian ships a Rust toolchain with an arm64 std.
# qemu is run WITHOUT `-L /usr/aarch64-linux-gnu`: that cross loader/libc hangs in the first
# pthread_create under qemu-user. Without -L, qemu uses the multiarch libc6:arm64 at
# /lib/ld-linux-aarch64.so.1, which works.

export SPILLWAY_CROSS_CARGO=/usr/bin/cargo
export RUSTC=/usr/bin/rustc
export RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# Keep cross artefacts apart from the native ones (different rustc, different cache).
export CARGO_TARGET_DIR="${SPILLWAY_CROSS_TARGET_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/cross}"

# The directory cargo puts a profile's artefacts in: `dev` (and `test`) build into `debug`,
# every other profile into its own name.
profile_dir() {
    case "$1" in
    dev | test) echo debug ;;
    *) echo "$1" ;;
    esac
}
