#!/bin/bash
# Fetch the pristine upstream libvirt tarball from Debian's trixie source
# package and check it against the pinned sha256.  Debian's packaging tarball
# comes along; it is only used to check that the series also applies on top of
# Debian's patched tree (scripts/check-debian.sh).
set -euo pipefail
. "$(dirname "$0")/common.sh"

orig=$DL/libvirt_$LIBVIRT_VERSION.orig.tar.xz

have_orig() {
    [ -f "$orig" ] && echo "$LIBVIRT_ORIG_SHA256  $orig" | sha256sum --quiet -c - 2>/dev/null
}

# The Debian archive this machine already uses, as apt itself reports it: the
# index of the machine's own release in the origin "Debian", label "Debian".
debian_archive_uri() {
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || return 1
    apt-cache policy 2>/dev/null | awk -v n="n=$codename," '
        /^ *[0-9]+ [a-z+]+:\/\// { uri = $2; next }
        /release / && index($0, "o=Debian,") && index($0, n) && index($0, "l=Debian,") { print uri; exit }'
}

ensure_deb_src() {
    local list=/etc/apt/sources.list.d/snapdel-$DEBIAN_SUITE-src.sources uri
    if apt-cache showsrc libvirt 2>/dev/null | grep "^Version: $LIBVIRT_VERSION-" >/dev/null; then
        return 0
    fi
    # In the trixie root (the e2e suite runs this script there) its own
    # sources are all there is: never change the cached root's apt setup.
    inside_trixie && die "no deb-src reachable: the trixie root's sources list no libvirt $LIBVIRT_VERSION"
    uri=$(debian_archive_uri || true)
    if [ -z "$uri" ]; then
        apt-get update -q >/dev/null || true
        uri=$(debian_archive_uri || true)
    fi
    [ -n "$uri" ] || die "cannot find the Debian archive in this machine's apt configuration (apt-cache policy lists no origin Debian for $(. /etc/os-release && echo "$VERSION_CODENAME"))"
    [ "$(id -u)" -eq 0 ] || die "need root to add a deb-src entry for $DEBIAN_SUITE"
    say "adding deb-src for $DEBIAN_SUITE from the machine's Debian archive ($list)"
    cat > "$list" <<EOS
# Added by the snapdel patch queue: source packages of Debian $DEBIAN_SUITE,
# from the archive this machine already uses.
Types: deb-src
URIs: $uri
Suites: $DEBIAN_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
    apt-get update -q >/dev/null 2>"$DL/apt-update.err" ||
        die "apt-get update failed after adding $list: $(tail -3 "$DL/apt-update.err")"
    apt-cache showsrc libvirt 2>/dev/null | grep "^Version: $LIBVIRT_VERSION-" >/dev/null ||
        die "no deb-src reachable: $DEBIAN_SUITE's sources at $uri list no libvirt $LIBVIRT_VERSION"
}

mkdir -p "$DL"
have_orig && exit 0

ensure_deb_src
srcver=$(apt-cache showsrc libvirt | sed -n "s/^Version: \($LIBVIRT_VERSION-.*\)/\1/p" | sort -V | tail -1)
say "downloading Debian source package libvirt $srcver"
# apt-get fails as a whole when any one file of the source package is missing
# on the mirror (some mirrors lack the .dsc or the signature); only the
# tarballs matter here, and the pinned hash is what vouches for the upstream one.
(cd "$DL" && apt-get source -q --download-only "libvirt=$srcver") >"$DL/apt-source.log" 2>&1 || true
[ -f "$orig" ] ||
    die "no deb-src reachable: apt-get source did not deliver $(basename "$orig"):
$(tail -5 "$DL/apt-source.log")"
if ! have_orig; then
    got=$(sha256sum "$orig" | cut -d' ' -f1)
    mv "$orig" "$orig.bad"
    die "hash mismatch for $(basename "$orig"): expected $LIBVIRT_ORIG_SHA256, got $got (kept as $orig.bad)"
fi
say "verified $(basename "$orig") (sha256 $LIBVIRT_ORIG_SHA256)"
