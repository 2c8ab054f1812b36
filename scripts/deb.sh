#!/bin/bash
# 'make deb': trixie's libvirt packages with the series, as a downstream
# patch queue ships them.  Debian's own source package (11.3.0-3+deb13u3:
# the upstream tarball and Debian's debian/ with its 30 patches) gets the
# series appended to debian/patches/series, in debian/patches/snapdel/, and
# a changelog entry whose version says it is ours; dpkg-buildpackage -b
# builds it in the trixie root, with ccache, on every CPU.
#
# The series is taken as it applies on Debian's patched tree
# (scripts/check-debian.sh --export): patches Debian already carries are left
# out, and the rest are plain diffs (no git renames) that dpkg-source applies.
#
# Result: $DEBS, the .debs plus SHA256SUMS and an apt index (Packages), so
# that the folder is also an apt source.  Nothing is rebuilt when neither
# the series, Debian's packaging, the version nor this script changed.
#
# DEB_BUILD_OPTIONS adds to the defaults: 'nocheck' skips Debian's meson test
# run ('make unit' runs it on the same tree), 'noautodbgsym' (the default
# here) leaves out the -dbgsym packages.
set -euo pipefail
. "$(dirname "$0")/common.sh"

WORK=$BUILD/deb
SRC=$WORK/libvirt-$LIBVIRT_VERSION

if ! inside_trixie; then
    [ -d "$TREE/.git" ] || die "no work tree at $TREE; run 'make tree'"
    "$TOP/scripts/check-debian.sh" --export "$WORK/patches" >&2
    in_trixie "$@"
fi

debtar=$(ls "$DL"/libvirt_"$LIBVIRT_VERSION"-*.debian.tar.xz | sort -V | tail -1)
orig=$DL/libvirt_$LIBVIRT_VERSION.orig.tar.xz
debver=$(basename "$debtar" .debian.tar.xz)
debver=${debver#libvirt_}
version=$debver+snapdel$DEB_REVISION

# (each patch without its first line, which names a commit made just now)
stamp=$( { cat "$0" "$debtar"; for p in "$WORK"/patches/*.patch; do sed 1d "$p"; done; } |
    sha256sum | cut -c1-16)
stamp="$version $stamp"
if [ -f "$DEBS/.stamp" ] && [ "$(cat "$DEBS/.stamp")" = "$stamp" ]; then
    say "packages of $version are up to date in $DEBS"
    exit 0
fi

hold_build_lock
t0=$SECONDS
rm -rf "$SRC" "$DEBS"
mkdir -p "$SRC" "$DEBS"
say "unpacking Debian's libvirt $debver into $SRC"
tar -C "$SRC" --strip-components=1 -xJf "$orig"
tar -C "$SRC" -xJf "$debtar"

# The series after Debian's own patches, as gbp-pq would add a topic.
mkdir -p "$SRC/debian/patches/snapdel"
n=0
for p in "$WORK"/patches/*.patch; do
    cp "$p" "$SRC/debian/patches/snapdel/"
    echo "snapdel/$(basename "$p")" >> "$SRC/debian/patches/series"
    n=$((n + 1))
done
[ $n -gt 0 ] || die "no patches in $WORK/patches"

# The packages' version: Debian's plus '+snapdel<N>', above the release it
# is built from, below Debian's next update of it.
changelog=$SRC/debian/changelog
{
    printf 'libvirt (%s) %s; urgency=medium\n\n' "$version" "$DEBIAN_SUITE"
    printf '  * Add the snapdel patch queue (%d patches in debian/patches/snapdel):\n' $n
    printf '    complete deleting external disk snapshots in the QEMU driver.\n\n'
    printf ' -- snapdel team <team@snapdel.invalid>  %s\n\n' \
        "$(date -R -d "@$(git -C "$TOP" log -1 --format=%ct 2>/dev/null || date +%s)")"
    cat "$changelog"
} > "$changelog.new"
mv "$changelog.new" "$changelog"

opts="parallel=$(nproc) noautodbgsym ${DEB_BUILD_OPTIONS:-}"
say "dpkg-buildpackage -b of libvirt $version (DEB_BUILD_OPTIONS=$opts); log: $WORK/build.log"
# meson picks up ccache from PATH by itself; CCACHE_BASEDIR makes the paths
# relative, so a rebuild of this tree hits the cache
if ! (cd "$SRC" && DEB_BUILD_OPTIONS="$opts" CCACHE_BASEDIR="$SRC" \
        dpkg-buildpackage -b -uc -us) > "$WORK/build.log" 2>&1; then
    die "dpkg-buildpackage failed; last lines of $WORK/build.log:
$(tail -30 "$WORK/build.log")"
fi

mv "$WORK"/*.deb "$DEBS/"
rm -f "$WORK"/*.buildinfo "$WORK"/*.changes
(cd "$DEBS" && sha256sum ./*.deb > SHA256SUMS &&
    dpkg-scanpackages --multiversion . /dev/null > Packages 2>/dev/null)
echo "$stamp" > "$DEBS/.stamp"
say "$(ls "$DEBS"/*.deb | wc -l) packages of libvirt $version in $DEBS ($((SECONDS - t0)) s)"
