#!/bin/bash
# 'make e2e': the end-to-end suite (pytest, ARGS as given) against the private
# daemons, in the trixie root: QEMU 10.0, qemu-img, virsh and python3-libvirt
# loading our libvirt.so.  The daemons are (re)started in this command's
# mount namespace (see scripts/daemon.sh), where the tests mount what they
# mount.
set -euo pipefail
. "$(dirname "$0")/common.sh"
in_trixie "$@"

"$TOP/scripts/daemon.sh" start
eval "$("$TOP/scripts/env.sh")"
exec /usr/bin/python3 -m pytest -p no:cacheprovider "$@"
