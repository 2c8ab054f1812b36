#!/bin/bash
# 'make check': every test.  Two lanes, side by side on the 2 CPUs:
#
#   background  the series check (each patch built and tested alone), then
#               'make deb' (the packages): compilers and meson test, CPU bound
#   foreground  the Debian apply check and the end-to-end suite (QEMU under
#               TCG and qemu-img, mostly waiting)
#
# and when both are done, 'make deb-check' (the packages installed in a copy
# of the trixie root, e2e tests and virt-manager against them).  Measured on
# a clean clone: about 26 minutes for each lane, 5 for deb-check.  The
# background lane's output is shown when it is done.
set -uo pipefail
. "$(dirname "$0")/common.sh"

mkdir -p "$BUILD"
log=$BUILD/check-series.log
{ "$TOP/scripts/check-series.sh" && "$TOP/scripts/deb.sh"; } > "$log" 2>&1 &
series=$!
# a failing foreground step must not leave the series check running
trap 'kill $series 2>/dev/null' EXIT

rc=0
make -C "$TOP" --no-print-directory check-debian e2e || rc=$?

if wait "$series"; then
    grep -E '^(series|==> [0-9]+ packages|==> packages)' "$log"
    "$TOP/scripts/deb-check.sh" -q || rc=1
else
    echo "check-series or make deb failed (full log: $log):"
    tail -40 "$log"
    rc=1
fi
trap - EXIT
exit $rc
