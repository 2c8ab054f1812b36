#!/bin/bash
# Re-export patches/ from the work tree: every commit after 'base' becomes one
# patch, and patches/series lists them in order.  The export is reproducible
# (zero commit ids, no signature, no numbering, fixed abbreviation), so an
# unchanged series re-exports byte-identical.
#
#   export.sh            write patches/ and patches/series
#   export.sh --compare  only tell (exit 1) whether the tree differs from patches/
set -euo pipefail
. "$(dirname "$0")/common.sh"

[ -d "$TREE/.git" ] || die "no work tree at $TREE; create it with 'make tree'"
cd "$TREE"
git rev-parse -q --verify base >/dev/null || die "$TREE has no 'base' tag"
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
    die "$TREE has uncommitted changes; commit them (git commit --amend or fixup) before exporting"

out=$(mktemp -d "$BUILD/export.XXXXXX")
trap 'rm -rf "$out"' EXIT
git -c core.abbrev=12 -c diff.noprefix=false -c format.signOff=false \
    format-patch -q --zero-commit --no-signature -N --no-cover-letter \
    -o "$out" base..HEAD >/dev/null
(cd "$out" && ls -1 -- *.patch 2>/dev/null || true) > "$out/series"

if [ "${1:-}" = --compare ]; then
    diff -r -q "$out" "$TOP/patches" >/dev/null
    exit $?
fi

mkdir -p "$TOP/patches"
rm -f "$TOP/patches"/*.patch
cp "$out"/*.patch "$TOP/patches/" 2>/dev/null || true
cp "$out/series" "$SERIES"
say "exported $(grep -c . "$SERIES" || true) patches to patches/"
