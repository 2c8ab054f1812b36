#!/bin/bash
# Check the series the way a libvirt reviewer reads it:
#  - patches/series and the patch files match, both ways;
#  - every patch was exported by scripts/export.sh (zero commit id), and the
#    work tree re-exports byte-identical to patches/ (nothing hand-edited);
#  - a libvirt-style subject: 'component: [sub: ]Summary', at most 72 chars;
#  - a body that explains why (not just a subject);
#  - a Signed-off-by from the author;
#  - docs after the code they describe, NEWS last: once a 'docs: ' patch
#    comes, only docs and NEWS follow, and the last patch is the NEWS one.
set -euo pipefail
. "$(dirname "$0")/common.sh"

errors=0
bad() { echo "lint: $*" >&2; errors=$((errors + 1)); }

mapfile -t listed < <(series_patches)
seen_docs=
for f in "$TOP"/patches/*.patch; do
    [ -e "$f" ] || continue
    # not printf | grep -q: grep may exit before printf is done, and
    # pipefail then fails the pipeline (SIGPIPE) although the name matched
    grep -qxF -- "$f" <<< "$(printf '%s\n' "${listed[@]}")" ||
        bad "$(basename "$f") is not listed in patches/series"
done

for f in "${listed[@]}"; do
    n=$(basename "$f")
    head -1 "$f" | grep -q '^From 0\{40\} ' || bad "$n: not exported with --zero-commit (use 'make export')"
    subj=$(awk '/^Subject: /{sub(/^Subject: (\[PATCH[^]]*\] )?/, ""); s=$0; getline; while ($0 ~ /^ /) {s = s $0; getline} print s; exit}' "$f")
    echo "$subj" | grep -qE '^[A-Za-z0-9_.-]+(: [A-Za-z0-9_.-]+)*: [A-Za-z]' ||
        bad "$n: subject '$subj' lacks a libvirt-style prefix ('qemu_snapshot: ', 'util: json: ', 'tests: ', 'docs: ')"
    [ ${#subj} -le 72 ] || bad "$n: subject is ${#subj} characters (keep it under 72)"
    case $subj in
    NEWS:*)
        [ "$f" = "${listed[-1]}" ] || bad "$n: the NEWS patch must be the last one" ;;
    docs:*)
        seen_docs=$n ;;
    *)
        [ -z "$seen_docs" ] || bad "$n: comes after the docs patch $seen_docs; code and tests go before docs" ;;
    esac
    author=$(sed -n 's/^From: \(.*\)$/\1/p' "$f" | head -1)
    # The body: after the headers' blank line, up to the '---' separator.
    body=$(awk 'h == 0 && /^$/ {h = 1; next} h == 1 && /^---$/ {exit} h == 1 {print}' "$f")
    words=$(echo "$body" | grep -v '^Signed-off-by:' | wc -w)
    [ "$words" -ge 15 ] || bad "$n: commit message body has $words words; explain why the change is needed"
    echo "$body" | grep -qxF "Signed-off-by: $author" || bad "$n: no 'Signed-off-by: $author'"
done

if [ -d "$TREE/.git" ]; then
    "$TOP/scripts/export.sh" --compare ||
        bad "patches/ differs from what the work tree exports; run 'make export' (never hand-edit a patch)"
fi

if [ $errors -gt 0 ]; then
    echo "lint: 0 passed, $errors failed"
    exit 1
fi
echo "lint: ${#listed[@]} passed, 0 failed"
