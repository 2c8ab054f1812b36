#!/bin/bash
# Cheap check, no build: does the series also apply on top of Debian trixie's
# patched libvirt tree?  Debian's packaging tarball comes with the base; its
# debian/patches are applied in quilt order onto 'base' in a scratch worktree,
# then the series with 'git am', exactly as a packager dropping our patches
# into debian/patches would stack them.  A patch whose message names the
# Debian patch that already carries its fix ('Debian-Carries: <path>' in
# debian/patches) is left out, once that patch is checked to be in Debian's
# series.
#
#   check-debian.sh                check only
#   check-debian.sh --export DIR   also write the series as it applies on
#                                  Debian's tree into DIR, one patch per file
#                                  without git's rename notation (quilt and
#                                  dpkg-source want plain diffs), for 'make deb'
set -euo pipefail
. "$(dirname "$0")/common.sh"

export_dir=
if [ "${1:-}" = --export ]; then
    [ -n "${2:-}" ] || die "usage: $0 [--export DIR]"
    export_dir=$2
fi

[ -d "$TREE/.git" ] || die "no work tree at $TREE; run 'make tree'"
debtar=$(ls "$DL"/libvirt_"$LIBVIRT_VERSION"-*.debian.tar.xz 2>/dev/null | sort -V | tail -1)
[ -n "$debtar" ] || die "no Debian packaging tarball in $DL; run 'make base'"

# a worktree of its own: 'make check' runs this for itself and for 'make deb'
wt=$(mktemp -u -d "$BUILD/debian-check.XXXXXX")
drop_worktree() {
    git -C "$TREE" worktree remove --force "$wt" >/dev/null 2>&1 || rm -rf "$wt"
    git -C "$TREE" worktree prune
}
scratch=$(mktemp -d "$BUILD/debian.XXXXXX")
trap 'drop_worktree; rm -rf "$scratch"' EXIT
tar -C "$scratch" -xJf "$debtar"
git -C "$TREE" worktree add -q --detach "$wt" base

n=0
while read -r p; do
    case "$p" in ''|\#*) continue ;; esac
    p=${p%% *}
    patch -d "$wt" -p1 --batch --silent --no-backup-if-mismatch \
        < "$scratch/debian/patches/$p" > "$scratch/patch.log" 2>&1 ||
        die "Debian's own patch $p does not apply to base:
$(cat "$scratch/patch.log")"
    n=$((n + 1))
done < "$scratch/debian/patches/series"
git -C "$wt" add -A
git -C "$wt" -c user.name="$GIT_COMMITTER_NAME" -c user.email="$GIT_COMMITTER_EMAIL" \
    commit -q -m "Debian $(basename "$debtar" .debian.tar.xz): $n patches from debian/patches"

patches=()
carried=0
while read -r f; do
    debpatch=$(sed -n 's/^Debian-Carries: //p' "$f" | sed -n 1p)
    if [ -z "$debpatch" ]; then
        patches+=("$f")
        continue
    fi
    grep -qxF "$debpatch" "$scratch/debian/patches/series" ||
        die "$(basename "$f") says Debian carries its fix as $debpatch, which is not in Debian's series"
    carried=$((carried + 1))
done < <(series_patches)
if [ ${#patches[@]} -gt 0 ] && ! git -C "$wt" am -q "${patches[@]}" > "$scratch/am.log" 2>&1; then
    die "the series does not apply on Debian's patched tree ($n Debian patches):
$(cat "$scratch/am.log")"
fi
if [ -n "$export_dir" ]; then
    rm -rf "$export_dir"
    mkdir -p "$export_dir"
    git -C "$wt" format-patch -q --no-renames --no-signature -o "$(realpath "$export_dir")" HEAD~${#patches[@]}
fi
echo "debian: ${#patches[@]} passed, 0 failed, $carried carried by Debian already (series applies on $(basename "$debtar" .debian.tar.xz) with its $n patches)"
