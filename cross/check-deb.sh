#!/usr/bin/env bash
# Checks the Debian packages cross/package-deb.sh built (what CI runs, from test.sh):
#   1. both packages: `dpkg-deb --info` fields, the maintainer scripts, the conffile list,
#      and `dpkg-deb --contents` against the expected paths, modes and owners; the packaged
#      files against their sources; the packaged binary's `config --print-default` against
#      the conffile (arm64: under qemu-aarch64 -cpu cortex-a53);
#   2. amd64, for real on this machine (root or passwordless sudo, else skipped loudly):
#      dpkg -i, then the user, the directories, `systemd-analyze verify`, `--version`, the
#      registered conffile, nothing enabled; a reinstall (the upgrade path); dpkg --purge,
#      which must remove everything but a model an administrator put in place.
#
# Usage: cross/check-deb.sh [amd64|arm64|all]   (default: all; packages in target/deb)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"

# shellcheck source=cross/deb/common.sh
source "$here/deb/common.sh"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

fail() {
    echo "FAILED: $*" >&2
    exit 1
}

# The files every package must hold: "mode owner/group path" as `dpkg-deb --contents` shows
# them (directories that only hold these are not listed).
expected_files() {
    echo "-rwxr-xr-x root/root ./usr/bin/spillway"
    echo "-rw-r--r-- root/root ./usr/lib/systemd/system/spillway.service"
    echo "-rw-r--r-- root/root ./usr/lib/sysusers.d/spillway.conf"
    echo "-rw-r--r-- root/root ./usr/lib/tmpfiles.d/spillway.conf"
    echo "-rw-r--r-- root/root ./etc/spillway/spillway.toml"
    local b
    for b in boards/*.toml; do
        echo "-rw-r--r-- root/root ./usr/share/spillway/boards/${b#boards/}"
    done
    echo "-rw-r--r-- root/root ./usr/share/spillway/systemd/jetson-orin.conf"
    echo "-rw-r--r-- root/root ./usr/share/doc/spillway/README.Debian"
    echo "-rw-r--r-- root/root ./usr/share/doc/spillway/README.md"
    echo "-rw-r--r-- root/root ./usr/share/doc/spillway/changelog.Debian.gz"
    echo "-rw-r--r-- root/root ./usr/share/doc/spillway/copyright"
}

# Which packaged file comes from which source file, unchanged.
sources() {
    echo "usr/lib/systemd/system/spillway.service systemd/spillway.service"
    echo "usr/lib/sysusers.d/spillway.conf systemd/spillway.sysusers"
    echo "usr/lib/tmpfiles.d/spillway.conf systemd/spillway.tmpfiles"
    echo "etc/spillway/spillway.toml daemon/src/config.default.toml"
    echo "usr/share/spillway/systemd/jetson-orin.conf systemd/jetson-orin.conf"
    echo "usr/share/doc/spillway/README.Debian cross/deb/README.Debian"
    echo "usr/share/doc/spillway/copyright cross/deb/copyright"
    local b
    for b in boards/*.toml; do
        echo "usr/share/spillway/boards/${b#boards/} $b"
    done
}

field() { dpkg-deb --field "$1" "$2"; }

# dpkg-shlibdeps' Depends for binary $1 of Debian architecture $2, from a scratch source tree.
shlibdeps() {
    local src="$tmp/shlibdeps-$2" triplet
    triplet="$(dpkg-architecture -a "$2" -q DEB_HOST_MULTIARCH 2>/dev/null)"
    mkdir -p "$src/debian/spillway/usr/bin"
    printf 'Source: spillway\n\nPackage: spillway\nArchitecture: any\n' >"$src/debian/control"
    cp "$1" "$src/debian/spillway/usr/bin/spillway"
    (cd "$src" && eval "$(dpkg-architecture -a "$2" -s 2>/dev/null)" &&
        dpkg-shlibdeps -O -l"/usr/lib/$triplet" -l"/lib/$triplet" debian/spillway/usr/bin/spillway 2>/dev/null) |
        sed -n 's/^shlibs:Depends=//p'
}

check_package() {
    local arch="$1"
    local deb="target/deb/spillway_${version}_${arch}.deb"
    [ -f "$deb" ] || fail "$deb not found (run cross/package-deb.sh $arch)"
    echo "== $deb"
    dpkg-deb --info "$deb"

    [ "$(field "$deb" Package)" = spillway ] || fail "Package is not spillway"
    [ "$(field "$deb" Version)" = "$version" ] || fail "Version is not $version"
    [ "$(field "$deb" Architecture)" = "$arch" ] || fail "Architecture is not $arch"
    [ "$(field "$deb" Homepage)" = "$homepage" ] || fail "Homepage is not $homepage"
    local f
    for f in Maintainer Installed-Size Section Priority Description; do
        [ -n "$(field "$deb" "$f")" ] || fail "no $f field"
    done
    field "$deb" Depends | grep -Eq '^libc6 \(>= 2\.[0-9]+\)' ||
        fail "Depends does not start with a versioned libc6: $(field "$deb" Depends)"

    # Control members: the maintainer scripts (executable) and the conffile list.
    mkdir -p "$tmp/$arch/DEBIAN"
    dpkg-deb --control "$deb" "$tmp/$arch/DEBIAN"
    for f in postinst prerm postrm; do
        [ -x "$tmp/$arch/DEBIAN/$f" ] || fail "no executable $f"
        sh -n "$tmp/$arch/DEBIAN/$f" || fail "$f: syntax error"
        grep -Eq 'systemctl (enable|start|restart|reload-or-restart)' "$tmp/$arch/DEBIAN/$f" &&
            fail "$f enables or starts the service"
    done
    [ "$(cat "$tmp/$arch/DEBIAN/conffiles")" = /etc/spillway/spillway.toml ] ||
        fail "conffiles is not exactly /etc/spillway/spillway.toml"
    [ -f "$tmp/$arch/DEBIAN/md5sums" ] || fail "no md5sums"

    # Contents: exactly the expected files, modes and owners; /etc/spillway 0750.
    dpkg-deb --contents "$deb" | tee "$tmp/$arch/contents"
    awk '$1 !~ /^d/ { print $1, $2, $6 }' "$tmp/$arch/contents" | sort >"$tmp/$arch/files"
    expected_files | sort >"$tmp/$arch/expected"
    diff -u "$tmp/$arch/expected" "$tmp/$arch/files" || fail "unexpected package contents"
    grep -Eq '^drwxr-x--- root/root .* \./etc/spillway/$' "$tmp/$arch/contents" ||
        fail "/etc/spillway is not drwxr-x--- root/root"
    if awk '$1 ~ /^d/ && $6 != "./etc/spillway/" && $1 != "drwxr-xr-x"' "$tmp/$arch/contents" | grep .; then
        fail "directories other than /etc/spillway must be 0755"
    fi

    # The files are their sources, unchanged; the binary is for this architecture.
    dpkg-deb -x "$deb" "$tmp/$arch/root"
    local dst src
    while read -r dst src; do
        cmp -s "$tmp/$arch/root/$dst" "$src" || fail "/$dst differs from $src"
    done < <(sources)
    cmp -s "$tmp/$arch/root/usr/share/doc/spillway/README.md" README.md ||
        fail "README.md differs"
    gzip -t "$tmp/$arch/root/usr/share/doc/spillway/changelog.Debian.gz"
    local machine
    machine="$(readelf -h "$tmp/$arch/root/usr/bin/spillway" | sed -n 's/^ *Machine: *//p')"
    [ "$machine" = "$(elf_machine "$arch")" ] || fail "the $arch package holds a $machine binary"

    # Depends: as dpkg-shlibdeps (dpkg-dev) would compute it, when it is installed.
    if command -v dpkg-shlibdeps >/dev/null; then
        local shlibs
        shlibs="$(shlibdeps "$tmp/$arch/root/usr/bin/spillway" "$arch")"
        [ "$shlibs" = "$(field "$deb" Depends)" ] ||
            fail "Depends: $(field "$deb" Depends), but dpkg-shlibdeps says: $shlibs"
        echo "-- Depends agrees with dpkg-shlibdeps"
    else
        echo "-- dpkg-shlibdeps not found (apt-get install dpkg-dev): Depends not cross-checked"
    fi

    # The conffile is what this very binary prints as its default configuration.
    local run=("$tmp/$arch/root/usr/bin/spillway")
    # No -L /usr/aarch64-linux-gnu: that loader hangs under qemu-user (cross/README.md).
    [ "$arch" = arm64 ] && run=(qemu-aarch64 -cpu cortex-a53 "${run[@]}")
    echo "-- $arch: $("${run[@]}" --version)"
    "${run[@]}" config --print-default >"$tmp/$arch/default.toml"
    cmp -s "$tmp/$arch/default.toml" "$tmp/$arch/root/etc/spillway/spillway.toml" ||
        fail "spillway config --print-default differs from the packaged /etc/spillway/spillway.toml"
    echo "ok: $deb (Depends: $(field "$deb" Depends))"
}

# Runs "$@" as root: directly, or with passwordless sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# stat's "mode owner group" of $1.
perms() { stat -c '%a %U %G' "$1"; }

install_test() {
    local deb="target/deb/spillway_${version}_amd64.deb"
    if [ "$(id -u)" -ne 0 ] && ! sudo -n true 2>/dev/null; then
        echo "!!!! SKIPPED: installing $deb needs root or passwordless sudo (CI runs as root)" >&2
        return 0
    fi
    if dpkg-query -W -f='${Status}' spillway 2>/dev/null | grep -q 'installed'; then
        echo "!!!! SKIPPED: spillway is already installed here; this test would replace and purge it" >&2
        return 0
    fi
    if [ -e /usr/bin/spillway ] || [ -e /etc/spillway ] || [ -e /var/lib/spillway ]; then
        echo "!!!! SKIPPED: /usr/bin/spillway, /etc/spillway or /var/lib/spillway exists (not from the package)" >&2
        return 0
    fi
    echo "== dpkg -i $deb"
    as_root dpkg -i "$deb"

    getent passwd spillway >/dev/null || fail "no spillway user"
    getent group spillway >/dev/null || fail "no spillway group"
    [ "$(perms /var/lib/spillway)" = "750 spillway spillway" ] ||
        fail "/var/lib/spillway is $(perms /var/lib/spillway)"
    [ "$(perms /var/lib/spillway/models)" = "750 spillway spillway" ] ||
        fail "/var/lib/spillway/models is $(perms /var/lib/spillway/models)"
    [ "$(perms /etc/spillway)" = "750 root spillway" ] || fail "/etc/spillway is $(perms /etc/spillway)"
    echo "ok: user spillway; /var/lib/spillway{,/models} 750 spillway; /etc/spillway 750 root:spillway"

    if command -v systemd-analyze >/dev/null; then
        systemd-analyze verify /usr/lib/systemd/system/spillway.service
        echo "ok: systemd-analyze verify"
    else
        echo "!!!! systemd-analyze not found (apt-get install systemd): the installed unit is not verified" >&2
    fi
    echo "ok: $(/usr/bin/spillway --version)"
    local conffiles
    conffiles="$(dpkg-query -W -f='${Conffiles}' spillway)"
    grep -Eq '^ /etc/spillway/spillway.toml [0-9a-f]{32}$' <<<"$conffiles" ||
        fail "conffile not registered: '$conffiles'"
    echo "ok: conffile registered:$conffiles"
    local enabled
    enabled="$(systemctl is-enabled spillway.service 2>&1 || true)"
    [ "$enabled" = disabled ] || fail "systemctl is-enabled spillway says '$enabled', not disabled"
    if find /etc/systemd/system -name 'spillway.service' | grep .; then
        fail "the package enabled spillway.service"
    fi
    echo "ok: spillway.service is disabled"

    echo "== dpkg -i again (the upgrade path)"
    as_root sh -c 'echo "# an edit" >>/etc/spillway/spillway.toml'
    as_root dpkg -i --force-confold "$deb"
    as_root grep -q '^# an edit$' /etc/spillway/spillway.toml || fail "the upgrade lost an edit of the conffile"
    [ "$(perms /etc/spillway)" = "750 root spillway" ] || fail "/etc/spillway is $(perms /etc/spillway) after the upgrade"
    echo "ok: conffile edit kept, permissions kept"

    echo "== dpkg --purge spillway (with a model in place, which must stay)"
    as_root sh -c 'echo not-a-model >/var/lib/spillway/models/model.gguf'
    as_root dpkg --purge spillway
    if dpkg-query -W -f='${Status}' spillway 2>/dev/null | grep -q 'installed'; then
        fail "spillway is still installed"
    fi
    local p
    for p in /usr/bin/spillway /usr/lib/systemd/system/spillway.service /usr/lib/sysusers.d/spillway.conf \
        /usr/lib/tmpfiles.d/spillway.conf /usr/share/spillway /usr/share/doc/spillway /etc/spillway; do
        [ ! -e "$p" ] || fail "$p is left after the purge"
    done
    [ -f /var/lib/spillway/models/model.gguf ] || fail "the purge removed the administrator's model"
    as_root rm -rf /var/lib/spillway
    echo "ok: purged; the model was kept; the spillway user stays (Debian keeps system users)"
}

for arch in "${arches[@]}"; do
    check_package "$arch"
done
for arch in "${arches[@]}"; do
    if [ "$arch" = amd64 ]; then install_test; fi
done
echo "package checks passed"
