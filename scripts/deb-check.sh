#!/bin/bash
# 'make deb-check': the packages of 'make deb', installed as a trixie admin
# installs them, then end-to-end tests against the packaged daemon.
#
# A fresh copy of the trixie root (an overlay over the cached root, its
# changes in $BUILD/deb-root, thrown away at the next run) gets $DEBS as an
# apt source and 'apt-get install libvirt-daemon-system', so that apt picks
# our packages over Debian's and Debian's mirror supplies the rest.  The
# packaged virtlogd and virtqemud are started by hand (there is no systemd)
# with Debian's configuration files, plus only what this machine needs
# (scripts/daemon.sh, SNAPDEL_PACKAGED), and the tests in DEB_CHECK_TESTS
# run against them: a linear chain, --children and --children-only,
# branched and mixed trees, a template below the disk, and resuming after
# the daemon was killed.  Arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/common.sh"

DEB_CHECK_TESTS=(
    tests/e2e/test_delete_linear.py::test_delete_single
    tests/e2e/test_delete_engine.py::test_delete_children
    tests/e2e/test_delete_engine.py::test_delete_children_only
    tests/e2e/test_delete_branched.py::test_delete_children_branched
    tests/e2e/test_delete_mixed.py::test_delete_each
    tests/e2e/test_delete_template.py::test_delete_single
    "tests/e2e/test_delete_resume.py::test_kill_offline[s2-commit-rebase]"
    tests/e2e/test_delete_resume.py::test_start_finishes_pending_delete
)

OVERLAY=$BUILD/deb-root

if ! inside_trixie; then
    [ -f "$DEBS/Packages" ] || die "no packages in $DEBS; run 'make deb'"
    [ "$(id -u)" -eq 0 ] || die "needs root"
    rm -rf --one-file-system "$OVERLAY"
    mkdir -p "$OVERLAY"
    exec "$TOP/scripts/trixie-root.sh" run --overlay "$OVERLAY" --bind "$TOP" \
        --bind /var/tmp --bind /tmp \
        /bin/bash -c 'cd "$1" && shift && exec "$@"' deb-check "$TOP" \
        /usr/bin/env SNAPDEL_DEB_CHECK_INSIDE=1 "$TOP/scripts/deb-check.sh" "$@"
fi
[ -n "${SNAPDEL_DEB_CHECK_INSIDE:-}" ] ||
    die "run 'make deb-check' outside the trixie root: it needs a copy of the root of its own"

t0=$SECONDS
version=$(sed -n 's/^Version: //p' "$DEBS/Packages" | sort -u)
[ "$(echo "$version" | wc -l)" -eq 1 ] || die "$DEBS holds more than one version: $version"
say "installing libvirt $version from $DEBS in a copy of the trixie root"
echo "deb [trusted=yes] file:$DEBS ./" > /etc/apt/sources.list.d/snapdel-debs.list
apt=(apt-get -q -y -o DPkg::Lock::Timeout=300)
"${apt[@]}" update > "$OVERLAY/apt.log" 2>&1 ||
    die "apt-get update failed:
$(tail -5 "$OVERLAY/apt.log")"
"${apt[@]}" install libvirt-daemon-system libvirt-clients >> "$OVERLAY/apt.log" 2>&1 ||
    die "apt-get install libvirt-daemon-system failed:
$(tail -20 "$OVERLAY/apt.log")"

# Every libvirt package installed must be ours, the bindings' libvirt0 too.
wrong=$(dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\n' 'libvirt*' |
    awk -v v="$version" '$1 == "ii" && $3 != v { print $2 " " $3 }')
[ -z "$wrong" ] || die "installed, but not $version:
$wrong"
say "installed $(dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' 'libvirt*' |
    awk '$1 == "ii"' | wc -l) libvirt packages of $version ($((SECONDS - t0)) s)"

export SNAPDEL_PACKAGED=1
exec "$TOP/scripts/e2e.sh" "${DEB_CHECK_TESTS[@]}" "$@"
