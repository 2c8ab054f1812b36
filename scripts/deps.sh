#!/bin/bash
# Install the Debian packages listed in scripts/packages.txt, then create (or
# reuse) the trixie root that builds and runs libvirt (scripts/trixie-root.sh).
# Cheap when both are there already: dpkg is asked first, apt only when
# something lacks.  In the root, nothing to do: it has what it needs.
set -euo pipefail
. "$(dirname "$0")/common.sh"
inside_trixie && exit 0

mapfile -t pkgs < <(grep -v '^#' "$TOP/scripts/packages.txt" | sed '/^$/d')
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
        missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "packages missing (${missing[*]}); run as root to install them"
    say "installing ${#missing[@]} packages: ${missing[*]}"
    apt-get update -q >/dev/null || die "apt-get update failed; check the machine's apt configuration"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        die "apt-get install failed for: ${missing[*]}"
fi
"$TOP/scripts/trixie-root.sh" >/dev/null
