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
    commit-rebase  vda's 'qemu-img rebase -u', held before it runs by a
                   script bind-mounted over qemu-img (faults.QemuImgHold):
                   vda's 'qemu-img commit' is done, its rebase not (only the
                   middle snapshot s2 has a rebase)
    metadata       the rename that writes the journal's 'metadata' phase
    first-xml      the rename of the first snapshot XML rewritten
    cleanup        the rename that writes the journal's 'cleanup' phase

  strace counts each injection per thread (per process for execve), so the
  renames are picked with -P (only renames of the journal, or of a snapshot
  XML, are counted); no strace option picks the second qemu-img, hence the
  script.
  A thread strace holds does not die of SIGKILL until strace lets it go, so
  strace is killed right after the signals: the kernel detaches the held
  thread, which then dies without running any more of its code.

* running (block commit in QEMU): strace holds the daemon's event loop at
  its n-th write to the domain's monitor socket (-P socket:[inode]), which
  must be the expected QMP command.  Points: every QMP command the delete
  sends, at its first occurrence, plus the second disk's finishing commands
  (ONLINE_POINTS lists them: 29 points).  Each point in mode 'unread', the
  ones that change QEMU's state also in mode 'done':

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
--children on the root s1 (a subtree holding the current snapshot), of
s1 -> s2 -> s3 on vda + vdb with writes before every snapshot and over saved
data afterwards.  Shut off, every shape runs at every point that exists for
it (13 cases); running, 29 points in 'unread' and 15 in 'done' mode (44
cases).  Branched trees (test_delete_branched's): s2 merged off the live
chain by qemu-img, shut off and running, and --children on the current
s1 of a branched tree, merged by QEMU when running; and a mixed tree
(test_delete_mixed's): --children on an internal root, shut off (14
cases).  After the
restart the test waits (at most RESUME_TIMEOUT) until the journal is gone
and the snapshot list is the model's, checks that the daemon resumed from
the phase the kill point implies, proves every invariant with the oracle,
writes to every disk and proves them again.  The whole file takes about
six and a half minutes on 2 CPUs.

The pivot window (test_pivot_window): QEMU switches a disk to its merged
image and the guest writes there while the daemon is held before it reads
QEMU's answer; QEMU and the daemon are killed, and the resume must keep the
guest's newest data.

Also: what 'virsh domjobinfo' and virDomainGetJobStats report while a delete
is held, and a delete whose resume at daemon start cannot finish (an image is
unreachable for a moment), so that its journal stays pending
deterministically: the next delete finishes it, and snapshots must not be
created or reverted before; starting the domain finishes it first, or is
refused with the reason if it still cannot be finished.

The tests kill the private daemon: do not run them alongside other e2e
tests on the same daemon.
"""
import json
import os
import re
import signal
import subprocess
import threading

import libvirt
import pytest
from lxml import etree

import faults
from faults import (
    OFFLINE_POINTS, PHASE, SHAPES, Deleter, Log, alive, chain, daemon_pid, hold_monitor_write,
    interrupt_offline, journal, kill_daemon, proven, qemu_pid, recv_queue, resume_lines,
    start_daemon, wait_resumed, wait_until)
from harness import (
    DELETE_CHILDREN, SLOT, create_image, disk_alias, error_of, files_state, run, stamp)
import test_delete_branched as branched
import test_delete_mixed as mixed

# Upstream refuses these deletes (or has no journal): they need the series
# and are skipped against the unpatched base or Debian's own packages.
pytestmark = pytest.mark.series

hygiene = faults.hygiene        # autouse: a daemon, and no domain left over


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

def start_gives_up(td, log):
    """Start the daemon and wait until its resume of @td's journal gives up;
    it must stay alive."""
    start_daemon(td)
    wait_until(lambda: (resume_lines(log, td)[2] or not alive(daemon_pid())
                        or journal(td) is None),
               "the restarted daemon to give up the resume")
    assert alive(daemon_pid()), log.tail()


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
        start_gives_up(td, log)
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

def test_start_finishes_pending_delete(make_domain, workdir):
    """Starting the domain finishes the pending delete first (with qemu-img,
    before QEMU opens the images): the guest then runs on the merged chain
    and every invariant holds."""
    td, o = pending_journal(make_domain, workdir)
    td.start()
    assert journal(td) is None
    o.deleted("s2")
    proven(o)


def test_start_refused_while_delete_cannot_finish(make_domain, workdir):
    """If the pending delete still cannot be finished, the domain starts on
    its chains as they are on disk (test_delete_faults.py's
    test_out_of_space_domain_starts), unless an image of them is missing:
    then libvirt's own check of the chain refuses the start, naming the
    image, and nothing changed; once the image is back, the start finishes
    the delete and runs."""
    td, o = pending_journal(make_domain, workdir)
    base = os.path.join(td.dir, "%s-vda.s1" % td.name)
    away = os.path.join(workdir, "vda.s1.away")
    os.rename(base, away)
    try:
        before = files_state(td.dir)
        err = error_of(td.start)
        assert not td.running()
        assert "Cannot access backing file '%s'" % base in str(err), err
        assert files_state(td.dir) == before
        assert journal(td)["phase"] == "data"
    finally:
        os.rename(away, base)
    o.check()
    td.start()
    assert journal(td) is None
    o.deleted("s2")
    proven(o)


# -- running ------------------------------------------------------------------

# Every QMP command the delete sends, as the n-th write to the monitor, and
# whether the daemon is also killed after QEMU answered it ('done'; 'unread'
# always).  The sequences (vda first, then vdb):
#   s2:       block-commit x2, then per disk job-finalize, query-jobs,
#             job-dismiss, query-named-block-nodes, blockdev-del x2
#   s3:       block-commit x2, then per disk transaction (bitmaps),
#             job-complete, job-finalize (libvirt finalizes the active
#             commit once QEMU waits in 'pending' with the base in sync),
#             query-jobs, job-dismiss, query-named-block-nodes, transaction,
#             blockdev-del x2
#   children: as s3, with blockdev-del x6 (three images per disk)
# Each first occurrence is a point, and vdb's job-finalize/job-complete and
# job-dismiss (vda is done by then); the commands in between only repeat
# what the points before them left.
ONLINE_POINTS = {
    "s2": [("block-commit", 1, True), ("job-finalize", 3, True),
           ("query-jobs", 4, False), ("job-dismiss", 5, True),
           ("query-named-block-nodes", 6, False), ("blockdev-del", 7, False),
           ("job-finalize", 9, True), ("job-dismiss", 11, False)],
    "s3": [("block-commit", 1, True), ("transaction", 3, False),
           ("job-complete", 4, True), ("job-finalize", 5, True),
           ("query-jobs", 6, False), ("job-dismiss", 7, True),
           ("query-named-block-nodes", 8, False), ("transaction", 9, False),
           ("blockdev-del", 10, False), ("job-complete", 13, True),
           ("job-finalize", 14, True), ("job-dismiss", 16, False)],
    "children": [("block-commit", 1, True), ("transaction", 3, False),
                 ("job-complete", 4, True), ("job-finalize", 5, True),
                 ("job-dismiss", 7, False), ("blockdev-del", 10, False),
                 ("job-complete", 17, True), ("job-finalize", 18, True),
                 ("job-dismiss", 20, False)],
}


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
    log = Log()
    deleter = Deleter(td, victim, flags)
    st, sock, written, qmp_id = hold_monitor_write(
        td, deleter, nth, "delay_enter" if mode == "unread" else "delay_exit", workdir)
    stopped = False
    try:
        assert written == command, (
            "monitor write %d of the delete is %s, not %s:\n%s" % (nth, written, command, st.text()))
        assert journal(td)["phase"] == "data"
        if mode == "unread":
            os.kill(qpid, signal.SIGSTOP)
            stopped = True
            st.detach()
            wait_until(lambda: log.grep(r'QEMU_MONITOR_IO_WRITE: .*buf=\{"execute":"%s".*"id":"%s"\}'
                                        % (command, qmp_id)),
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
        for command, nth, done in points:
            for mode in ["unread", "done"] if done else ["unread"]:
                yield pytest.param(shape, command, nth, mode,
                                   id="%s-%s%d-%s" % (shape, command, nth, mode))


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


# -- the pivot window -------------------------------------------------------------

def test_pivot_window(make_domain, workdir):
    """QEMU switches a disk to the base of its active commit, the guest
    writes there, and QEMU and the daemon die before the daemon heard of
    the switch: the resume must keep the guest's newest data, not copy the
    old top over it.

    Deleting the current s3 commits each disk's active layer into s2's
    image.  The daemon's event loop is held right after it wrote vda's
    job-finalize (the journal says vda is synced by then); QEMU switches vda
    and answers.  Through a second QMP monitor the guest then writes over
    slot 3, which the old top holds too; QEMU is SIGKILLed, then the daemon.
    The restarted daemon finds QEMU gone and finishes the delete from the
    journal: vda is pointed at its base (nothing copied), vdb, whose commit
    had not been finalized, is committed again by qemu-img.  Copying vda's
    top again, as a resume that does not know the base is newer would,
    puts the old slot 3 back: the oracle sees it."""
    path = "/tmp/snapdel-qmp-%d.sock" % os.getpid()
    td, o = make_domain(disks=("vda", "vdb"), running=True, qmp=path)
    for i, name in enumerate(["s1", "s2", "s3"]):
        o.write_all(i)
        o.snapshot(name)
    o.write_all(3)
    o.write_all(0)
    old_top = td.top("vda")
    qpid = qemu_pid(td)
    qmp = faults.Qmp(path)
    deleter = Deleter(td, "s3", 0)
    try:
        st, sock, written, _ = hold_monitor_write(td, deleter, 5, "delay_exit", workdir)
        try:
            assert written == "job-finalize", st.text()
            synced = {m["disk"]: m.get("synced") for m in faults.journal_merges(td)}
            assert synced == {"vda": "yes", "vdb": None}, synced
            wait_until(lambda: recv_queue(sock) > 0, "QEMU to answer job-finalize")
            files = [n["inserted"]["image"]["filename"] for n in qmp.execute("query-block")
                     if n.get("qdev", "").endswith("/%s/virtio-backend" % disk_alias("vda"))]
            assert len(files) == 1 and old_top not in files[0], "QEMU did not switch vda: %s" % files
            o.pattern = o.pattern % 255 + 1
            qmp.qemu_io("vda", "write -P %d %d %d" % (o.pattern, 3 * SLOT, SLOT))
            o.live["vda"][3] = o.pattern
            os.kill(qpid, signal.SIGKILL)
            wait_until(lambda: not alive(qpid), "QEMU to die")
            kill_daemon(daemon_pid(), release=st.release)
        finally:
            st.detach()
        deleter.interrupted()
    finally:
        qmp.close()
        if os.path.exists(path):
            os.unlink(path)
    log = Log()
    start_daemon(td)
    assert not td.running()
    o.deleted("s3")
    wait_resumed(td, o, log, "data")
    o.check()
    assert log.grep(r"went away while switching disk 'vda'"), log.tail()
    assert not log.grep(r"went away while switching disk 'vdb'"), log.tail()
    proven(o)


# -- branched trees -------------------------------------------------------------

def offbranch_tree(make_domain, state):
    """s1 -> s2 -> s3, revert to s1, s4: deleting s2 merges its image with
    s3's by qemu-img, off the live chain, even while the domain runs
    (test_delete_branched's first test)."""
    td, o = branched.chain3(make_domain, state)
    o.revert("s1")
    o.write_all(8)
    o.snapshot("s4")
    o.write_all(9)
    o.write_all(0)
    o.check()
    return td, o


# shape -> (tree, victim, flags)
BRANCHED = {"offbranch": (offbranch_tree, "s2", 0),
            "children": (branched.branched, "s1", DELETE_CHILDREN),
            # i1 (internal) -> s2 -> s3: i1 deleted from its image, the
            # external images committed into it, in one journal
            "mixed": (mixed.iee, "i1", DELETE_CHILDREN)}
BRANCHED_OFFLINE_POINTS = ["first-exec", "metadata", "cleanup"]


def branched_offline_cases():
    for shape in BRANCHED:
        for state in ("shutoff", "running"):
            if shape in ("children", "mixed") and state == "running":
                continue        # merged by QEMU: test_kill_running_branched
            for point in BRANCHED_OFFLINE_POINTS:
                yield pytest.param(shape, state, point, id="%s-%s-%s" % (shape, state, point))


@pytest.mark.parametrize("shape,state,point", list(branched_offline_cases()))
def test_kill_branched(make_domain, workdir, shape, state, point):
    """Branched trees, killed at the qemu-img and metadata points: shut
    off, and running where qemu-img merges another branch's images while
    QEMU runs."""
    tree, victim, flags = BRANCHED[shape]
    td, o = tree(make_domain, state)
    interrupt_offline(td, victim, flags, point, workdir)
    o.deleted(victim, flags)
    log = Log()
    start_daemon(td)
    assert td.running() == (state == "running")
    wait_resumed(td, o, log, PHASE[point])
    proven(o)


@pytest.mark.parametrize("command,nth,mode", [("block-commit", 1, "unread"),
                                              ("job-complete", 4, "done")])
def test_kill_running_branched(make_domain, workdir, command, nth, mode):
    """--children on the current snapshot s1 of a branched tree, running:
    s2's images are unlinked, and s1's, left with the live top as their only
    child, merged with it by active commits."""
    tree, victim, flags = BRANCHED["children"]
    td, o = tree(make_domain, "running")
    interrupt_online(td, victim, flags, command, nth, mode, workdir)
    o.deleted(victim, flags)
    log = Log()
    start_daemon(td)
    assert td.running()
    wait_resumed(td, o, log, "data")
    proven(o)


def test_resume_checks_chain_on_disk(make_domain, workdir):
    """A journal replayed after a restart reads the images again before
    qemu-img writes them: s2's delete interrupted before its first merge,
    then (daemon down) an image slipped in behind libvirt's back between
    s2's overlay of vda (the merge's top) and s1's (its base).  Both are
    still in the chain, but committing the top into the base would now skip
    the new image: the resume must refuse, naming the images, and write
    nothing; once the header is restored the delete finishes."""
    td, o = chain(make_domain, running=False)
    interrupt_offline(td, "s2", 0, "first-exec", workdir)
    own = os.path.join(td.dir, "%s-vda.qcow2" % td.name)
    base = os.path.join(td.dir, "%s-vda.s1" % td.name)
    top = os.path.join(td.dir, "%s-vda.s2" % td.name)
    extra = os.path.join(workdir, "slipped-in.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, extra)
    run("qemu-img", "rebase", "-u", "-F", "qcow2", "-b", extra, top)
    before = {f: stamp(f) for f in (own, base, extra)}
    log = Log()
    try:
        start_gives_up(td, log)
        _, errors, gave_up = resume_lines(log, td)
        assert gave_up, "\n".join(errors)
        # resume_lines cuts lines short: the whole line from the log
        assert log.grep(re.escape("image '%s' backs onto '%s' instead of '%s'"
                                  % (top, extra, base))), "\n".join(errors)
        assert {f: stamp(f) for f in (own, base, extra)} == before, (
            "the refused resume wrote an image")
        assert journal(td)["phase"] == "data"
    finally:
        run("qemu-img", "rebase", "-u", "-F", "qcow2", "-b", base, top)
    o.delete("s2")
    assert journal(td) is None
    proven(o)


# -- commits still running at reconnect ------------------------------------------

BIG = {"vda": 1024 * 1024 * 1024, "vdb": 512 * 1024 * 1024}
PATTERN = {"vda": 0x5a, "vdb": 0x6b}


@pytest.mark.series
def test_kill_with_commit_running(make_domain, workdir):
    """The daemon dies right after QEMU accepted vda's block-commit, with
    1 GiB to merge on vda and 512 MiB on vdb; QEMU is held (SIGSTOP) until
    the daemon is dead and restarted, so that vda's commit is still running
    when the new daemon reconnects, and vdb's was never asked for.  The
    resume must follow the running commit to its end, start and finish
    vdb's, and leave no job behind; both own files then hold the data."""
    def big(d):
        return {t: create_image(os.path.join(d, "%s.qcow2" % t), size=n)
                for t, n in BIG.items()}

    td, o = make_domain(disks=("vda", "vdb"), images=big, running=True)
    own = td.tops()
    o.snapshot("s1")
    for t, size in BIG.items():
        td.fill(t, PATTERN[t], size)
    o.snapshot("s2")

    qpid = qemu_pid(td)
    deleter = Deleter(td, "s1", 0)
    st, sock, written, _ = hold_monitor_write(td, deleter, 1, "delay_exit", workdir)
    stopped = False
    try:
        assert written == "block-commit", written
        wait_until(lambda: recv_queue(sock) > 0, "QEMU to answer block-commit")
        os.kill(qpid, signal.SIGSTOP)
        stopped = True
        kill_daemon(daemon_pid(), release=st.release)
    finally:
        st.detach()
    deleter.interrupted()
    log = Log()
    try:
        start_daemon(td)
    finally:
        if stopped:
            os.kill(qpid, signal.SIGCONT)
    o.deleted("s1")
    wait_resumed(td, o, log, "data")
    assert td.running()
    assert not [d for d in td.disks if td.dom.blockJobInfo(d, 0)], "a block job is left"
    saved = etree.fromstring(td.dom.snapshotLookupByName("s2").getXMLDesc(0))
    for t in td.disks:
        src = saved.xpath("domain/devices/disk[target/@dev=$t]/source", t=t)[0]
        assert src.get("file") == own[t], etree.tostring(src)
        out = run("qemu-io", "-r", "-U", "-f", "qcow2", "-c",
                  "read -P %d 0 %d" % (PATTERN[t], BIG[t]),
                  "json:" + json.dumps({"driver": "qcow2", "backing": None,
                                        "file": {"driver": "file",
                                                 "filename": own[t]}})).stdout
        assert "verification failed" not in out, out
