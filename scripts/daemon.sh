#!/bin/bash
# Start, stop or query the private virtlogd + virtqemud of this checkout.
#
#   daemon.sh start    write the configuration and start both daemons
#   daemon.sh stop     stop both daemons; running domains keep running
#   daemon.sh status
#
# VIRTQEMUD_CONF_EXTRA, if set, is appended to virtqemud.conf (for example
# more log_filters while debugging).
#
# The daemons run as root without systemd, cgroups or namespaces, with QEMU
# under TCG.  QEMU runs as Debian runs it: as the system user libvirt-qemu
# (scripts/trixie-root.sh creates it as trixie's package does), with DAC's
# dynamic ownership and remember_owner.  There is no MAC driver (this kernel has no
# AppArmor); security_driver = "none" leaves DAC, which libvirt always
# stacks, as the only one.  SNAPDEL_QEMU_USER=root runs QEMU as root without
# DAC instead (how the series was first tested).  Sockets live in $RUNDIR
# (short on purpose, see common.sh); logs are in $STATEDIR/log.
#
# In the trixie root (see in_trixie in common.sh).  Each command there has a
# mount namespace of its own, which the daemons it starts (and their QEMUs)
# keep; 'start' restarts daemons that run in another one, so that they see
# the mounts of the command that starts them (the e2e suite's tmpfs).
set -euo pipefail
. "$(dirname "$0")/common.sh"
in_trixie "$@"

SOCK_LOGD=$RUNDIR/libvirt/virtlogd-sock
SOCK_QEMU=$RUNDIR/libvirt/$QEMUD-sock
[ "$QEMUD" = libvirtd ] && SOCK_QEMU=$RUNDIR/libvirt/libvirt-sock
PID_LOGD=$RUNDIR/virtlogd.pid
PID_QEMU=$RUNDIR/$QEMUD.pid

alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# Who listens on a unix socket path, if anyone does, in this root: ss lists
# the sockets of every root on the machine, and another copy of the trixie
# root (make deb-check, or someone's own) has its daemons at the same paths.
socket_owner() {
    local line pid me
    me=$(stat -L -c %d:%i /)
    ss -xlpH 2>/dev/null | awk -v s="$1" '$5 == s { print $0 }' | while read -r line; do
        pid=$(sed -n 's/.*pid=\([0-9]*\),.*/\1/p' <<< "$line")
        if [ -z "$pid" ] || [ "$(stat -L -c %d:%i "/proc/$pid/root/" 2>/dev/null)" = "$me" ]; then
            echo "$line"
            break
        fi
    done
}

# The packaged daemons (SNAPDEL_PACKAGED, see common.sh) keep Debian's
# configuration files as the packages installed them.  Appended once: what
# this machine needs (no systemd, no cgroups, no namespaces) and the debug
# log the tests read.  QEMU's user, DAC and the security drivers stay
# Debian's defaults (libvirt-qemu, dynamic_ownership, remember_owner; the
# AppArmor driver finds no AppArmor in this kernel and steps aside).
write_packaged_config() {
    local mark="# Added by the snapdel patch queue (scripts/daemon.sh)"
    grep -qxF "$mark" /etc/libvirt/qemu.conf ||
        printf '\n%s: this machine has no\n# systemd, cgroups or namespaces for QEMU.\ncgroup_controllers = [ ]\nnamespaces = [ ]\n' \
            "$mark" >> /etc/libvirt/qemu.conf
    grep -qxF "$mark" "/etc/libvirt/$QEMUD.conf" ||
        printf '\n%s: the debug log the tests read.\nlog_filters = "%s"\nlog_outputs = "1:file:%s/%s.log"\n' \
            "$mark" "$LOG_FILTERS" "$LOGDIR" "$QEMUD" >> "/etc/libvirt/$QEMUD.conf"
    mkdir -p "$LOGDIR"
}

LOG_FILTERS="1:qemu.qemu_snapshot 1:qemu.qemu_block 1:qemu.qemu_blockjob 1:qemu.qemu_monitor 3:*"

write_config() {
    if [ -n "$PACKAGED" ]; then
        write_packaged_config
        return 0
    fi
    local etc=$PREFIX/etc/libvirt
    mkdir -p "$etc" "$LOGDIR" "$STATEDIR/images"
    if [ "$QEMU_USER" = root ]; then
        cat > "$etc/qemu.conf" <<EOS
# Written by the snapdel patch queue (scripts/daemon.sh); edits are lost.
# Root without systemd, cgroups or namespaces; QEMU runs under TCG as root.
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
remember_owner = 0
EOS
    else
        cat > "$etc/qemu.conf" <<EOS
# Written by the snapdel patch queue (scripts/daemon.sh); edits are lost.
# Without systemd, cgroups or namespaces; QEMU runs under TCG as Debian runs
# it: as libvirt-qemu, with DAC handing it the images while it runs.
user = "libvirt-qemu"
group = "libvirt-qemu"
dynamic_ownership = 1
remember_owner = 1
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
EOS
    fi
    cat > "$etc/virtqemud.conf" <<EOS
# Written by the snapdel patch queue (scripts/daemon.sh); edits are lost.
log_filters = "$LOG_FILTERS"
log_outputs = "1:file:$LOGDIR/virtqemud.log"
${VIRTQEMUD_CONF_EXTRA:-}
EOS
    cat > "$etc/virtlogd.conf" <<EOS
# Written by the snapdel patch queue (scripts/daemon.sh); edits are lost.
log_outputs = "3:file:$LOGDIR/virtlogd.log"
EOS
}

wait_for() {
    local what=$1 log=$2 pidfile=$3 tries=$4
    shift 4
    local i
    for ((i = 0; i < tries; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        if [ $i -gt 2 ] && ! alive "$pidfile"; then
            break
        fi
        sleep 0.2
    done
    echo "error: $what did not come up; last lines of $log:" >&2
    tail -25 "$log" >&2 || true
    [ -f "$LOGDIR/$what.stderr" ] && tail -5 "$LOGDIR/$what.stderr" >&2
    exit 1
}

# Debug logs of the QEMU monitor grow quickly; keep one old generation.
rotate() {
    local f=$1
    if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt $((64 * 1024 * 1024)) ]; then
        mv -f "$f" "$f.1"
    fi
}

start_one() {
    local name=$1 pidfile=$2 sock=$3 owner
    shift 3
    if alive "$pidfile"; then
        # A daemon older than its binary would test yesterday's build.
        if [ -z "$PACKAGED" ] && [ -n "$(find "$PREFIX/sbin/$name" "$PREFIX/lib" -newer "$pidfile" \
                   -name "$name" -o -newer "$pidfile" -name '*.so*' | head -1)" ]; then
            say "$name was rebuilt since it started; restarting it"
            stop_one "$name" "$pidfile"
        elif [ -n "${CONFIG_CHANGED:-}" ]; then
            say "the daemons' configuration changed; restarting $name"
            stop_one "$name" "$pidfile"
        elif [ "$(readlink "/proc/$(cat "$pidfile")/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ]; then
            say "$name runs in another command's mount namespace; restarting it in this one"
            stop_one "$name" "$pidfile"
        else
            return 0
        fi
    fi
    owner=$(socket_owner "$sock")
    if [ -n "$owner" ]; then
        die "socket $sock is already in use by another process:
$owner
Stop that process, or remove it, before starting $name."
    fi
    rm -f "$pidfile"
    rotate "$LOGDIR/$name.log"
    "$PREFIX/sbin/$name" --daemon --pid-file "$pidfile" "$@" \
        > "$LOGDIR/$name.stderr" 2>&1 ||
        { echo "error: $name failed to start:" >&2; tail -20 "$LOGDIR/$name.stderr" >&2;
          tail -20 "$LOGDIR/$name.log" >&2 2>/dev/null; exit 1; }
}

start() {
    [ -x "$PREFIX/sbin/$QEMUD" ] || die "no private build in $PREFIX; run 'make build'"
    [ "$(id -u)" -eq 0 ] || die "the private daemons run as root"
    mkdir -p "$RUNDIR/libvirt"
    [[ $QEMU_USER =~ ^(libvirt-qemu|root)$ ]] || die "SNAPDEL_QEMU_USER: use libvirt-qemu or root"
    local before
    local etc=$PREFIX/etc/libvirt
    [ -n "$PACKAGED" ] && etc=/etc/libvirt
    before=$(cat "$etc"/{qemu,$QEMUD,virtlogd}.conf 2>/dev/null | sha256sum)
    write_config
    if [ "$before" != "$(cat "$etc"/{qemu,$QEMUD,virtlogd}.conf | sha256sum)" ]; then
        CONFIG_CHANGED=1
    fi
    start_one virtlogd "$PID_LOGD" "$SOCK_LOGD"
    wait_for virtlogd "$LOGDIR/virtlogd.log" "$PID_LOGD" 50 test -S "$SOCK_LOGD"
    start_one "$QEMUD" "$PID_QEMU" "$SOCK_QEMU"
    # The first start probes QEMU's capabilities, which takes a few seconds
    # under TCG; later starts read them from the cache.
    wait_for "$QEMUD" "$LOGDIR/$QEMUD.log" "$PID_QEMU" 300 \
        "$PREFIX/bin/virsh" -c qemu:///system version
    say "virtlogd (pid $(cat "$PID_LOGD")) and $QEMUD (pid $(cat "$PID_QEMU")) are running; sockets in $RUNDIR/libvirt"
}

stop_one() {
    local name=$1 pidfile=$2 pid i
    alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || { say "stopped $name (pid $pid)"; return 0; }
        sleep 0.1
    done
    echo "warning: $name (pid $pid) ignored SIGTERM for 15 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

case "${1:-}" in
    start) start ;;
    stop)
        stop_one "$QEMUD" "$PID_QEMU"
        stop_one virtlogd "$PID_LOGD"
        ;;
    status)
        for n in virtlogd "$QEMUD"; do
            p=$RUNDIR/$n.pid
            if alive "$p"; then echo "$n: running (pid $(cat "$p"))"; else echo "$n: stopped"; fi
        done
        ;;
    *) die "usage: $0 start|stop|status" ;;
esac
