#!/bin/bash
# 'make check': every test.  The series check (each patch built and tested
# alone: compilers and meson test, CPU bound) runs in the background while
# the Debian apply check and the end-to-end suite (QEMU under TCG and
# qemu-img, mostly waiting) run in the foreground.  On 2 CPUs both take
# about 26 minutes side by side (measured on a clean clone: 29 minutes for
# all of 'make check'; in the trixie root 23 for e2e and about 26 for the
# series check), where one after the other they would add up.  Its
# output is shown when both are done.
set -uo pipefail
. "$(dirname "$0")/common.sh"

mkdir -p "$BUILD"
log=$BUILD/check-series.log
"$TOP/scripts/check-series.sh" > "$log" 2>&1 &
series=$!
# a failing foreground step must not leave the series check running
trap 'kill $series 2>/dev/null' EXIT

rc=0
make -C "$TOP" --no-print-directory check-debian e2e || rc=$?

if wait "$series"; then
    tail -1 "$log"
else
    echo "check-series failed (full log: $log):"
    tail -40 "$log"
    rc=1
fi
trap - EXIT
exit $rc
