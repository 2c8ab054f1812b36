#!/bin/bash
# Print the shell exports that point virsh, the python bindings and the tests
# at the private build and daemon:   eval "$(make -s env)"
set -euo pipefail
. "$(dirname "$0")/common.sh"
cat <<EOS
export PATH="$PREFIX/bin:$PREFIX/sbin:\$PATH"
export LD_LIBRARY_PATH="$PREFIX/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LIBVIRT_DEFAULT_URI="qemu:///system"
export SNAPDEL_PREFIX="$PREFIX"
export SNAPDEL_STATEDIR="$STATEDIR"
export SNAPDEL_RUNDIR="$RUNDIR"
EOS
