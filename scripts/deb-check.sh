#!/bin/bash
# 'make deb-check': the packages of 'make deb', installed as a trixie admin
# installs them, then end-to-end tests against the packaged daemon.
#
# A fresh copy of the trixie root (an overlay over the cached root, its
# changes in $BUILD/deb-root, thrown away at the next run) gets $DEBS as an
# apt source and 'apt-get install libvirt-daemon-system', so that apt picks
# our packages over Debian's and Debian's mirror supplies the rest.  The
# packaged virtlogd and libvirtd are started by hand (there is no systemd;
# Debian 13 ships the monolithic libvirtd, not virtqemud) with Debian's
# configuration files, plus only what this machine needs
# (scripts/daemon.sh, SNAPDEL_PACKAGED), and the tests in DEB_CHECK_TESTS
# run against them: a linear chain, --children and --children-only,
# branched and mixed trees, a template below the disk, a LUKS-encrypted
# disk (libvirtd has the secret driver the private virtqemud lacks), resuming after the
# daemon was killed, and virt-manager's Delete button (its packages:
# DEB_CHECK_GUI_PACKAGES).  Arguments go to pytest.
#
# SNAPDEL_DEB_STOCK=1 (make deb-check-stock) does the same with Debian's own
# packages, without the series, to show what they do: the tests that need
# the series are skipped there (SNAPDEL_SERIES_ON_BASE=1 runs them anyway).
set -euo pipefail
. "$(dirname "$0")/common.sh"

DEB_CHECK_TESTS=(
    tests/e2e/test_delete_linear.py::test_delete_single
    tests/e2e/test_delete_engine.py::test_delete_children
    tests/e2e/test_delete_engine.py::test_delete_children_only
    tests/e2e/test_delete_branched.py::test_delete_children_branched
    tests/e2e/test_delete_mixed.py::test_delete_each
    tests/e2e/test_delete_template.py::test_delete_single
    tests/e2e/test_delete_storage.py::test_encrypted_running
    "tests/e2e/test_delete_resume.py::test_kill_offline[s2-commit-rebase]"
    tests/e2e/test_delete_resume.py::test_start_finishes_pending_delete
    tests/e2e/test_virt_manager.py
)

# What tests/e2e/test_virt_manager.py needs besides libvirt: virt-manager
# 5.0 under Xvfb, driven through AT-SPI (the accessibility bus launcher and
# registry, dogtail) on a session bus, with ImageMagick's 'import' for its
# screenshots.  Without them the test skips itself.
DEB_CHECK_GUI_PACKAGES=(virt-manager xvfb at-spi2-core python3-dogtail dbus imagemagick)

OVERLAY=$BUILD/deb-root
# The packages apt downloads from Debian's mirror, kept from run to run (the
# copy of the root is not).
APT_ARCHIVES=/var/cache/snapdel/deb-check-apt

STOCK=${SNAPDEL_DEB_STOCK:-}

if ! inside_trixie; then
    [ -n "$STOCK" ] || [ -f "$DEBS/Packages" ] || die "no packages in $DEBS; run 'make deb'"
    [ "$(id -u)" -eq 0 ] || die "needs root"
    rm -rf --one-file-system "$OVERLAY"
    mkdir -p "$OVERLAY" "$APT_ARCHIVES/partial"
    exec "$TOP/scripts/trixie-root.sh" run --overlay "$OVERLAY" --bind "$TOP" \
        --bind /var/tmp --bind /tmp --bind "$APT_ARCHIVES" \
        /bin/bash -c 'cd "$1" && shift && exec "$@"' deb-check "$TOP" \
        /usr/bin/env SNAPDEL_DEB_CHECK_INSIDE=1 SNAPDEL_DEB_STOCK="$STOCK" \
        SNAPDEL_SERIES_ON_BASE="${SNAPDEL_SERIES_ON_BASE:-}" "$TOP/scripts/deb-check.sh" "$@"
fi
[ -n "${SNAPDEL_DEB_CHECK_INSIDE:-}" ] ||
    die "run 'make deb-check' outside the trixie root: it needs a copy of the root of its own"

t0=$SECONDS
apt=(apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dir::Cache::Archives="$APT_ARCHIVES")
if [ -n "$STOCK" ]; then
    from="Debian's mirror"
else
    version=$(sed -n 's/^Version: //p' "$DEBS/Packages" | sort -u)
    [ "$(echo "$version" | wc -l)" -eq 1 ] || die "$DEBS holds more than one version: $version"
    from=$DEBS
    echo "deb [trusted=yes] file:$DEBS ./" > /etc/apt/sources.list.d/snapdel-debs.list
fi
"${apt[@]}" update > "$OVERLAY/apt.log" 2>&1 ||
    die "apt-get update failed:
$(tail -5 "$OVERLAY/apt.log")"
if [ -n "$STOCK" ]; then
    version=$(apt-cache policy libvirt-daemon-system | sed -n 's/^ *Candidate: //p')
    case $version in *+snapdel*|''|'(none)') die "Debian's mirror offers libvirt '$version'" ;; esac
fi
say "installing libvirt $version from $from in a copy of the trixie root"
"${apt[@]}" install libvirt-daemon-system libvirt-clients >> "$OVERLAY/apt.log" 2>&1 ||
    die "apt-get install libvirt-daemon-system failed:
$(tail -20 "$OVERLAY/apt.log")"

# Every libvirt package installed must be of that version (ours, or with
# SNAPDEL_DEB_STOCK Debian's), the bindings' libvirt0 too.
wrong=$(dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\n' 'libvirt*' |
    awk -v v="$version" '$1 == "ii" && $3 != v { print $2 " " $3 }')
[ -z "$wrong" ] || die "installed, but not $version:
$wrong"
say "installed $(dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' 'libvirt*' |
    awk '$1 == "ii"' | wc -l) libvirt packages of $version ($((SECONDS - t0)) s)"

# After the check above: virt-manager brings libvirt-glib, which is not
# libvirt's source package; the libvirt0 just checked must stay.
"${apt[@]}" install "${DEB_CHECK_GUI_PACKAGES[@]}" >> "$OVERLAY/apt.log" 2>&1 ||
    die "apt-get install ${DEB_CHECK_GUI_PACKAGES[*]} failed:
$(tail -20 "$OVERLAY/apt.log")"
[ "$(dpkg-query -W -f '${Version}' libvirt0)" = "$version" ] ||
    die "installing ${DEB_CHECK_GUI_PACKAGES[*]} replaced libvirt0 $version"
say "installed ${DEB_CHECK_GUI_PACKAGES[*]} ($((SECONDS - t0)) s)"

# The daemons live in this copy of the root: stop them when done, whatever
# the outcome, so that nothing keeps it mounted.
export SNAPDEL_PACKAGED=1
[ -n "$STOCK" ] && export SNAPDEL_DEB_STOCK=1
trap '"$TOP/scripts/daemon.sh" stop' EXIT
"$TOP/scripts/e2e.sh" "${DEB_CHECK_TESTS[@]}" "$@"
