#!/bin/bash
# Builds the Debian package of the Xarxa zone node from an already-built
# binary. It compiles nothing and needs no network: build the binary first,
#
#   cargo build --release -p xarxa-node --bin xarxa
#   bash packaging/build-deb.sh                 # uses target/release/xarxa
#
# or pass another binary (the tests pass the debug build):
#
#   bash packaging/build-deb.sh --binary target/debug/xarxa --out /tmp/deb
#
# Options:
#   --binary PATH   the xarxa executable to package (default target/release/xarxa)
#   --out DIR       where to write the .deb (default target/debian)
#   --no-strip      package the binary as it is (default: a stripped copy)
#
# Needs dpkg-deb; uses dpkg-shlibdeps (dpkg-dev) and strip (binutils) when
# present. Progress goes to stderr; the last line of stdout is the path of
# the .deb.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

binary=$root/target/release/xarxa
out=$root/target/debian
do_strip=1

usage() { sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit "${1:-2}"; }
log() { printf 'build-deb: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) [ $# -ge 2 ] || usage; binary=$2; shift 2 ;;
        --binary=*) binary=${1#*=}; shift ;;
        --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        --out=*) out=${1#*=}; shift ;;
        --no-strip) do_strip=0; shift ;;
        -h | --help) usage 0 ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done

command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"
[ -f "$binary" ] && [ -x "$binary" ] || die "no executable at $binary; build it with: cargo build --release -p xarxa-node --bin xarxa"
head -c 4 "$binary" | grep -q $'^\x7fELF' || die "$binary is not an ELF executable"

# Version: [workspace.package] version in the workspace Cargo.toml. A
# pre-release "1.0.0-rc.1" becomes "1.0.0~rc.1" so that it sorts before 1.0.0.
version=$(awk '
    /^[[:space:]]*\[/ { in_pkg = ($0 ~ /^[[:space:]]*\[workspace\.package\][[:space:]]*$/); next }
    in_pkg && /^[[:space:]]*version[[:space:]]*=/ {
        v = $0; sub(/^[^=]*=[[:space:]]*"/, "", v); sub(/".*$/, "", v); print v; exit
    }' "$root/Cargo.toml")
[ -n "$version" ] || die "no [workspace.package] version in $root/Cargo.toml"
version=${version/-/\~}
arch=$(dpkg --print-architecture)

umask 022
stage=$(mktemp -d "${TMPDIR:-/tmp}/xarxa-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkg=$stage/xarxa

install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/usr/share/doc/xarxa"
install -m 0755 "$binary" "$pkg/usr/bin/xarxa"
if [ "$do_strip" = 1 ]; then
    if command -v strip >/dev/null; then
        strip --strip-unneeded --remove-section=.comment "$pkg/usr/bin/xarxa"
    else
        log "strip not found; packaging the binary unstripped"
    fi
fi
install -m 0644 "$here/xarxa.service" "$pkg/lib/systemd/system/xarxa.service"
install -m 0644 "$here/copyright" "$pkg/usr/share/doc/xarxa/copyright"
for script in postinst prerm postrm; do
    install -m 0755 "$here/debian/$script" "$pkg/DEBIAN/$script"
done

# Shared-library dependencies. dpkg-shlibdeps wants a debian/control to
# read; give it a minimal one in a scratch directory.
shlibs=
if command -v dpkg-shlibdeps >/dev/null; then
    scratch=$stage/shlibs
    mkdir -p "$scratch/debian"
    printf 'Source: xarxa\n\nPackage: xarxa\nArchitecture: any\n' >"$scratch/debian/control"
    if line=$(cd "$scratch" && dpkg-shlibdeps -O -e"$pkg/usr/bin/xarxa" 2>"$scratch/err"); then
        shlibs=${line#shlibs:Depends=}
    else
        log "dpkg-shlibdeps failed, falling back to readelf: $(cat "$scratch/err")"
    fi
    rm -rf "$scratch"
fi
if [ -z "$shlibs" ]; then
    # Fallback: the newest GLIBC_x.y symbol version the binary needs, and
    # libgcc-s1 if it links libgcc_s (Rust's unwinder does).
    glibc=$(readelf -V --wide "$pkg/usr/bin/xarxa" 2>/dev/null \
        | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1 || true)
    shlibs="libc6${glibc:+ (>= $glibc)}"
    needed=$(readelf -d "$pkg/usr/bin/xarxa" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' || true)
    for lib in $needed; do
        case "$lib" in
            libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | ld-linux*) ;;
            libgcc_s.so.*) shlibs="$shlibs, libgcc-s1" ;;
            *) die "the binary links $lib; add its package to Depends" ;;
        esac
    done
fi
depends="adduser, $shlibs"

installed_size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)

cat >"$pkg/DEBIAN/control" <<CONTROL
Package: xarxa
Version: $version
Architecture: $arch
Maintainer: Xarxa developers <xarxa@example.invalid>
Installed-Size: $installed_size
Depends: $depends
Section: net
Priority: optional
Homepage: https://example.invalid/xarxa
Description: zone node for real-time communication in community networks
 Xarxa brings voice and video calls, chat and rooms to community networks
 such as guifi.net, run by volunteers on small machines, with no central
 authority and no need for the Internet. People are addressed as
 name@zone.
 .
 This package holds the zone node: a single binary with an embedded
 database that serves the web client, HTTPS and a signalling WebSocket
 to the browsers of its zone, relays media over STUN/TURN, and finds the
 other zones over a libp2p mesh. It runs as the systemd service
 xarxa.service under the system user xarxa; its configuration is
 /etc/xarxa/config.toml and its data lives in /var/lib/xarxa.
CONTROL
chmod 0644 "$pkg/DEBIAN/control"

(cd "$pkg" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/md5sums"

mkdir -p "$out"
deb=$(cd "$out" && pwd)/xarxa_${version}_${arch}.deb
log "building $deb (Depends: $depends)"
dpkg-deb --root-owner-group --build "$pkg" "$deb" >&2
echo "$deb"
