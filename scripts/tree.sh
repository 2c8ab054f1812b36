#!/bin/bash
# Create the libvirt work tree: the pristine base as one commit tagged 'base',
# then every patch of the series applied with 'git am' as its own commit.
#
# An existing tree is left alone when it already holds exactly the series;
# a tree whose commits differ from patches/ is never overwritten unless
# FORCE=1 is given, since it may hold work not exported yet.
set -euo pipefail
. "$(dirname "$0")/common.sh"

"$TOP/scripts/fetch-base.sh"

if [ -d "$TREE/.git" ]; then
    if "$TOP/scripts/export.sh" --compare >/dev/null 2>&1; then
        exit 0
    fi
    if [ "${FORCE:-0}" != 1 ]; then
        die "$TREE differs from patches/ (unexported work, or patches/ changed).
Export it with 'make export', or recreate it from patches/ with 'make tree FORCE=1'."
    fi
    say "recreating $TREE from patches/ (FORCE=1)"
    # Keep the build directory so that ninja and ccache stay warm; the
    # worktrees of the old repository go with it.
    rm -rf "$BUILD/series-check" "$BUILD/debian-check"
    find "$TREE" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
fi

say "unpacking libvirt $LIBVIRT_VERSION into $TREE"
tmp=$(mktemp -d "$BUILD/unpack.XXXXXX")
tar -C "$tmp" --no-same-owner -xJf "$DL/libvirt_$LIBVIRT_VERSION.orig.tar.xz"
mkdir -p "$TREE"
(shopt -s dotglob; mv "$tmp/libvirt-$LIBVIRT_VERSION"/* "$TREE"/)
rm -rf "$tmp"

cd "$TREE"
git init -q -b main
git config user.name "$GIT_COMMITTER_NAME"
git config user.email "$GIT_COMMITTER_EMAIL"
# Upstream keeps keycodemapdb as a separate repository (a git submodule), so
# it is not part of the base commit; syntax-check assumes exactly that.
printf '/subprojects/keycodemapdb/\n/build/\n' >> .git/info/exclude
git add -A
GIT_AUTHOR_NAME="libvirt upstream" GIT_AUTHOR_EMAIL="libvir-list@redhat.com" \
GIT_AUTHOR_DATE="2025-05-01T00:00:00Z" GIT_COMMITTER_DATE="2025-05-01T00:00:00Z" \
    git commit -q -m "libvirt $LIBVIRT_VERSION (upstream release tarball, sha256 $LIBVIRT_ORIG_SHA256)"
git tag base

mapfile -t patches < <(series_patches)
if [ ${#patches[@]} -gt 0 ]; then
    say "applying ${#patches[@]} patches with git am"
    if ! git am -q --keep-cr "${patches[@]}" 2>"$BUILD/am.err"; then
        die "a patch of the series failed to apply on base:
$(cat "$BUILD/am.err")
The tree is left in the middle of 'git am' at $TREE; fix the patch, then 'make tree FORCE=1'."
    fi
fi
say "tree ready: $TREE ($(git rev-list --count base..HEAD) patches on base)"
