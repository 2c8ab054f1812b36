#!/bin/bash
# 'make shell': a shell in the trixie root with the private daemon's
# environment (scripts/env.sh): virsh, qemu-img and python3 as the tests use
# them.  With arguments, runs that command instead.
set -euo pipefail
. "$(dirname "$0")/common.sh"
in_trixie "$@"

eval "$("$TOP/scripts/env.sh")"
[ $# -gt 0 ] || set -- /bin/bash -i
exec "$@"
