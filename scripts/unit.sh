#!/bin/bash
# libvirt's own test suite on the work tree, syntax-check included.  The
# syntax-check suite needs the git tree and a finished build (po_check reads
# generated files), which is why it runs after scripts/build.sh.  In the
# trixie root (see in_trixie in common.sh), holding the build lock.
set -euo pipefail
. "$(dirname "$0")/common.sh"
in_trixie "$@"
hold_build_lock

dir=${1:-$BUILDDIR}
meson test -C "$dir" --no-rebuild --print-errorlogs --num-processes "$(nproc)" \
    > "$dir/meson-test.log" 2>&1 || {
    grep -E '^ *[0-9]+/[0-9]+ .*(FAIL|TIMEOUT|ERROR)' "$dir/meson-test.log" >&2 || true
    tail -40 "$dir/meson-test.log" >&2
    die "meson test failed in $dir (full log: $dir/meson-test.log)"
}
# Print meson's own summary, then the plain closing line CI reads.
sed -n '/^Ok:/,/^Timeout:/p' "$dir/meson-test.log"
ok=$(sed -n 's/^Ok: *\([0-9]*\)/\1/p' "$dir/meson-test.log" | tr -d ' ')
fail=$(sed -n 's/^Fail: *\([0-9]*\)/\1/p' "$dir/meson-test.log" | tr -d ' ')
skip=$(sed -n 's/^Skipped: *\([0-9]*\)/\1/p' "$dir/meson-test.log" | tr -d ' ')
sc=$(grep -c 'libvirt:syntax-check' "$dir/meson-test.log" || true)
echo "syntax-check suite: $sc tests"
echo "unit: $ok passed, $fail failed, $skip skipped"
