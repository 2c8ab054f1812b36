#!/bin/bash
# 'make bench': how long deleting an external snapshot of a shut-off domain
# takes, side by side in one run:
#
#   upstream  the unpatched base (tag 'base'), built from the worktree
#             build/bench-base into build/base-prefix and run as the second
#             daemon instance 'base' (SNAPDEL_INSTANCE, see common.sh);
#   patched   whatever is installed in build/prefix, on the normal private
#             daemon (this script does not build it: 'make build' does);
#   floor     dd of the same bytes (the delta) with fsync.
#
# Scenarios (scripts/bench.py): a disk with snapshots s1 -> s2 -> s3 and
# 1 MiB written before each and after the last; delete s2 (middle) or s3
# (current), once on a single image (4 images deep at delete time) and once
# on 197 layers (200 deep, libvirt's limit).  Each delete is
# timed BENCH_REPS times (default 5) on a fresh setup; the table shows median
# and min.  A delete that fails is reported as such, not repeated.
#
# BENCH_LOCK (default: the build lock, see common.sh) is held while the clock
# runs, so that no build waiting for it competes for the CPUs; BENCH_LOCK=
# disables that.  The base's build holds the build lock as every build does.
# Not part of 'make check': it prints numbers and asserts none.  In the
# trixie root (see in_trixie in common.sh), as the daemons it measures.
set -euo pipefail
. "$(dirname "$0")/common.sh"
in_trixie "$@"

reps=${BENCH_REPS:-5}
lock=${BENCH_LOCK-$BUILD_LOCK}
[[ $reps =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPS must be a positive number"
[ -z "$INSTANCE" ] || die "run the bench without SNAPDEL_INSTANCE; it manages the instances"
[ "$(id -u)" -eq 0 ] || die "the private daemons run as root"
[ -x "$PREFIX/sbin/virtqemud" ] || die "no patched build in $PREFIX; run 'make build'"
[ -d "$TREE/.git" ] || die "no work tree at $TREE; run 'make tree'"
base_commit=$(git -C "$TREE" rev-parse -q --verify 'base^{commit}') ||
    die "no tag 'base' in $TREE; run 'make tree'"

started=$(date +%s)
waited=0
PY=/usr/bin/python3
DRIVER=$TOP/scripts/bench.py
CHAIN_LAYERS=197            # + s1, s2, s3 = 200 layers at delete time
work=/var/tmp/snapdel-bench-$STATE_ID
results=$BUILD/bench/$(date +%Y%m%d-%H%M%S)

# -- the unpatched base: worktree, build, daemons -----------------------------
# The worktree is recreated when it is missing, stale (its repository was
# recreated by 'make tree FORCE=1'), not at 'base', or modified.
wt=$BUILD/bench-base
wt_ok() {
    [ -f "$wt/.git" ] &&
    [ "$(git -C "$wt" rev-parse --show-toplevel 2>/dev/null)" = "$wt" ] &&
    [ "$(git -C "$wt" rev-parse HEAD 2>/dev/null)" = "$base_commit" ] &&
    [ -z "$(git -C "$wt" status --porcelain --untracked-files=no 2>/dev/null)" ]
}
if ! wt_ok; then
    say "creating the worktree $wt at 'base'"
    rm -rf "$wt"
    git -C "$TREE" worktree prune
    git -C "$TREE" worktree add -q --detach "$wt" "$base_commit"
    # the unpacked subproject is not in git (see tree.sh)
    mkdir -p "$wt/subprojects"
    cp -a "$TREE/subprojects/keycodemapdb" "$wt/subprojects/"
fi
[ -n "$BUILD_LOCK" ] && say "building the unpatched base (waits for $BUILD_LOCK)"
SNAPDEL_INSTANCE=base "$TOP/scripts/build.sh" "$wt"

base_running=0
if SNAPDEL_INSTANCE=base "$TOP/scripts/daemon.sh" status | grep -q '^virtqemud: running'; then
    base_running=1
fi
cleanup() {
    rm -rf "$work"
    # the base's daemons are the bench's own: stop them unless they were
    # running before (another bench)
    if [ $base_running = 0 ]; then
        SNAPDEL_INSTANCE=base "$TOP/scripts/daemon.sh" stop || true
    fi
}
trap cleanup EXIT
# Both daemons start before the lock is taken: they must not inherit it.
"$TOP/scripts/daemon.sh" start
SNAPDEL_INSTANCE=base "$TOP/scripts/daemon.sh" start

rm -rf "$work"
mkdir -p "$work" "$results"

# -- measure -------------------------------------------------------------------
if [ -n "$lock" ]; then
    say "waiting for $lock (held while measuring)"
    waited=$(date +%s)
    exec 9>>"$lock"
    flock 9
    waited=$(( $(date +%s) - waited ))
fi
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
say "building a chain of $CHAIN_LAYERS qcow2 layers"
chaintop=$("$PY" "$DRIVER" chain "$work/chain" "$CHAIN_LAYERS")

say "measuring upstream (build/base-prefix), $reps repetitions"
(eval "$(SNAPDEL_INSTANCE=base "$TOP/scripts/env.sh")" &&
 "$PY" "$DRIVER" measure base "$work" "$chaintop" "$reps" "$results/base.json")
say "measuring patched (build/prefix), $reps repetitions"
(eval "$("$TOP/scripts/env.sh")" &&
 "$PY" "$DRIVER" measure patched "$work" "$chaintop" "$reps" "$results/patched.json")
say "measuring the floor"
"$PY" "$DRIVER" floor "$work/floor" "$reps" "$results/floor.json"
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -n "$lock" ]; then
    exec 9>&-
fi

# -- report ----------------------------------------------------------------------
{
    "$PY" "$DRIVER" report "$results/base.json" "$results/patched.json" "$results/floor.json"
    installed=$(date -r "$PREFIX/sbin/virtqemud" '+%Y-%m-%d %H:%M')
    echo "patched install:  virtqemud of $installed; work tree HEAD $(git -C "$TREE" log -1 --format='%h %s')"
    echo "load average:     $load_before before measuring, $load_after after ($(nproc) CPUs)"
    echo "bench took $(( $(date +%s) - started )) s ($waited s of it waiting for the lock); raw samples in $results"
} | tee "$results/table.txt"
