"""What the fault-injection tests share: the daemon's and QEMU's processes,
strace holding the daemon at an exact system call, the daemon's debug log,
the journal, and waiting for a restarted daemon to finish a delete.

See test_delete_resume.py for how the holds work and why they are exact.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import libvirt
import pytest
from lxml import etree

from harness import DELETE_CHILDREN, disk_alias, run, short_name

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DAEMON = os.path.join(TOP, "scripts", "daemon.sh")
STATEDIR = os.environ.get("SNAPDEL_STATEDIR", "")
RUNDIR = os.environ.get("SNAPDEL_RUNDIR", "")
# the daemon that runs the QEMU driver: virtqemud, or Debian's libvirtd
QEMUD = os.environ.get("SNAPDEL_QEMUD", "virtqemud")
LOG = os.path.join(os.environ.get("SNAPDEL_LOGDIR", ""), QEMUD + ".log")

RESUME_TIMEOUT = 60         # seconds for a restarted daemon to finish a delete
WAIT = 60                   # seconds for anything else the test waits for
HOLD = "3600s"              # strace's delay: the daemon is killed long before

RENAMES = "rename,renameat,renameat2"

# victim, flags
SHAPES = {"s2": ("s2", 0), "s3": ("s3", 0), "children": ("s1", DELETE_CHILDREN)}

# Where a shut-off delete is held: strace options, what strace must show
# once the daemon is held there, and the journal's phase at that moment
# (which is also the phase the restarted daemon must resume from).
OFFLINE_POINTS = ["first-exec", "commit-rebase", "metadata", "first-xml", "cleanup"]
PHASE = {"first-exec": "data", "commit-rebase": "data", "metadata": "metadata",
         "first-xml": "metadata", "cleanup": "cleanup"}


# -- processes ----------------------------------------------------------------

def daemon_pid():
    with open(os.path.join(RUNDIR, QEMUD + ".pid")) as f:
        return int(f.read().strip())


def qemu_pid(td):
    with open(os.path.join(RUNDIR, "libvirt", "qemu", td.name + ".pid")) as f:
        return int(f.read().strip())


def alive(pid):
    """Some thread of @pid has not exited yet.  A zombie waiting for its
    parent is not alive, but a thread group whose leader is a zombie is
    while its other threads still finish (a SIGKILLed QEMU's I/O threads):
    until the last one exits the process keeps its files open, and with
    them its locks on the images."""
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except (FileNotFoundError, ProcessLookupError):
        return False
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    return True
        except (FileNotFoundError, ProcessLookupError):
            pass
    return False


def children(pid):
    out = set()
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out.update(int(c) for c in f.read().split())
    except FileNotFoundError:
        pass
    return out


def wait_until(cond, what, timeout=WAIT, interval=0.05):
    """Poll @cond (not a sleep standing in for synchronisation: the state it
    checks is the synchronisation)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ds waiting for %s" % (timeout, what))
        time.sleep(interval)


def is_qemu(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().startswith("qemu-system")
    except FileNotFoundError:
        return False


def kill_daemon(pid, release=None):
    """SIGKILL virtqemud and the children it forked (a qemu-img held before
    exec); QEMU processes are left alone (they are not its children anyway:
    libvirt daemonizes them).  A thread strace holds in a system call stays
    there, killed or not, until strace lets it go: @release kills strace
    after the signals are sent, the kernel detaches its tracees, and the
    held call returns only to die (a held syscall entry is skipped when a
    fatal signal is pending; a held exit returns to a pending SIGKILL)."""
    kids = {k for k in children(pid) if not is_qemu(k)}
    os.kill(pid, signal.SIGKILL)
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if release:
        release()
    # gone, not only dead: daemon.sh takes a zombie for a running daemon
    for p in [pid] + sorted(kids):
        wait_until(lambda: not os.path.exists("/proc/%d" % p), "process %d to be gone" % p)


def start_daemon(td):
    """Start the daemon as 'make run' does and reconnect @td."""
    run(DAEMON, "start")
    td.conn = libvirt.open("qemu:///system")
    td.dom = td.conn.lookupByName(td.name)


def forget_domain(name):
    """Remove what a test whose daemon was killed may leave of its domain:
    the domain itself; undefining it with its snapshot metadata must also drop
    an unfinished journal, which a new domain of the same name would otherwise
    inherit."""
    try:
        c = libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        return
    try:
        dom = c.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    except libvirt.libvirtError:
        pass
    finally:
        c.close()
    # undefining with the snapshot metadata drops an unfinished journal
    j = os.path.join(STATEDIR, "lib", "libvirt", "qemu", "snapshot", name + ".delete-journal")
    assert not os.path.exists(j), "journal %s outlived its domain" % j


@pytest.fixture(autouse=True)
def hygiene(request):
    """Whatever a test did, the next one finds a daemon, and no domain or
    journal of this test is left over.  (Set up before make_domain, so torn
    down after it.)"""
    name = "e2e-" + short_name(request.node.nodeid)
    forget_domain(name)
    yield
    try:
        up = alive(daemon_pid())
    except (FileNotFoundError, ValueError):
        up = False
    if not up:
        run(DAEMON, "start")
    forget_domain(name)


# -- the daemon's debug log ---------------------------------------------------

class Log:
    """The lines virtqemud logs from now on (across the rotation that
    daemon.sh start may do)."""

    def __init__(self):
        st = os.stat(LOG)
        self.ino, self.off, self.part, self.lines = st.st_ino, st.st_size, "", []

    def read(self):
        try:
            st = os.stat(LOG)
        except FileNotFoundError:
            return self.lines
        if st.st_ino != self.ino:
            self.ino, self.off, self.part = st.st_ino, 0, ""
        with open(LOG, "rb") as f:
            f.seek(self.off)
            data = f.read()
            self.off = f.tell()
        text = self.part + data.decode(errors="replace")
        *done, self.part = text.split("\n")
        self.lines += done
        return self.lines

    def grep(self, pattern):
        return [ln for ln in self.read() if re.search(pattern, ln)]

    def tail(self, n=30):
        return "\n".join(ln[:400] for ln in self.read()[-n:])


def tid_of(line):
    """'2026-11-22 12:00:22.202+0000: 23346: info : ...' -> '23346' (None for
    the continuation lines of a message with a newline)"""
    m = re.match(r"\S+ \S+: (\d+): ", line)
    return m and m.group(1)


# -- strace -------------------------------------------------------------------

class Strace:
    """strace attached to every thread of @pid (and what it forks)."""

    def __init__(self, pid, args, workdir):
        self.out = os.path.join(workdir, "strace.out")
        self.err = os.path.join(workdir, "strace.err")
        with open(self.err, "w") as err:
            self.p = subprocess.Popen(
                ["strace", "-f", "-tt", "-s", "2000", "-o", self.out, "-p", str(pid)] + args,
                stdout=subprocess.DEVNULL, stderr=err)
        # "strace: Process N attached with M threads": every thread is traced
        wait_until(lambda: "attached" in self.errors() or self.p.poll() is not None,
                   "strace to attach")
        assert self.p.poll() is None, "strace failed: %s" % self.errors()

    def errors(self):
        with open(self.err) as f:
            return f.read()

    def text(self):
        try:
            with open(self.out) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def detach(self):
        """Detach; a call strace holds goes on at once.  strace does not
        always exit on SIGINT while its tracees are being killed; killing it
        lets the kernel detach them just as well."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.release()
        self.p.wait()

    def release(self):
        """Kill strace: the kernel detaches every tracee at once."""
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


class QemuImgHold:
    """Holds the first qemu-img call whose arguments name @verb and @needle,
    before it runs, and logs every qemu-img call to @workdir/qemu-img.log.

    strace cannot pick that call: it counts injections per process, and
    every qemu-img is a process of its own, so 'the second qemu-img execve'
    is every process's first.  Counting the worker thread's forks does not
    work either, since under DAC the daemon forks to check access as the
    QEMU user.  So for as long as the hold lasts a script is bind-mounted
    over qemu-img in this mount namespace, which is the daemon's: it runs a
    copy of the real binary, except for the held call, which sleeps until
    kill_daemon() kills it with the daemon."""

    def __init__(self, workdir, verb, needle):
        self.bin = shutil.which("qemu-img")
        self.log = os.path.join(workdir, "qemu-img.log")
        self.mark = os.path.join(workdir, "qemu-img.held")
        real = os.path.join(workdir, "qemu-img.real")
        script = os.path.join(workdir, "qemu-img.hold")
        shutil.copy2(self.bin, real)
        with open(script, "w") as f:
            f.write('#!/bin/sh\n'
                    'echo "$*" >> "%s"\n'
                    'case " $* " in\n'
                    '*" %s "*"%s"*)\n'
                    '    if mkdir "%s" 2>/dev/null; then\n'
                    '        echo $$ > "%s/pid"; exec sleep 3600\n'
                    '    fi ;;\n'
                    'esac\n'
                    'exec "%s" "$@"\n' % (self.log, verb, needle, self.mark, self.mark, real))
        os.chmod(script, 0o755)
        run("mount", "--bind", script, self.bin)
        self.mounted = True

    def held(self):
        return os.path.exists(os.path.join(self.mark, "pid"))

    def text(self):
        try:
            with open(self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def release(self):
        pass                # the held call is the daemon's child: killed with it

    def detach(self):
        """Unmount the script; a call still held (the test failed before
        the kill) is killed, so the daemon goes on with an error."""
        if self.mounted:
            run("umount", self.bin)
            self.mounted = False
        if self.held():
            with open(os.path.join(self.mark, "pid")) as f:
                pid = int(f.read().strip() or 0)
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)


class Deleter(threading.Thread):
    """virDomainSnapshotDelete on a connection of its own, in the background:
    the call does not return while the daemon is held."""

    def __init__(self, td, name, flags):
        super().__init__(daemon=True)
        self.conn = libvirt.open("qemu:///system")
        self.dom = self.conn.lookupByName(td.name)
        self.name, self.flags, self.result = name, flags, None

    def run(self):
        try:
            self.dom.snapshotLookupByName(self.name).delete(self.flags)
            self.result = "returned success"
        except libvirt.libvirtError as e:
            self.result = e

    def interrupted(self):
        """After the kill: the call must have failed (the connection is
        gone), never succeeded."""
        self.join(WAIT)
        assert not self.is_alive(), "the delete call did not return after the kill"
        assert isinstance(self.result, libvirt.libvirtError), (
            "the delete %s although the daemon was killed before it finished" % self.result)
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass


# -- domains, journal ---------------------------------------------------------

def chain(make_domain, running):
    """s1 -> s2 -> s3 on vda + vdb, a write to every disk before each
    snapshot, then writes over data the snapshots saved."""
    td, o = make_domain(disks=("vda", "vdb"), running=running)
    for i, name in enumerate(["s1", "s2", "s3"]):
        o.write_all(i)
        o.snapshot(name)
    o.write_all(3)
    o.write_all(0)
    return td, o


def snapshot_dir(td):
    return os.path.join(STATEDIR, "lib", "libvirt", "qemu", "snapshot", td.name)


def journal_path(td):
    """Next to the domain's snapshot directory: loading snapshots parses
    every file inside it."""
    return snapshot_dir(td) + ".delete-journal"


def journal(td):
    """The journal's root attributes (snapshot, flags, phase), or None."""
    try:
        with open(journal_path(td), "rb") as f:
            return dict(etree.fromstring(f.read()).attrib)
    except FileNotFoundError:
        return None


def journal_merges(td):
    """The journal's merges: [{disk, mode, active, done, base, top}]."""
    with open(journal_path(td), "rb") as f:
        root = etree.fromstring(f.read())
    out = []
    for m in root.findall("merge"):
        d = dict(m.attrib)
        for what in ("base", "top"):
            e = m.find(what)
            d[what] = e.get("path") if e is not None else None
        out.append(d)
    return out


def resume_lines(log, td):
    """The restarted daemon's 'finishing the delete' line for @td, the errors
    its thread logged since (an error there need not be fatal), and whether
    that thread gave up (the warning that the delete could not be finished)."""
    lines = log.read()
    start = [i for i, ln in enumerate(lines)
             if "finishing the delete of snapshot" in ln and "domain '%s'" % td.name in ln]
    if not start:
        return None, [], False
    i = start[-1]
    tid = tid_of(lines[i])
    mine = [ln[:400] for ln in lines[i + 1:] if tid_of(ln) == tid]
    errors = [ln for ln in mine if re.search(r": (warning|error) : ", ln)]
    gave_up = any(re.search(r"could not be finished|cannot finish the snapshot delete", ln)
                  for ln in errors)
    return lines[i], errors, gave_up


def wait_resumed(td, o, log, phase, timeout=RESUME_TIMEOUT):
    """Wait for the restarted daemon to finish the delete: the journal is gone
    and the snapshot list is the model's.  Fails at once, with the log, if the
    daemon dies or reports that it could not finish."""
    want = sorted(o.snaps)

    def done():
        assert alive(daemon_pid()), "virtqemud died while finishing the delete:\n" + log.tail()
        first, errors, gave_up = resume_lines(log, td)
        assert not gave_up, "the restarted daemon could not finish the delete:\n%s\n%s" % (
            first, "\n".join(errors))
        if os.path.exists(journal_path(td)):
            return False
        try:
            return td.snapshot_names() == want
        except libvirt.libvirtError:
            return False

    try:
        wait_until(done, "the restarted daemon to finish the delete", timeout, 0.1)
    except AssertionError as e:
        first, errors, _ = resume_lines(log, td)
        raise AssertionError("%s\njournal: %s\nsnapshots: %s (model: %s)\nresume: %s\n%s" % (
            e, journal(td), td.snapshot_names(), want, first, "\n".join(errors))) from None
    first, _, _ = resume_lines(log, td)
    assert first, ("the journal is gone but this daemon did not log resuming the delete "
                   "(did something else start the daemon in between?)")
    assert "from phase '%s'" % phase in first, first


def proven(o):
    o.check()
    o.write_all(6)          # the disks keep working after the resume
    o.check()


# -- shut off: holds at qemu-img and at metadata writes ----------------------

def hold_offline(td, point, workdir):
    """strace on virtqemud set to hold a shut-off delete at @point; returns
    (strace, predicate: is the daemon held there now)."""
    if point == "first-exec":
        st = Strace(daemon_pid(), ["-e", "trace=execve",
                                   "-e", "inject=execve:delay_enter=%s:when=1" % HOLD], workdir)
        return st, lambda t: re.search(r'execve\("[^"]*qemu-img"', t)
    if point == "commit-rebase":
        st = QemuImgHold(workdir, "rebase", "%s-vda.s3" % td.name)
        return st, lambda t: st.held()
    if point == "first-xml":
        paths = [os.path.join(snapshot_dir(td), "%s.xml" % s) for s in ("s1", "s2", "s3")]
        nth = 1
    else:
        paths = [journal_path(td)]
        nth = {"metadata": 2, "cleanup": 3}[point]
    args = ["-e", "trace=" + RENAMES,
            "-e", "inject=%s:delay_exit=%s:when=%d" % (RENAMES, HOLD, nth)]
    # virFileRewrite writes <path>.new and renames it over <path>; strace
    # 6.1 matches -P only against rename's first argument
    for p in paths:
        args += ["-P", p + ".new"]
    st = Strace(daemon_pid(), args, workdir)
    return st, lambda t: len(re.findall(r"\brename\w*\(.*\(DELAYED\)", t)) >= 1


def interrupt_offline(td, victim, flags, point, workdir, while_held=None):
    """Start deleting @victim, hold the daemon at @point, run @while_held,
    then kill the daemon and what it forked."""
    deleter = Deleter(td, victim, flags)
    st, held = hold_offline(td, point, workdir)
    try:
        deleter.start()
        wait_until(lambda: held(st.text()) or not deleter.is_alive(),
                   "the daemon to reach kill point %s" % point)
        assert deleter.is_alive(), "the delete finished (%s) without reaching %s:\n%s" % (
            deleter.result, point, st.text())
        trace = st.text()
        j = journal(td)
        assert j and j["phase"] == PHASE[point] and j["snapshot"] == victim, (
            "at %s the journal is %s:\n%s" % (point, j, trace))
        if point == "commit-rebase":
            calls = [c for c in trace.splitlines() if re.match(r"(commit|rebase) ", c)]
            assert (len(calls) == 2 and calls[0].startswith("commit ") and "-vda.s2" in calls[0]
                    and calls[1].startswith("rebase ")), trace
        if point == "first-xml":
            assert re.search(r"/s[123]\.xml\"\) += 0 \(DELAYED\)", trace), trace
        result = while_held() if while_held else None
        kill_daemon(daemon_pid(), release=st.release)
    finally:
        st.detach()         # releases the daemon if the test failed before the kill
    deleter.interrupted()
    return result


# -- running: holds at monitor writes ----------------------------------------

def monitor_socket(td):
    """The inode of virtqemud's end of the domain's QMP monitor socket."""
    qpid = qemu_pid(td)
    out = run("ss", "-xpH").stdout
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 8 and f[4].endswith("/monitor.sock") and "pid=%d," % qpid in line:
            peer = f[7]
            break
    else:
        raise AssertionError("no monitor socket of QEMU %d in:\n%s" % (qpid, out))
    dpid = daemon_pid()
    fds = os.listdir("/proc/%d/fd" % dpid)
    links = set()
    for fd in fds:
        try:
            links.add(os.readlink("/proc/%d/fd/%s" % (dpid, fd)))
        except FileNotFoundError:
            pass
    assert "socket:[%s]" % peer in links, "virtqemud does not hold socket %s" % peer
    return peer


def recv_queue(sock):
    """Bytes waiting unread in virtqemud's end of the monitor socket."""
    for line in run("ss", "-xH").stdout.splitlines():
        f = line.split()
        if len(f) >= 6 and f[5] == sock:
            return int(f[2])
    raise AssertionError("socket %s is gone" % sock)



def hold_monitor_write(td, deleter, nth, delay, workdir):
    """Start @deleter with strace holding the daemon's event loop at its @nth
    write to @td's monitor socket (@delay: 'delay_enter', held before the
    write; 'delay_exit', after it).  Returns (strace, socket inode, the QMP
    command written and its id) once held; the caller releases strace."""
    sock = monitor_socket(td)
    st = Strace(daemon_pid(), ["-P", "socket:[%s]" % sock, "-e", "trace=write",
                               "-e", "inject=write:%s=%s:when=%d" % (delay, HOLD, nth)],
                workdir)
    try:
        deleter.start()

        def held():
            writes = [ln for ln in st.text().split("\n") if " write(" in ln]
            return len(writes) >= nth and (delay == "delay_enter" or
                                           "(DELAYED)" in writes[nth - 1])

        wait_until(lambda: held() or not deleter.is_alive(),
                   "the daemon to reach its monitor write %d" % nth)
        assert deleter.is_alive(), "the delete finished (%s) before monitor write %d:\n%s" % (
            deleter.result, nth, st.text())
        line = [ln for ln in st.text().split("\n") if " write(" in ln][nth - 1]
        m = re.search(r'\\"execute\\":\\"([\w-]+)\\".*\\"id\\":\\"(libvirt-\d+)\\"', line)
        assert m, "monitor write %d is no QMP command:\n%s" % (nth, st.text())
    except BaseException:
        st.detach()
        raise
    return st, sock, m.group(1), m.group(2)


# -- a second QMP monitor -------------------------------------------------------

class Qmp:
    """A client of the second QMP monitor of a domain made with
    make_domain(qmp=PATH): it reaches QEMU while the daemon is held."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        wait_until(lambda: self._connect(path), "QEMU's second monitor at %s" % path)
        self.f = self.sock.makefile("rwb")
        self.events = []
        greeting = json.loads(self.f.readline())
        assert "QMP" in greeting, greeting
        self.execute("qmp_capabilities")

    def _connect(self, path):
        try:
            self.sock.connect(path)
            return True
        except (FileNotFoundError, ConnectionRefusedError):
            return False

    def execute(self, command, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            assert line, "QEMU closed its second monitor during %s" % command
            reply = json.loads(line)
            if "event" in reply:
                self.events.append(reply)
                continue
            assert "error" not in reply, "%s: %s" % (command, reply["error"])
            return reply["return"]

    def qemu_io(self, target, command):
        """qemu-io @command on the guest's disk @target, then a flush; the
        write goes where the disk's device writes."""
        dev = "/machine/peripheral/%s/virtio-backend" % disk_alias(target)
        for cmd in (command, "flush"):
            out = self.execute("human-monitor-command",
                               **{"command-line": 'qemu-io -d %s "%s"' % (dev, cmd)})
            assert not out.strip(), "qemu-io %s on %s: %s" % (cmd, target, out)

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass
