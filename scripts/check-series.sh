#!/bin/bash
# "Tests pass after each patch": build every commit of the series on its own
# and run libvirt's test suite (syntax-check included) on it.
#
# The commits are checked out one after the other in a separate worktree with
# its own build directory, so the developer's tree is never touched and each
# step is an incremental build.  ccache with a shared base directory makes the
# files no patch touched hit the cache.  The last commit is the work tree's
# HEAD, which 'make unit' tests already; pass --all to build it here too.
set -euo pipefail
. "$(dirname "$0")/common.sh"

[ -d "$TREE/.git" ] || die "no work tree at $TREE; run 'make tree'"

mapfile -t commits < <(git -C "$TREE" rev-list --reverse base..HEAD)
total=${#commits[@]}
if [ "${1:-}" != --all ] && [ "$total" -gt 0 ]; then
    unset "commits[$((total - 1))]"
fi
if [ ${#commits[@]} -eq 0 ]; then
    echo "series: 0 patches to check besides HEAD (HEAD is checked by 'make unit')"
    exit 0
fi

wt=$BUILD/series-check
if [ ! -d "$wt/.git" ] && [ ! -f "$wt/.git" ]; then
    rm -rf "$wt"
    git -C "$TREE" worktree prune
    git -C "$TREE" worktree add -q --detach "$wt" base
    # The worktree needs the unpacked subproject too (it is not in git).
    mkdir -p "$wt/subprojects"
    cp -a "$TREE/subprojects/keycodemapdb" "$wt/subprojects/"
fi

passed=0
i=0
for c in "${commits[@]}"; do
    i=$((i + 1))
    subj=$(git -C "$TREE" log -1 --format=%s "$c")
    say "patch $i/$total: $subj"
    git -C "$wt" checkout -q --detach "$c"
    "$TOP/scripts/build.sh" --no-install "$wt" 2> "$BUILD/series-check.err" ||
        die "patch $i/$total '$subj' does not build:
$(grep -v '^==>' "$BUILD/series-check.err")"
    "$TOP/scripts/unit.sh" "$wt/build" >/dev/null ||
        die "patch $i/$total '$subj' builds, but meson test fails (log: $wt/build/meson-test.log)"
    passed=$((passed + 1))
done
echo "series: $passed passed, 0 failed (patches 1..$passed of $total built and tested alone)"
