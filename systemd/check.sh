#!/usr/bin/env bash
# Checks the systemd unit the way CI does:
#   1. `systemd-analyze verify` on a temporary copy whose ExecStart= points at the built
#      binary (the installed /usr/bin/spillway need not exist here);
#   2. spillway.sysusers creates the user and spillway.tmpfiles the directories with their
#      owners and modes, in a throwaway root (when systemd-sysusers exists);
#   3. the unit with the Jetson Orin drop-in (jetson-orin.conf) verifies cleanly too;
#   4. `systemd-analyze security --offline=true`: the overall exposure must be 1.5 or lower.
# The binary: $SPILLWAY_BIN, else target/release/spillway (built if missing).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
max_exposure=1.5

command -v systemd-analyze >/dev/null || {
    echo "systemd-analyze not found (apt-get install systemd)" >&2
    exit 2
}

bin="${SPILLWAY_BIN:-$root/target/release/spillway}"
if [ ! -x "$bin" ]; then
    echo "building $bin"
    (cd "$root" && cargo build --release --locked -p spillway --bin spillway)
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "== systemd-analyze verify (ExecStart=$bin)"
grep -q '^ExecStart=/usr/bin/spillway ' "$here/spillway.service" || {
    echo "spillway.service: expected ExecStart=/usr/bin/spillway ..." >&2
    exit 1
}
sed "s|^ExecStart=/usr/bin/spillway |ExecStart=$bin |" "$here/spillway.service" \
    >"$tmp/spillway.service"
systemd-analyze verify "$tmp/spillway.service"
echo "ok"

if command -v systemd-sysusers >/dev/null; then
    echo "== systemd-sysusers spillway.sysusers (throwaway root)"
    mkdir -p "$tmp/root/etc" "$tmp/root/usr/lib/sysusers.d"
    cp "$here/spillway.sysusers" "$tmp/root/usr/lib/sysusers.d/spillway.conf"
    out="$(systemd-sysusers --root="$tmp/root" 2>&1)" || {
        echo "$out" >&2
        exit 1
    }
    grep -q '^spillway:' "$tmp/root/etc/passwd" || {
        echo "spillway.sysusers created no spillway user" >&2
        exit 1
    }
    user="$(sed -n 's/^User=//p' "$here/spillway.service")"
    [ "$user" = spillway ] || {
        echo "spillway.service runs as '$user', not the sysusers user" >&2
        exit 1
    }
    echo "ok"

    echo "== systemd-tmpfiles --create spillway.tmpfiles (same root)"
    install -D -m 0644 "$here/spillway.tmpfiles" "$tmp/root/usr/lib/tmpfiles.d/spillway.conf"
    systemd-tmpfiles --root="$tmp/root" --create spillway.conf
    uid="$(sed -n 's/^spillway:[^:]*:\([0-9]*\):.*/\1/p' "$tmp/root/etc/passwd")"
    for want in "var/lib/spillway 750 $uid:$uid" "var/lib/spillway/models 750 $uid:$uid" \
        "etc/spillway 750 0:$uid"; do
        got="$(stat -c "%n %a %u:%g" "$tmp/root/${want%% *}")"
        [ "$got" = "$tmp/root/$want" ] || {
            echo "spillway.tmpfiles: got $got, want $want" >&2
            exit 1
        }
    done
    echo "ok"
fi

echo "== systemd-analyze verify with the Jetson Orin drop-in (jetson-orin.conf)"
mkdir -p "$tmp/spillway.service.d"
cp "$here/jetson-orin.conf" "$tmp/spillway.service.d/"
out="$(systemd-analyze verify "$tmp/spillway.service" 2>&1)"
if grep . <<<"$out"; then
    echo "the drop-in has problems (above)" >&2
    exit 1
fi
jetson_exposure="$(cd "$tmp" && systemd-analyze security --offline=true --no-pager ./spillway.service |
    sed -n 's/.*Overall exposure level for spillway\.service: \([0-9.]*\).*/\1/p')"
echo "ok (exposure with the drop-in: $jetson_exposure)"
rm -rf "$tmp/spillway.service.d"

echo "== systemd-analyze security --offline=true spillway.service"
report="$(cd "$here" && systemd-analyze security --offline=true --no-pager ./spillway.service)"
grep '✗' <<<"$report" || true
exposure="$(sed -n 's/.*Overall exposure level for spillway\.service: \([0-9.]*\).*/\1/p' <<<"$report")"
[ -n "$exposure" ] || {
    echo "no overall exposure in the report:" >&2
    echo "$report" >&2
    exit 1
}
echo "exposure $exposure (at most $max_exposure)"
awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }' || {
    echo "spillway.service is exposed $exposure, more than $max_exposure" >&2
    exit 1
}
echo "systemd unit checks passed"
