#!/bin/bash
# Configure (once), build and install the work tree into the private prefix.
# Only what this work needs is enabled: the QEMU driver, remote, libvirtd,
# virtqemud, virtlogd, virsh and the tests.  The storage driver's dir and fs
# backends are on only because virstoragetest, which covers backing chain
# detection, is built with them.  ccache keeps rebuilds cheap.
#
#   build.sh [--no-install] [SRCDIR]
#
# SRCDIR defaults to the work tree; scripts/check-series.sh builds its
# worktree with the very same options this way.  With SNAPDEL_INSTANCE set
# (see common.sh) SRCDIR is required and is installed into that instance's
# prefix; scripts/bench.sh builds the unpatched base so.
#
# In the trixie root (see in_trixie in common.sh), holding the build lock.
set -euo pipefail
. "$(dirname "$0")/common.sh"
in_trixie "$@"
hold_build_lock

install=1
src=$TREE
for a in "$@"; do
    case "$a" in
        --no-install) install=0 ;;
        *) src=$a ;;
    esac
done
builddir=$src/build
# An instance's options differ from the work tree's: building the work tree
# for it would reconfigure (wipe) the work tree's build directory.
if [ -n "$INSTANCE" ] && [ "$(cd "$src" 2>/dev/null && pwd -P)" = "$(cd "$TREE" 2>/dev/null && pwd -P)" ]; then
    die "SNAPDEL_INSTANCE=$INSTANCE: give the instance's own tree, not the work tree $TREE"
fi
logs=$BUILD/$(basename "$src")

[ -d "$src/.git" ] || [ -f "$src/.git" ] || die "no git tree at $src; run 'make tree' first"
command -v ccache >/dev/null || die "ccache missing; run 'make deps'"
export CC="ccache gcc"

# The options that decide where the daemons keep their sockets are derived
# from the checkout path; a moved checkout gets a fresh configuration.
opts=(
    --prefix="$PREFIX"
    --libdir=lib
    --localstatedir="$STATEDIR"
    -Drunstatedir="$RUNDIR"
    -Dsysconfdir="$PREFIX/etc"
    -Dno_git=true
    -Dsystem=false
    -Ddocs=disabled
    -Dtests=enabled
    -Dexpensive_tests=disabled
    -Dqemu_user=root
    -Dqemu_group=root
    -Ddriver_qemu=enabled
    -Ddriver_remote=enabled
    -Ddriver_libvirtd=enabled
    -Ddriver_test=enabled
    -Ddriver_network=disabled
    -Ddriver_interface=disabled
    -Ddriver_secrets=disabled
    -Ddriver_lxc=disabled
    -Ddriver_libxl=disabled
    -Ddriver_ch=disabled
    -Ddriver_vbox=disabled
    -Ddriver_vmware=disabled
    -Ddriver_vz=disabled
    -Ddriver_esx=disabled
    -Ddriver_hyperv=disabled
    -Ddriver_openvz=disabled
    -Ddriver_bhyve=disabled
    -Dstorage_dir=enabled
    -Dstorage_fs=enabled
    -Dstorage_disk=disabled
    -Dstorage_lvm=disabled
    -Dstorage_iscsi=disabled
    -Dstorage_iscsi_direct=disabled
    -Dstorage_mpath=disabled
    -Dstorage_rbd=disabled
    -Dstorage_scsi=disabled
    -Dstorage_gluster=disabled
    -Dstorage_vstorage=disabled
    -Dstorage_zfs=disabled
    -Dudev=disabled
    -Dpciaccess=disabled
    -Dnss=disabled
    -Dlogin_shell=disabled
    -Dhost_validate=disabled
    -Dwireshark_dissector=disabled
    -Dsanlock=disabled
    -Dpolkit=disabled
    # AppArmor as Debian builds it, for virt-aa-helper and its test; the
    # kernel here cannot load profiles, so the daemon runs without it
    -Dapparmor=enabled
    -Dsecdriver_apparmor=enabled
    -Dapparmor_profiles=disabled
    -Dselinux=disabled
    -Dsecdriver_selinux=disabled
    -Dfirewalld=disabled
    -Dnbdkit=disabled
    -Dssh_proxy=disabled
    -Dinit_script=none
    -Dbash_completion=disabled
)
stamp=$builddir/.snapdel-options
# The toolchain counts too: a build directory another release configured
# (gcc, glibc, python3) is configured anew.
want=$(printf '%s\n' "${opts[@]}"
       echo "# $(. /etc/os-release && echo "$PRETTY_NAME"), $(gcc --version | head -1), python3: $(command -v python3)")
if [ ! -f "$builddir/build.ninja" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "configuring $builddir"
    rm -rf "$builddir"
    (cd "$src" && meson setup build "${opts[@]}") > "$logs-meson-setup.log" 2>&1 ||
        die "meson setup failed; see $logs-meson-setup.log:
$(tail -20 "$logs-meson-setup.log")"
    echo "$want" > "$stamp"
fi

say "building $src"
# meson 1.7 leaves what only the tests use out of 'all': scripts/unit.sh
# runs meson test without rebuilding, so build that too.
ninja -C "$builddir" all meson-test-prereq > "$logs-ninja.log" 2>&1 ||
    die "build failed; see $logs-ninja.log:
$(grep -E 'error|FAILED' "$logs-ninja.log" | head -20)"

[ $install = 1 ] || exit 0

# Install only what changed: meson rewrites the rpath of every installed
# binary, and the daemons are restarted when their files are newer than
# they are (scripts/daemon.sh).
# A ninja run by hand in the build directory counts as a change too.
installed=$builddir/.snapdel-installed
if grep -q '^ninja: no work to do' "$logs-ninja.log" && [ -f "$installed" ] &&
   [ -z "$(find "$builddir/src" "$builddir/tools" -type f -newer "$installed" -print -quit)" ]; then
    exit 0
fi
rm -f "$installed"
ninja -C "$builddir" install > "$logs-install.log" 2>&1 ||
    die "install failed; see $logs-install.log"
touch "$installed"
