# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables are for the scripts that source this
# What cross/package-deb.sh and cross/check-deb.sh share: the architectures asked for, the
# package's version and homepage, read from the workspace's Cargo.toml, and elf_machine. Source it from
# the repository's root with the scripts' arguments: sets `arches`, `cargo_version`,
# `version` and `homepage`, or exits 2 on a bad argument and 1 on an unreadable Cargo.toml.

arches=()
case "${1:-all}" in
amd64 | arm64) arches=("$1") ;;
all) arches=(amd64 arm64) ;;
*)
    echo "usage: $0 [amd64|arm64|all]" >&2
    exit 2
    ;;
esac

cargo_version="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"$/\1/p' Cargo.toml)"
homepage="$(sed -n 's/^repository = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
if [ -z "$cargo_version" ] || [ -z "$homepage" ]; then
    echo "cannot read version/repository from [workspace.package] in Cargo.toml" >&2
    exit 1
fi
# SemVer pre-releases sort before the release in Debian only with a tilde: 1.0.0-rc.1 -> 1.0.0~rc.1.
version="${cargo_version/-/\~}"

# The e_machine a binary for Debian architecture $1 must have (readelf -h).
elf_machine() {
    case "$1" in
    amd64) echo "Advanced Micro Devices X86-64" ;;
    arm64) echo "AArch64" ;;
    esac
}
