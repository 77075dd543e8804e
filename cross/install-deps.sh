#!/usr/bin/env bash
# Installs the aarch64 cross toolchain, qemu-user and what the tests and the .deb packages
# need on Debian 12 (run as root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
dpkg --add-architecture arm64
apt-get update -q
apt-get install -y -q --no-install-recommends \
    rustc-web cargo-web libstd-rust-web-dev:arm64 rust-web-clippy \
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user python3 \
    mosquitto mosquitto-clients openssl systemd binutils dpkg-dev
