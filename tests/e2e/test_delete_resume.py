"""A daemon killed in the middle of a snapshot delete finishes it when it
starts again, and then every invariant the oracle knows holds.

The daemon is stopped at exact points of the delete, never after a guessed
sleep:

* shut off (qemu-img): strace holds the daemon at one system call with
  fault injection (delay_enter/delay_exit, far longer than any test), the test
  sees the held call in strace's output, then SIGKILLs virtqemud and the
  forked qemu-img child, if any.  The points, in the order a delete passes
  them:

    first-exec     execve of the first qemu-img (held before it runs): the
                   journal says 'data', no image was written
    commit-rebase  the fork of the second qemu-img in the worker thread: vda's
                   'qemu-img commit' is done, its 'qemu-img rebase -u' not
                   (only the middle snapshot s2 has a rebase)
    metadata       the rename that writes the journal's 'metadata' phase
    first-xml      the rename of the first snapshot XML rewritten
    cleanup        the rename that writes the journal's 'cleanup' phase

  strace counts each injection per thread (per process for execve), so the
  renames are picked with -P (only renames of the journal, or of a snapshot
  XML, are counted) and the second qemu-img by the worker's second fork.
  A thread strace holds does not die of SIGKILL until strace lets it go, so
  strace is killed right after the signals: the kernel detaches the held
  thread, which then dies without running any more of its code.

* running (block commit in QEMU): strace holds the daemon's event loop at
  its n-th write to the domain's monitor socket (-P socket:[inode]), which
  must be the expected QMP command.  Points: the first 'block-commit' (s2
  and s3), 'job-finalize' (s2: non-active commit, finalized) and
  'job-complete' (s3: active commit, pivoted).  Each in two modes:

    unread  held before the write; QEMU is SIGSTOPped, strace detached, and
            once the debug log shows the command written
            (QEMU_MONITOR_IO_WRITE) virtqemud is SIGKILLed and QEMU
            continued.  QEMU then drops the command it never read (its QMP
            request queue is flushed when the client goes away), so this is
            "the daemon died right before the command".
    done    held after the write; QEMU executes the command, and once its
            reply waits unread in the daemon's socket (ss Recv-Q) virtqemud
            is SIGKILLed: "QEMU did it, the daemon never heard".

Shapes: delete the middle snapshot s2, the current snapshot s3, and
--children on the root s1, of s1 -> s2 -> s3 on vda + vdb with writes before
every snapshot and over saved data afterwards.  Shut off, every shape runs at
every point that exists for it (13 cases); running, the 2 x 2 points in both
modes (8 cases).  After the restart the test waits (at most RESUME_TIMEOUT)
until the journal is gone and the snapshot list is the model's, checks that
the daemon resumed from the phase the kill point implies, proves every
invariant with the oracle, writes to every disk and proves them again.
The whole file takes about two minutes on 2 CPUs.

Also: what 'virsh domjobinfo' and virDomainGetJobStats report while a delete
is held, and a delete whose resume at daemon start cannot finish (an image is
unreachable for a moment), so that its journal stays pending
deterministically: the next delete finishes it, and snapshots must not be
created or reverted before.

The tests kill the private daemon: do not run them alongside other e2e
tests on the same daemon.
"""

import os
import re
import signal
import subprocess
import threading
import time

import libvirt
import pytest
from lxml import etree

from harness import DELETE_CHILDREN, error_of, files_state, run, short_name

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DAEMON = os.path.join(TOP, "scripts", "daemon.sh")
STATEDIR = os.environ.get("SNAPDEL_STATEDIR", "")
RUNDIR = os.environ.get("SNAPDEL_RUNDIR", "")
LOG = os.path.join(STATEDIR, "log", "virtqemud.log")

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
    with open(os.path.join(RUNDIR, "virtqemud.pid")) as f:
        return int(f.read().strip())


def qemu_pid(td):
    with open(os.path.join(RUNDIR, "libvirt", "qemu", td.name + ".pid")) as f:
        return int(f.read().strip())


def alive(pid):
    """Running, and not a zombie waiting for its parent."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
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


# -- shut off -----------------------------------------------------------------

def hold_offline(td, point, workdir):
    """strace on virtqemud set to hold a shut-off delete at @point; returns
    (strace, predicate: is the daemon held there now)."""
    if point == "first-exec":
        st = Strace(daemon_pid(), ["-e", "trace=execve",
                                   "-e", "inject=execve:delay_enter=%s:when=1" % HOLD], workdir)
        return st, lambda t: re.search(r'execve\("[^"]*qemu-img"', t)
    if point == "commit-rebase":
        st = Strace(daemon_pid(), ["-e", "trace=execve,clone",
                                   "-e", "inject=clone:delay_enter=%s:when=2" % HOLD], workdir)
        return st, lambda t: len(re.findall(r"\bclone\(", t)) >= 2
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
            execs = re.findall(r'execve\("[^"]*qemu-img", \[(.*?)\]', trace)
            assert len(execs) == 1 and '"commit"' in execs[0] and "vda" in execs[0], trace
        if point == "first-xml":
            assert re.search(r"/s[123]\.xml\"\) += 0 \(DELAYED\)", trace), trace
        result = while_held() if while_held else None
        kill_daemon(daemon_pid(), release=st.release)
    finally:
        st.detach()         # releases the daemon if the test failed before the kill
    deleter.interrupted()
    return result


def offline_cases():
    for shape in SHAPES:
        for point in OFFLINE_POINTS:
            if point == "commit-rebase" and shape != "s2":
                continue    # only a merge below the active layer has a rebase
            yield pytest.param(shape, point, id="%s-%s" % (shape, point))


@pytest.mark.parametrize("shape,point", list(offline_cases()))
def test_kill_offline(make_domain, workdir, shape, point):
    victim, flags = SHAPES[shape]
    td, o = chain(make_domain, running=False)
    interrupt_offline(td, victim, flags, point, workdir)
    assert journal(td)["phase"] == PHASE[point]
    o.deleted(victim, flags)
    log = Log()
    start_daemon(td)
    assert not td.running()
    wait_resumed(td, o, log, PHASE[point])
    proven(o)


# -- what a held delete looks like to a management application ---------------

def job_reports(td):
    """What 'virsh domjobinfo', virDomainGetJobStats and virDomainGetJobInfo
    on a second connection say, bounded by a timeout (a hang is a finding
    too)."""
    out = {}
    try:
        p = subprocess.run(["virsh", "domjobinfo", td.name], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=20)
        out["virsh"] = (p.returncode, p.stdout.strip())
    except subprocess.TimeoutExpired:
        out["virsh"] = (None, "virsh domjobinfo hung for 20 s")

    res = {}

    def ask():
        c = libvirt.open("qemu:///system")
        dom = c.lookupByName(td.name)
        for key, fn in (("stats", dom.jobStats), ("info", dom.jobInfo)):
            try:
                res[key] = fn()
            except libvirt.libvirtError as e:
                res[key] = "error: %s" % e
        c.close()

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(20)
    out["stats"] = res.get("stats", "virDomainGetJobStats hung for 20 s")
    out["info"] = res.get("info", "virDomainGetJobInfo hung (or did not run)")
    return out


def test_jobinfo_while_held(make_domain, workdir):
    """While the delete of a shut-off domain is held before its first
    qemu-img runs, virDomainGetJobInfo, virDomainGetJobStats and 'virsh
    domjobinfo' from another connection report the snapshot delete job (and
    none hangs).  The delete
    is then interrupted and resumed like the others."""
    td, o = chain(make_domain, running=False)
    reports = interrupt_offline(td, "s2", 0, "first-exec", workdir,
                                while_held=lambda: job_reports(td))
    o.deleted("s2")
    log = Log()
    start_daemon(td)
    wait_resumed(td, o, log, "data")
    proven(o)

    info = reports["info"]
    assert isinstance(info, list) and info[0] == libvirt.VIR_DOMAIN_JOB_UNBOUNDED, (
        "virDomainGetJobInfo while the delete is held: %s" % info)
    rc, text = reports["virsh"]
    assert rc == 0 and re.search(r"Operation:\s+Snapshot delete", text), (
        "virsh domjobinfo while the delete is held: %s" % text)
    stats = reports["stats"]
    assert isinstance(stats, dict), "virDomainGetJobStats while the delete is held: %s" % stats
    assert stats.get("type") == libvirt.VIR_DOMAIN_JOB_UNBOUNDED, stats
    assert stats.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_SNAPSHOT_DELETE, stats
    # the bytes the plan copies: s2's overlay of each disk, allocated
    assert stats.get("data_total", 0) > 0, stats


# -- a journal that stays pending ---------------------------------------------

def pending_journal(make_domain, workdir):
    """s2's delete interrupted before any merge; at the next daemon start its
    resume cannot finish because s2's vda base is unreachable for a moment,
    so the journal stays.  Returns with the image back in place."""
    td, o = chain(make_domain, running=False)
    interrupt_offline(td, "s2", 0, "first-exec", workdir)
    base = os.path.join(td.dir, "%s-vda.s1" % td.name)
    away = os.path.join(workdir, "vda.s1.away")
    os.rename(base, away)
    log = Log()
    try:
        start_daemon(td)
        wait_until(lambda: (resume_lines(log, td)[2] or not alive(daemon_pid())
                            or journal(td) is None),
                   "the restarted daemon to give up the resume")
        assert alive(daemon_pid()), log.tail()
    finally:
        os.rename(away, base)
    j = journal(td)
    assert j and (j["snapshot"], j["flags"], j["phase"]) == ("s2", "0", "data"), (
        "the resume was to fail and leave the journal: %s\n%s" % (j, log.tail()))
    assert td.snapshot_names() == ["s1", "s2", "s3"]
    return td, o


@pytest.mark.parametrize("then", ["same", "other"])
def test_pending_journal_finished_by_next_delete(make_domain, workdir, then):
    """The next delete finishes the pending one first: of the same snapshot
    with the same flags it then returns success; of another snapshot it then
    deletes that one too."""
    td, o = pending_journal(make_domain, workdir)
    if then == "same":
        o.delete("s2")
    else:
        o.deleted("s2")
        o.delete("s3")
    assert journal(td) is None
    proven(o)


def test_pending_journal_refuses_snapshots(make_domain, workdir):
    """While a delete is unfinished, creating a snapshot or reverting to one
    is refused, naming the snapshot, and changes nothing; once a delete
    finished the journal, snapshots are created again."""
    td, o = pending_journal(make_domain, workdir)

    def world():
        return (files_state(td.dir), td.snapshot_names(),
                td.dom.snapshotCurrent().getName(), td.tops())

    before = world()
    for what, fn, args in [("create", td.snapshot, ("s4",)),
                           ("revert", td.dom.revertToSnapshot,
                            (td.dom.snapshotLookupByName("s1"), 0))]:
        err = error_of(fn, *args)
        assert world() == before, "a refused snapshot %s changed something (%s)" % (what, err)
        # "the delete of snapshot 's2' was interrupted; finish it first with
        #  'virsh snapshot-delete <domain> s2'"
        assert err.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID, err
        assert "snapshot 's2'" in str(err) and "interrupted" in str(err), err
    o.delete("s2")
    o.snapshot("s4")
    proven(o)


# -- running ------------------------------------------------------------------

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


# shape -> {QMP command: which write to the monitor it is during the delete}
# (s2: block-commit vda, block-commit vdb, job-finalize vda;
#  s3: block-commit vda, block-commit vdb, bitmap transaction, job-complete vda)
ONLINE_POINTS = {"s2": {"block-commit": 1, "job-finalize": 3},
                 "s3": {"block-commit": 1, "job-complete": 4}}
ONLINE_MODES = ["unread", "done"]


def interrupt_online(td, victim, flags, command, nth, mode, workdir):
    """Kill the daemon once it has written its @nth monitor command of the
    delete, which must be @command.

    unread: the event loop is held before the write; QEMU is stopped, the
            daemon released, and killed once the log shows the command
            written; then QEMU continues (and, as it turns out, drops the
            command it had not read when its client went away).
    done:   the event loop is held after the write; QEMU executes the
            command, and the daemon is killed once QEMU's reply (or an
            event) waits unread in the daemon's socket."""
    qpid = qemu_pid(td)
    sock = monitor_socket(td)
    log = Log()
    deleter = Deleter(td, victim, flags)
    delay = "delay_enter" if mode == "unread" else "delay_exit"
    st = Strace(daemon_pid(), ["-P", "socket:[%s]" % sock, "-e", "trace=write",
                               "-e", "inject=write:%s=%s:when=%d" % (delay, HOLD, nth)],
                workdir)
    stopped = False
    try:
        deleter.start()

        def held():
            writes = [ln for ln in st.text().split("\n") if " write(" in ln]
            return len(writes) >= nth and (mode == "unread" or "(DELAYED)" in writes[nth - 1])

        wait_until(lambda: held() or not deleter.is_alive(),
                   "the daemon to reach its monitor write %d (%s)" % (nth, command))
        assert deleter.is_alive(), "the delete finished (%s) before %s:\n%s" % (
            deleter.result, command, st.text())
        line = [ln for ln in st.text().split("\n") if " write(" in ln][nth - 1]
        m = re.search(r'\\"execute\\":\\"([\w-]+)\\".*\\"id\\":\\"(libvirt-\d+)\\"', line)
        assert m and m.group(1) == command, (
            "monitor write %d of the delete is not %s:\n%s" % (nth, command, st.text()))
        assert journal(td)["phase"] == "data"
        if mode == "unread":
            os.kill(qpid, signal.SIGSTOP)
            stopped = True
            st.detach()
            wait_until(lambda: log.grep(r'QEMU_MONITOR_IO_WRITE: .*buf=\{"execute":"%s".*"id":"%s"\}'
                                        % (command, m.group(2))),
                       "the log to show %s written" % command)
            kill_daemon(daemon_pid())
        else:
            wait_until(lambda: recv_queue(sock) > 0, "QEMU to answer %s" % command)
            kill_daemon(daemon_pid(), release=st.release)
    finally:
        st.detach()
        if stopped:
            os.kill(qpid, signal.SIGCONT)
    deleter.interrupted()


def online_cases():
    for shape, points in ONLINE_POINTS.items():
        for command, nth in points.items():
            for mode in ONLINE_MODES:
                yield pytest.param(shape, command, nth, mode,
                                   id="%s-%s-%s" % (shape, command, mode))


@pytest.mark.parametrize("shape,command,nth,mode", list(online_cases()))
def test_kill_running(make_domain, workdir, shape, command, nth, mode):
    victim, flags = SHAPES[shape]
    td, o = chain(make_domain, running=True)
    interrupt_online(td, victim, flags, command, nth, mode, workdir)
    o.deleted(victim, flags)
    log = Log()
    start_daemon(td)
    assert td.running(), "the domain did not survive the daemon's death"
    wait_resumed(td, o, log, "data")
    assert not [d for d in td.disks if td.dom.blockJobInfo(d, 0)], "a block job is left"
    proven(o)
