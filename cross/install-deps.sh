#!/usr/bin/env bash
# Installs the aarch64 cross toolchain and qemu-user on Debian 12 (run as root).
set -euo pipefail
dpkg --add-architecture arm64
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu qemu-user
