#!/usr/bin/env bash
# Builds the Debian packages of spillway with plain `dpkg-deb --build --root-owner-group`:
#
#     cross/package-deb.sh [amd64|arm64|all]      (default: all)
#
# amd64 ships the native release binary (target/release/spillway, built here with the
# rustup toolchain); arm64 ships the cross-built one (cross/build-aarch64.sh, Debian's
# toolchain). SPILLWAY_PROFILE=<cargo profile> builds another profile instead, and
# SPILLWAY_DEB_BIN_AMD64 / SPILLWAY_DEB_BIN_ARM64 name an already built binary to pack: CI
# packs the ones its tests built (the same code without fat LTO), sparing it two more
# builds that end in whole-program links.
# Output: target/deb/spillway_<version>_<arch>.deb, the version being the workspace's
# (Cargo.toml). cross/check-deb.sh checks and installs them.
#
# Depends: is computed from the binary: each libc6/libgcc-s1 symbol version it imports
# (readelf --dyn-syms) is looked up in that package's symbols file for the architecture
# (/var/lib/dpkg/info/<pkg>:<arch>.symbols, as dpkg-shlibdeps does), and the highest
# minimum version wins.
#
# Environment: SPILLWAY_PROFILE (above), SPILLWAY_DEB_MAINTAINER (the Maintainer: field),
# SOURCE_DATE_EPOCH (file times; default: the last commit's time). The same sources give
# byte-identical packages.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"

# shellcheck source=cross/deb/common.sh
source "$here/deb/common.sh"

for tool in dpkg-deb readelf strip aarch64-linux-gnu-strip python3 gzip; do
    command -v "$tool" >/dev/null || {
        echo "$tool not found (apt-get install dpkg binutils binutils-aarch64-linux-gnu python3 gzip)" >&2
        exit 2
    }
done

maintainer="${SPILLWAY_DEB_MAINTAINER:-The Spillway developers <maintainers@spillway.invalid>}"
# File times of the packages (reproducible builds). Not exported: cc-rs makes build scripts
# (ring's, psm's) rerun when SOURCE_DATE_EPOCH changes, which would rebuild the binaries.
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
out="$root/target/deb"
mkdir -p "$out"

# Builds the binary for $1 (or takes $SPILLWAY_DEB_BIN_<ARCH>) and prints its path.
build_binary() {
    local prebuilt="SPILLWAY_DEB_BIN_${1^^}"
    local profile="${SPILLWAY_PROFILE:-release}"
    if [ -n "${!prebuilt:-}" ]; then
        [ -x "${!prebuilt}" ] || {
            echo "$prebuilt=${!prebuilt}: not an executable file" >&2
            return 1
        }
        echo "using the prebuilt ${!prebuilt}" >&2
        realpath "${!prebuilt}"
        return
    fi
    case "$1" in
    amd64)
        cargo build --profile "$profile" --locked -p spillway --bin spillway >&2
        # shellcheck source=cross/env.sh
        (source "$here/env.sh" && echo "$root/target/$(profile_dir "$profile")/spillway")
        ;;
    arm64)
        SPILLWAY_PROFILE="$profile" "$here/build-aarch64.sh" >&2
        # shellcheck source=cross/env.sh
        (source "$here/env.sh" && echo "$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/$(profile_dir "$profile")/spillway")
        ;;
    esac
}

# The strip that understands binaries of Debian architecture $1.
strip_tool() {
    case "$1" in
    amd64) echo strip ;;
    arm64) echo aarch64-linux-gnu-strip ;;
    esac
}

# Prints the Depends: field for binary $1 of Debian architecture $2.
shlib_depends() {
    local bin="$1" arch="$2"
    python3 - "$bin" "$arch" <<'PY'
import re, subprocess, sys

binary, arch = sys.argv[1], sys.argv[2]
# Shared libraries -> the package whose symbols file covers them.
packages = {
    "libc.so.6": "libc6", "libm.so.6": "libc6", "libpthread.so.0": "libc6",
    "libdl.so.2": "libc6", "librt.so.1": "libc6", "libutil.so.1": "libc6",
    "ld-linux-x86-64.so.2": "libc6", "ld-linux-aarch64.so.1": "libc6",
    "libgcc_s.so.1": "libgcc-s1",
}
dynamic = subprocess.run(["readelf", "-d", "-W", binary], check=True, capture_output=True, text=True).stdout
needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
unknown = [n for n in needed if n not in packages]
if unknown:
    sys.exit(f"{binary}: unexpected shared libraries {unknown}: teach cross/package-deb.sh their packages")
syms = subprocess.run(["readelf", "--dyn-syms", "-W", binary], check=True, capture_output=True, text=True).stdout
# Undefined (imported) symbols: "... UND name@VERSION (n)".
imported = set(re.findall(r"\sUND\s+(\S+@\S+?)(?:\s|$)", syms))

def vkey(v):
    return [int(x) if x.isdigit() else x for x in re.split(r"[.~+-]", v)]

depends = []
for pkg in sorted({packages[n] for n in needed}, key=lambda p: p != "libc6"):
    table = {}
    with open(f"/var/lib/dpkg/info/{pkg}:{arch}.symbols") as f:
        for line in f:
            if line.startswith(" "):
                fields = line.split()
                table[fields[0]] = fields[1]
    wanted = [s for s in imported if s.split("@", 1)[1] in {k.split("@", 1)[1] for k in table}]
    missing = [s for s in wanted if s not in table]
    if missing:
        sys.exit(f"{binary}: {pkg}:{arch}.symbols does not list {sorted(missing)}")
    if not wanted:
        depends.append(pkg)
        continue
    minimum = max((table[s] for s in wanted), key=vkey)
    depends.append(f"{pkg} (>= {minimum})")
print(", ".join(depends))
PY
}

# Installed-Size: as dpkg-gencontrol counts it, KiB per file rounded up, one per directory or
# link, over the package's tree without DEBIAN/.
installed_size() {
    find "$1" -path "$1/DEBIAN" -prune -o -mindepth 1 -printf '%y %s\n' |
        awk '$1 == "f" { kib += int(($2 + 1023) / 1024); next } { kib += 1 } END { print kib }'
}

package() {
    local arch="$1" bin pkg deb depends glibc
    bin="$(build_binary "$arch")"
    [ -x "$bin" ] || {
        echo "no binary at $bin" >&2
        exit 1
    }
    readelf -h "$bin" | grep -q "Machine:[[:space:]]*$(elf_machine "$arch")$" || {
        echo "$bin is not an $arch binary" >&2
        exit 1
    }
    pkg="$out/spillway_${version}_${arch}"
    deb="$pkg.deb"
    rm -rf "$pkg" "$deb"
    echo "== packaging spillway $version for $arch from $bin"

    install -D -m 0755 "$bin" "$pkg/usr/bin/spillway"
    # As dh_strip does: no symbols or debug information in the package (a no-op on the
    # release profile's binary, which is stripped already).
    "$(strip_tool "$arch")" --strip-all "$pkg/usr/bin/spillway"
    install -D -m 0644 systemd/spillway.service "$pkg/usr/lib/systemd/system/spillway.service"
    install -D -m 0644 systemd/spillway.sysusers "$pkg/usr/lib/sysusers.d/spillway.conf"
    install -D -m 0644 systemd/spillway.tmpfiles "$pkg/usr/lib/tmpfiles.d/spillway.conf"
    install -d -m 0750 "$pkg/etc/spillway"
    install -m 0644 daemon/src/config.default.toml "$pkg/etc/spillway/spillway.toml"
    install -d -m 0755 "$pkg/usr/share/spillway/boards"
    install -m 0644 boards/*.toml "$pkg/usr/share/spillway/boards/"
    install -D -m 0644 systemd/jetson-orin.conf "$pkg/usr/share/spillway/systemd/jetson-orin.conf"
    local doc="$pkg/usr/share/doc/spillway"
    install -D -m 0644 cross/deb/README.Debian "$doc/README.Debian"
    install -m 0644 cross/deb/copyright "$doc/copyright"
    # The unit's Documentation= points here.
    install -m 0644 README.md "$doc/README.md"
    {
        echo "spillway ($version) unstable; urgency=medium"
        echo
        echo "  * Release $version, built from commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
        echo
        echo " -- $maintainer  $(date -u -R -d "@$epoch")"
    } | gzip -9 -n >"$doc/changelog.Debian.gz"
    chmod 0644 "$doc/changelog.Debian.gz"

    install -d -m 0755 "$pkg/DEBIAN"
    install -m 0755 cross/deb/postinst cross/deb/prerm cross/deb/postrm "$pkg/DEBIAN/"
    echo /etc/spillway/spillway.toml >"$pkg/DEBIAN/conffiles"
    depends="$(shlib_depends "$pkg/usr/bin/spillway" "$arch")"
    glibc="$(readelf --dyn-syms -W "$pkg/usr/bin/spillway" | grep -o '@GLIBC_[0-9.]*' | sort -u -V | tail -n1)"
    echo "highest glibc symbol version: ${glibc#@}; Depends: $depends"
    cat >"$pkg/DEBIAN/control" <<EOF
Package: spillway
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(installed_size "$pkg")
Depends: $depends
Section: net
Priority: optional
Homepage: $homepage
Description: Ministral 3 on ARM boards over MQTT, spilling to the cloud
 Spillway runs Mistral's open Ministral 3 3B (int4-quantized GGUF, memory-mapped)
 under a RAM budget, answering prompts that arrive over MQTT. When the board is
 too hot, short of memory or too busy, requests spill over to a cloud router
 (Hugging Face Inference Providers over HTTPS, or a cloud MQTT broker).
 .
 The package installs a hardened systemd unit, its system user and directories;
 it enables and starts nothing. See /usr/share/doc/spillway/README.Debian.
EOF
    (cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
        xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
    chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles" "$pkg/DEBIAN/md5sums"
    find "$pkg" -exec touch -h -d "@$epoch" {} +

    SOURCE_DATE_EPOCH="$epoch" dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
    rm -rf "$pkg"
    echo "$deb ($(stat -c %s "$deb") bytes)"
}

for arch in "${arches[@]}"; do
    package "$arch"
done
