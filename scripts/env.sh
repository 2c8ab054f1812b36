#!/bin/bash
# Print the shell exports that point virsh, the python bindings and the tests
# at the private build and daemon:   eval "$(make -s env)"
set -euo pipefail
. "$(dirname "$0")/common.sh"
if [ -n "$PACKAGED" ]; then
    # Debian's paths: virsh and libvirt.so are where the packages put them
    echo "export SNAPDEL_PACKAGED=1"
else
    cat <<EOS
export PATH="$PREFIX/bin:$PREFIX/sbin:\$PATH"
export LD_LIBRARY_PATH="$PREFIX/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
unset SNAPDEL_PACKAGED
EOS
fi
cat <<EOS
export LIBVIRT_DEFAULT_URI="qemu:///system"
export SNAPDEL_PREFIX="$PREFIX"
export SNAPDEL_STATEDIR="$STATEDIR"
export SNAPDEL_RUNDIR="$RUNDIR"
export SNAPDEL_LOGDIR="$LOGDIR"
export SNAPDEL_QEMUD="$QEMUD"
export SNAPDEL_QEMU_USER="$QEMU_USER"
EOS
# The instance too (the e2e suite skips what needs the series when it talks
# to the unpatched 'base'), so that a shell set up for one instance does not
# keep pointing scripts at another.
if [ -n "$INSTANCE" ]; then
    echo "export SNAPDEL_INSTANCE=\"$INSTANCE\""
else
    echo "unset SNAPDEL_INSTANCE"
fi
