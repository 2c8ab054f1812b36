#!/bin/bash
# Define (once) and start the demo domain: two qcow2 disks, no guest OS,
# QEMU under TCG.  The disks are written to from the monitor, not by a guest.
# In the trixie root (see in_trixie in common.sh).
set -euo pipefail
. "$(dirname "$0")/common.sh"
in_trixie "$@"
eval "$("$TOP/scripts/env.sh")"

name=demo
img=$STATEDIR/images
mkdir -p "$img"

if ! virsh dominfo "$name" >/dev/null 2>&1; then
    for d in vda vdb; do
        f=$img/$name-$d.qcow2
        [ -f "$f" ] || qemu-img create -q -f qcow2 "$f" 64M
    done
    xml=$(mktemp)
    cat > "$xml" <<EOS
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$img/$name-vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$img/$name-vdb.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
EOS
    virsh define "$xml" >/dev/null
    rm -f "$xml"
    say "defined domain '$name' with disks in $img"
fi
if [ "$(virsh domstate "$name")" != running ]; then
    virsh start "$name" >/dev/null
fi

cat <<EOS

The private daemon is running and domain '$name' is up (two qcow2 disks, vda and vdb).
Use it from a shell in the trixie root, where the private build runs
('make shell' opens one, with 'eval "\$(make -s env)"' done):

    make shell
    virsh list --all
    virsh snapshot-create-as $name s1 --disk-only
    virsh snapshot-list $name --tree
    virsh snapshot-delete $name s1

Write into a running disk (no guest OS needed):

    virsh qemu-monitor-command $name --hmp 'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -P 0x11 0 1M"'
    virsh qemu-monitor-command $name --hmp 'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "flush"'

'make stop' stops the daemons and leaves the domain running; 'make run' again reconnects.
Logs: $STATEDIR/log
EOS
