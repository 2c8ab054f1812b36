# Shared settings for every script of the patch queue.  Source it; do not run it.
#
# Everything a fresh machine needs is derived from here: the pinned base, the
# paths of the work tree and of the private install, and the short state
# directories the daemons use for their sockets.

# The one place the base is pinned.  The tarball is Debian's
# libvirt_<version>.orig.tar.xz, which is the upstream release unmodified.
LIBVIRT_VERSION=11.3.0
LIBVIRT_ORIG_SHA256=6bcb0c42c4580436fea262ced56f68a6afe20f7390b1bea2116718cc034a0283
DEBIAN_SUITE=trixie

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
BUILD=$TOP/build
DL=$BUILD/dl
TREE=$BUILD/libvirt
BUILDDIR=$TREE/build
PREFIX=$BUILD/prefix
SERIES=$TOP/patches/series

# 'make deb' (scripts/deb.sh): where the packages go, and our revision on top
# of Debian's version (11.3.0-3+deb13u3 becomes 11.3.0-3+deb13u3+snapdel1).
DEBS=$BUILD/debs
DEB_REVISION=1

# Unix socket paths are limited to 108 bytes and CI clones into paths we do
# not control, so the daemons' state lives outside the checkout, in a short
# directory named after a hash of the checkout's path: two checkouts on one
# machine never share a daemon.  runstatedir must be $STATEDIR/run: that is
# where libvirt's client looks for the daemons' sockets (LOCALSTATEDIR/run,
# see src/remote/remote_sockets.c), while the daemons use RUNSTATEDIR.
STATE_ID=$(printf '%s' "$TOP" | sha256sum | cut -c1-8)
STATEDIR=/var/lib/snapdel/$STATE_ID

# SNAPDEL_INSTANCE, unset by default, names a second install of this checkout
# that runs side by side with the default one: its own prefix
# ($BUILD/<instance>-prefix) and its own daemons' state and sockets
# (/var/lib/snapdel/<id>-<instance>).  scripts/bench.sh builds the unpatched
# base as instance 'base' from the worktree build/bench-base.  The source tree
# is not derived from it: scripts/build.sh takes the instance's tree as its
# argument and refuses to build the work tree into an instance's prefix.
INSTANCE=${SNAPDEL_INSTANCE:-}
if [ -n "$INSTANCE" ]; then
    # short and plain: it becomes part of the daemons' socket paths
    if ! [[ $INSTANCE =~ ^[a-z0-9]{1,16}$ ]]; then
        echo "error: SNAPDEL_INSTANCE='$INSTANCE': use 1-16 of [a-z0-9]" >&2
        exit 1
    fi
    PREFIX=$BUILD/$INSTANCE-prefix
    STATEDIR=$STATEDIR-$INSTANCE
fi
RUNDIR=$STATEDIR/run
LOGDIR=$STATEDIR/log

# SNAPDEL_PACKAGED=1: the daemons are the ones 'make deb' packaged, installed
# in a copy of the trixie root by scripts/deb-check.sh: Debian's paths, the
# packages' own configuration files (scripts/daemon.sh only adds what this
# machine needs), libvirt.so from libvirt0.
# QEMUD is the daemon that runs the QEMU driver: the modular virtqemud for the
# private build; Debian 13 packages only the monolithic libvirtd (its
# debian/not-installed lists virtqemud), so that is what a trixie admin runs.
QEMUD=virtqemud
PACKAGED=${SNAPDEL_PACKAGED:-}
if [ -n "$PACKAGED" ]; then
    QEMUD=libvirtd
    [ -z "$INSTANCE" ] || { echo "error: SNAPDEL_PACKAGED and SNAPDEL_INSTANCE exclude each other" >&2; exit 1; }
    PREFIX=/usr
    STATEDIR=/var
    RUNDIR=/run
    LOGDIR=/var/log/libvirt
fi

# Who QEMU runs as (scripts/daemon.sh): libvirt-qemu under DAC, as on Debian,
# or root without DAC.
QEMU_USER=${SNAPDEL_QEMU_USER:-libvirt-qemu}

# Debian's interpreter and tools come first: meson's python3 (for libvirt's
# own scripts and its pytest-based tests) must be the one apt installs
# python3-pytest and python3-libvirt for, not another one earlier on PATH.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

# ccache, shared by the work tree's build and the per-patch worktree: paths
# below $BUILD are hashed relative to it, and the build directory is not
# hashed, so a file no patch touched compiles once for all of them.  It is
# kept outside the trixie root (a changed root starts anew, the cache not).
export CCACHE_BASEDIR=$BUILD
export CCACHE_NOHASHDIR=1
export CCACHE_DIR=/var/cache/snapdel/ccache-trixie

# Builds and test runs on this machine take turns on its 2 CPUs:
# scripts/build.sh and scripts/unit.sh hold this lock while they compile or
# test, scripts/bench.sh while it measures.  SNAPDEL_BUILD_LOCK= for none.
BUILD_LOCK=${SNAPDEL_BUILD_LOCK-/tmp/snapdel-build.lock}
hold_build_lock() {
    [ -n "$BUILD_LOCK" ] || return 0
    exec 8>>"$BUILD_LOCK"
    flock 8
}

# The stack: libvirt is built, tested and run in the Debian trixie root of
# scripts/trixie-root.sh (trixie's gcc, meson and glibc, QEMU 10.0, python3
# and python3-libvirt), as trixie ships it; this machine's own Debian only
# fetches the base, applies, exports and lints the series.  What the root
# builds cannot run out here (a newer glibc), so a script that builds or runs
# libvirt, QEMU or the tests calls 'in_trixie "$@"' first: outside the root it
# runs itself again in there, with the checkout, the daemons' state
# (/var/lib/snapdel), /var/tmp (the e2e suite's images), /tmp (the build
# lock) and the ccache bind-mounted at their own paths, so that every path
# means the same in both, and with the variables the scripts read
# (SNAPDEL_*, BENCH_*, VIRTQEMUD_CONF_EXTRA).
inside_trixie() {
    [ -f /etc/snapdel-root ]
}
in_trixie() {
    inside_trixie && return 0
    local env=() v
    for v in $(compgen -e); do
        case $v in SNAPDEL_*|BENCH_*|VIRTQEMUD_CONF_EXTRA) env+=("$v=${!v}") ;; esac
    done
    mkdir -p /var/lib/snapdel "$CCACHE_DIR"
    exec "$TOP/scripts/trixie-root.sh" run --bind "$TOP" --bind /var/lib/snapdel \
        --bind /var/tmp --bind /tmp --bind "$CCACHE_DIR" \
        /usr/bin/env "${env[@]}" /bin/bash -c 'cd "$1" && shift && exec "$@"' in_trixie \
        "$TOP" "$TOP/scripts/$(basename "$0")" "$@"
}

# Identity used for the commits the tooling makes itself (the base commit and
# the committer of applied patches).  Patch authors come from the patches.
export GIT_COMMITTER_NAME=${GIT_COMMITTER_NAME:-snapdel tooling}
export GIT_COMMITTER_EMAIL=${GIT_COMMITTER_EMAIL:-snapdel@localhost}

die() {
    echo "error: $*" >&2
    exit 1
}

say() {
    echo "==> $*" >&2
}

# The patches named by the series file, in order, as absolute paths.
series_patches() {
    local p
    [ -f "$SERIES" ] || die "$SERIES is missing"
    while read -r p; do
        case "$p" in ''|\#*) continue ;; esac
        [ -f "$TOP/patches/$p" ] || die "patches/series lists '$p', which does not exist"
        echo "$TOP/patches/$p"
    done < "$SERIES"
}
