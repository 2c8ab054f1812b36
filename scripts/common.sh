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

# Who QEMU runs as (scripts/daemon.sh): libvirt-qemu under DAC, as on Debian,
# or root without DAC.
QEMU_USER=${SNAPDEL_QEMU_USER:-libvirt-qemu}

# Debian's interpreter and tools come first: meson's python3 (for libvirt's
# own scripts and its pytest-based tests) must be the one apt installs
# python3-pytest and python3-libvirt for, not another one earlier on PATH.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

# ccache, shared by the work tree's build and the per-patch worktree: paths
# below $BUILD are hashed relative to it, and the build directory is not
# hashed, so a file no patch touched compiles once for all of them.
export CCACHE_BASEDIR=$BUILD
export CCACHE_NOHASHDIR=1

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
