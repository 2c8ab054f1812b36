"""The delete engine: every delete of external snapshots either succeeds with
the API's tree semantics and nothing any remaining snapshot or the guest sees
changed, or is refused with an error naming the snapshot, the disk and the
reason, and then nothing changed at all.

Plain deletes of a linear chain are in test_delete_linear.py; this file covers
what libvirt 11.3.0 refuses for external snapshots (--children,
--children-only), snapshots that do not cover every disk, memory state,
--metadata, chains changed behind libvirt's back, other block jobs, bad
requests, a daemon restart between deletes and the calls a management
application makes.  Every case runs with the domain running and shut off,
unless a comment says why one state cannot exist.
"""

import os
import threading
import time

import libvirt
import pytest
from lxml import etree

from harness import (DELETE_CHILDREN, DELETE_CHILDREN_ONLY, DELETE_METADATA,
                     create_image, error_of, files_state, run, virsh)

STATES = ["running", "shutoff"]
TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VDA_ONLY = {"vda": "external", "vdb": "no"}


def chain(make_domain, state, names=("s1", "s2", "s3", "s4"), disks=None):
    """A linear chain on vda + vdb with a write to every disk before each
    snapshot, then writes over data the snapshots saved.  @disks maps a
    snapshot name to its disk spec (default: both disks external)."""
    td, o = make_domain(disks=("vda", "vdb"), running=(state == "running"))
    for i, name in enumerate(names):
        o.write_all(i)
        o.snapshot(name, (disks or {}).get(name))
    o.write_all(len(names))
    o.write_all(0)
    return td, o


def tree(td):
    """The tree as libvirt reports it: {name: parent}, current."""
    parents = {}
    for s in td.dom.listAllSnapshots():
        try:
            parents[s.getName()] = s.getParent().getName()
        except libvirt.libvirtError:
            parents[s.getName()] = None
    cur = td.dom.snapshotCurrent().getName() if td.dom.hasCurrentSnapshot() else None
    return parents, cur


def snapshot_xmls(td):
    return {s.getName(): s.getXMLDesc(0) for s in td.dom.listAllSnapshots()}


def block_jobs(td):
    """target -> job info of every disk with an active block job."""
    if not td.running():
        return {}
    return {d: i for d in td.disks for i in [td.dom.blockJobInfo(d, 0)] if i}


def world(td):
    """Everything a refused delete must leave as it was."""
    return {"files": files_state(td.dir), "tree": tree(td),
            "snapshots": snapshot_xmls(td), "running": td.running(),
            "tops": td.tops(), "jobs": sorted(block_jobs(td))}


def refused(td, fn, *args):
    """Call fn, which must fail and change nothing; return its error."""
    before = world(td)
    err = error_of(fn, *args)
    after = world(td)
    for k in before:
        assert after[k] == before[k], "refused request changed %s:\n%s\n->\n%s\n(%s)" % (
            k, before[k], after[k], err)
    return err


def assert_names(err, snap, target, paths):
    """The engine's refusals read "cannot delete snapshot '<name>': disk
    '<target>' (<image path>): <reason>"; check the pieces."""
    msg = str(err)
    assert "snapshot '%s'" % snap in msg, msg
    assert "disk '%s'" % target in msg, msg
    assert any(p in msg for p in paths), "no image path of %s in: %s" % (target, msg)


def images_of(td, target):
    return [os.path.join(td.dir, f) for f in os.listdir(td.dir)
            if "-%s." % target in f]


def after_delete(o):
    """After a delete the disks keep working (the guest writes to every
    disk), and the oracle proves every invariant."""
    o.write_all(6)
    o.check()


# -- --children and --children-only -----------------------------------------

@pytest.mark.series
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("victim", ["s1", "s2"], ids=["root", "middle"])
def test_delete_children(make_domain, state, victim):
    """--children removes the snapshot and its subtree; the current snapshot
    (s4, in the subtree) moves to the nearest remaining ancestor."""
    td, o = chain(make_domain, state)
    o.delete(victim, DELETE_CHILDREN)
    assert o.current == {"s1": None, "s2": "s1"}[victim]
    after_delete(o)


@pytest.mark.series
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("victim", ["s1", "s2"], ids=["root", "middle"])
def test_delete_children_only(make_domain, state, victim):
    """--children-only removes the descendants and keeps the snapshot, which
    becomes current; what it saved must still read back the same."""
    td, o = chain(make_domain, state)
    o.delete(victim, DELETE_CHILDREN_ONLY)
    assert sorted(o.snaps) == {"s1": ["s1"], "s2": ["s1", "s2"]}[victim]
    assert o.current == victim
    after_delete(o)


# -- snapshots that do not cover every disk ---------------------------------

@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("victim,flags", [("s2", 0), ("s1", 0), ("s3", 0),
                                          ("s2", DELETE_CHILDREN)],
                         ids=["itself", "parent", "child", "children"])
def test_delete_partial_snapshot(make_domain, state, victim, flags):
    """s2 leaves vdb out (snapshot='no'): vdb's chain skips s2, so s3's vdb
    overlay sits directly on s1's.  Deleting s2, its parent, its child, or s2
    with its subtree must merge only what each disk really has."""
    td, o = chain(make_domain, state, names=("s1", "s2", "s3"),
                  disks={"s2": VDA_ONLY})
    assert not [f for f in os.listdir(td.dir) if f.endswith("-vdb.s2")]
    o.delete(victim, flags)
    after_delete(o)


# -- memory state -----------------------------------------------------------
# Running only: a snapshot with memory state saves a running guest's RAM; a
# shut-off domain has none to save.

def memory_chain(make_domain, memory):
    td, o = make_domain(disks=("vda", "vdb"), running=True)
    mem = {}
    for i, name in enumerate(["s1", "s2", "s3"]):
        o.write_all(i)
        mem[name] = os.path.join(td.dir, "%s.mem" % name) if name in memory else None
        o.snapshot(name, memory=mem[name])
    o.write_all(0)
    o.check()
    for name in memory:
        assert os.path.exists(mem[name])
    return td, o, mem


def test_delete_memory_snapshot(make_domain):
    """Deleting a snapshot with memory state removes its memory file."""
    td, o, mem = memory_chain(make_domain, ["s2"])
    o.delete("s2")
    assert not os.path.exists(mem["s2"]), "memory file of deleted s2 is left"
    o.check()


def test_delete_memory_snapshots_children(make_domain):
    """--children removes the memory file of every snapshot it deletes."""
    td, o, mem = memory_chain(make_domain, ["s2", "s3"])
    o.delete("s2", DELETE_CHILDREN)
    for name in ("s2", "s3"):
        assert not os.path.exists(mem[name]), "memory file of deleted %s is left" % name
    assert o.current == "s1"
    o.check()


# -- --metadata -------------------------------------------------------------

@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("victim,flags", [
    ("s1", DELETE_METADATA),
    ("s2", DELETE_METADATA | DELETE_CHILDREN),
    ("s1", DELETE_METADATA | DELETE_CHILDREN_ONLY)],
    ids=["root", "children-middle", "children-only-root"])
def test_delete_metadata(make_domain, state, victim, flags):
    """--metadata only forgets snapshots: no image is created, removed or
    written, with or without its subtree; the tree follows the flags."""
    td, o = chain(make_domain, state)
    before = files_state(td.dir)
    o.delete(victim, flags)
    assert files_state(td.dir) == before
    o.check()



@pytest.mark.series
@pytest.mark.parametrize("flags", [DELETE_METADATA | DELETE_CHILDREN_ONLY,
                                   DELETE_METADATA | DELETE_CHILDREN],
                         ids=["children-only", "children"])
def test_delete_metadata_branched(make_domain, flags):
    """--metadata with a subtree in which a child has both children and a
    sibling (s1 -> s2 -> s3, then a revert to s1 and s4): plain 11.3.0
    deleted the descendants while walking the tree, followed the moved
    children into the freed sibling and crashed virtqemud.  The tree goes,
    no image changes, and the daemon answers."""
    td, o = make_domain(disks=("vda",))
    for i, name in enumerate(["s1", "s2", "s3"]):
        o.write_all(i)
        o.snapshot(name)
    o.revert("s1")
    o.snapshot("s4")
    o.check()
    before = files_state(td.dir)
    td.delete("s1", flags)
    assert files_state(td.dir) == before
    assert td.snapshot_names() == ([] if flags & DELETE_CHILDREN else ["s1"])
    assert td.dom.isActive() == 0       # the daemon still answers


# -- chains changed behind libvirt's back -----------------------------------

@pytest.mark.parametrize("state", STATES)
def test_delete_chain_changed_behind_back(make_domain, state):
    """The user merged vda's top image (s2's overlay) into its backing file
    without libvirt's snapshot code: running with 'virsh blockcommit
    --active --pivot', shut off with 'qemu-img commit' and a redefined
    domain whose vda points at the backing file.  s2's vda overlay is no
    longer in the chain the guest uses: deleting s2 must be refused, naming
    s2, vda and an image, and change nothing."""
    td, o = chain(make_domain, state, names=("s1", "s2"))
    top, backing = td.top("vda"), os.path.join(td.dir, "%s-vda.s1" % td.name)
    if state == "running":
        virsh("blockcommit", td.name, "vda", "--active", "--shallow", "--pivot")
    else:
        run("qemu-img", "commit", "-q", "-f", "qcow2", top)
        x = etree.fromstring(td.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        x.xpath("devices/disk[target/@dev='vda']/source")[0].set("file", backing)
        td.conn.defineXML(etree.tostring(x).decode())
    assert td.top("vda") == backing
    # The commit changed what s2 saved for vda (the backing file now holds
    # the live data): the user's doing, which the model follows.
    o.snaps["s2"]["disks"]["vda"] = list(o.live["vda"])
    assert tree(td) == ({"s1": None, "s2": "s1"}, "s2")
    o.check()

    err = refused(td, td.delete, "s2")
    assert_names(err, "s2", "vda", [top, backing])
    assert not block_jobs(td)
    o.check()


# -- another block job ------------------------------------------------------
# Running only: block jobs run in QEMU; a shut-off domain has none.

def test_delete_during_block_job(make_domain, workdir):
    """A block copy of vdb is running: deleting a snapshot that touches vdb is
    refused, naming the snapshot and vdb, and the copy keeps running.  Once
    the copy is aborted the same delete succeeds."""
    td, o = chain(make_domain, "running", names=("s1", "s2"))
    dest = os.path.join(workdir, "copy.qcow2")   # outside the domain's images
    virsh("blockcopy", td.name, "vdb", "--dest", dest, "--format", "qcow2",
          "--transient-job", "--bandwidth", "1")
    assert "vdb" in block_jobs(td)

    err = refused(td, td.delete, "s1")
    assert_names(err, "s1", "vdb", images_of(td, "vdb"))
    assert "block job" in str(err).lower(), str(err)
    assert "vdb" in block_jobs(td), "the copy must keep running"

    td.dom.blockJobAbort("vdb", 0)
    assert not block_jobs(td)
    o.check()
    o.delete("s1")
    after_delete(o)


# -- bad requests -----------------------------------------------------------

@pytest.mark.parametrize("state", STATES)
def test_delete_nonexistent_with_flags(make_domain, state):
    """A name that is no snapshot is refused with every flag combination,
    through virsh and the API, and nothing changes."""
    td, o = chain(make_domain, state, names=("s1", "s2"))
    before = world(td)
    for opts in (["--children"], ["--children-only"], ["--metadata", "--children"]):
        p = virsh("snapshot-delete", td.name, "nosuch", *opts, check=False)
        assert p.returncode != 0
        assert "Domain snapshot not found" in p.stdout and "nosuch" in p.stdout, p.stdout
    for flags in (DELETE_CHILDREN, DELETE_CHILDREN_ONLY):
        err = refused(td, td.delete, "nosuch", flags)
        assert err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT
        assert "nosuch" in str(err)
    assert world(td) == before
    o.check()


@pytest.mark.parametrize("state", STATES)
def test_delete_children_and_children_only(make_domain, state):
    """--children and --children-only contradict each other.  virsh passes
    both on; libvirt's public API refuses the pair (in the client library and
    again in the daemon's entry point, so a raw RPC client gets the same
    answer), before the driver sees it."""
    td, o = chain(make_domain, state, names=("s1", "s2", "s3"))
    err = refused(td, td.delete, "s2", DELETE_CHILDREN | DELETE_CHILDREN_ONLY)
    assert err.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    msg = str(err)
    assert "mutually exclusive" in msg and "DELETE_CHILDREN_ONLY" in msg, msg
    p = virsh("snapshot-delete", td.name, "s2", "--children", "--children-only",
              check=False)
    assert p.returncode != 0 and "mutually exclusive" in p.stdout, p.stdout
    o.check()


# -- daemon restart ---------------------------------------------------------

def restart_daemon(td):
    """Stop and start the private daemons as 'make stop' / 'make run' do,
    without a build: running domains keep running.  Reconnect @td."""
    daemon = os.path.join(TOP, "scripts", "daemon.sh")
    run(daemon, "stop")
    run(daemon, "start")
    td.conn = libvirt.open("qemu:///system")
    td.dom = td.conn.lookupByName(td.name)


@pytest.mark.parametrize("state", STATES)
def test_delete_across_daemon_restart(make_domain, state):
    """Everything the second delete needs (the tree, s3's disks now backed by
    s1's images after the first merge) must come from what the daemon saved,
    not from its memory of the first delete."""
    td, o = chain(make_domain, state)
    o.delete("s2")
    o.check()
    running = td.running()
    restart_daemon(td)
    assert td.running() == running
    o.check()
    o.write_all(5)
    o.delete("s3")
    after_delete(o)


# -- a management application -----------------------------------------------

@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("flags", [DELETE_CHILDREN, DELETE_CHILDREN_ONLY],
                         ids=["children", "children-only"])
def test_delete_management_app(make_domain, state, flags):
    """What a management application does: hold snapshot handles, list a
    snapshot's descendants, delete through the handle with a flag, and then
    find exactly those snapshots gone (their handles dead) and the rest as
    the API promises."""
    td, o = chain(make_domain, state)
    snap = td.dom.snapshotLookupByName("s2")
    handles = {s.getName(): s for s in td.dom.listAllSnapshots()}
    desc = sorted(s.getName() for s in
                  snap.listAllChildren(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_DESCENDANTS))
    assert desc == ["s3", "s4"]

    snap.delete(flags)
    o.deleted("s2", flags)

    gone = desc + (["s2"] if flags & DELETE_CHILDREN else [])
    for name in gone:
        err = error_of(handles[name].getXMLDesc, 0)
        assert err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT
    assert td.dom.snapshotNum(0) == 4 - len(gone)
    assert td.dom.snapshotCurrent().getName() == ("s2" if flags & DELETE_CHILDREN_ONLY else "s1")
    if flags & DELETE_CHILDREN_ONLY:
        assert snap.numChildren(0) == 0 and snap.isCurrent(0) == 1
    after_delete(o)


# -- aborting a delete --------------------------------------------------------
# Running only: virDomainAbortJob needs a running domain.

BIG = 512 * 1024 * 1024


def big_snapshot(make_domain, running):
    """A domain on one 512 MiB disk with snapshot s1: its own image and
    the overlay s1 created."""
    def big(d):
        return {"vda": create_image(os.path.join(d, "big.qcow2"), size=BIG)}

    td, _ = make_domain(images=big, running=running)
    own = td.top("vda")
    td.snapshot("s1")
    return td, own, td.top("vda")


@pytest.mark.series
def test_abort_refused_while_merging(make_domain):
    """virDomainAbortJob ('virsh domjobabort'), asked again and again from
    a second connection while a live delete commits 512 MiB: the delete has
    begun writing, which only goes forward, so every abort is refused with
    an error that says so, and the delete finishes with nothing lost.
    Plain 11.3.0 sent QEMU 'migrate_cancel' and reported success while the
    delete went on.  'virsh blockjob --info' shows the commit meanwhile, and
    'virsh domjobinfo' the bytes merged so far, growing towards the total
    (11.3.0 showed only the time)."""
    td, own, overlay = big_snapshot(make_domain, running=True)
    td.fill("vda", 0x5a, BIG)

    aborts, jobs = [], []

    def each(dom):
        try:
            dom.abortJob()
            aborts.append("aborted")
        except libvirt.libvirtError as e:
            aborts.append(str(e))
        try:
            info = dom.blockJobInfo("vda", 0)
        except libvirt.libvirtError:
            info = None
        if info:
            jobs.append(info)

    error, progress = delete_watched(td, "s1", each)

    assert error is None, error
    assert "aborted" not in aborts, "an abort reported success: %s" % aborts
    refused = [a for a in aborts if "cannot abort the snapshot delete" in a]
    assert refused, "no abort reached the delete while it ran: %s" % aborts
    assert "it will finish" in refused[0], refused[0]
    assert any(j.get("type") == libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT
               for j in jobs), "no commit shown on vda: %s" % jobs[:3]
    # the delete copies what the overlay holds: at least the 512 MiB written
    assert progress and all(t >= BIG and p + r == t for p, r, t in progress), progress
    done = [p for p, _, _ in progress]
    assert done == sorted(done), "the bytes merged went back: %s" % done
    assert any(0 < p < progress[0][2] for p in done), (
        "domjobinfo never showed the merge part done: %s" % progress)

    # once over, 'domjobinfo --completed' has the delete with all of it
    # merged (plain 11.3.0 kept nothing)
    done = td.dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    assert done.get("type") == libvirt.VIR_DOMAIN_JOB_COMPLETED, done
    assert done.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_SNAPSHOT_DELETE, done
    assert done["data_total"] == progress[-1][2] and done["data_processed"] == done["data_total"]
    assert done["data_remaining"] == 0, done

    assert td.dom.snapshotNum(0) == 0
    assert td.top("vda") == own and not os.path.exists(overlay)
    td.stop()
    out = run("qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x5a 0 %d" % BIG, own).stdout
    assert "verification failed" not in out, out


@pytest.mark.series
def test_progress_while_shut_off(make_domain):
    """Shut off, qemu-img merges: 'virsh domjobinfo' (virDomainGetJobStats
    on a second connection) shows the bytes merged growing within the one
    qemu-img commit of 512 MiB, from qemu-img's own progress, not only once
    it finished; 'domjobinfo --completed' has all of it merged."""
    td, own, overlay = big_snapshot(make_domain, running=False)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5b 0 %d" % BIG, overlay)

    error, progress = delete_watched(td, "s1")

    assert error is None, error
    assert progress and all(t >= BIG and p + r == t for p, r, t in progress), progress
    done = [p for p, _, _ in progress]
    assert done == sorted(done), "the bytes merged went back: %s" % done
    part = sorted({p for p in done if 0 < p < progress[0][2]})
    assert len(part) >= 2, "domjobinfo showed no progress within the merge: %s" % progress
    completed = td.dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    assert completed["data_processed"] == completed["data_total"] == progress[-1][2], completed
    assert td.dom.snapshotNum(0) == 0
    assert td.top("vda") == own and not os.path.exists(overlay)
    out = run("qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x5b 0 %d" % BIG, own).stdout
    assert "verification failed" not in out, out


def delete_watched(td, name, each=None):
    """Delete snapshot @name in the background while a second connection
    asks virDomainGetJobStats ('virsh domjobinfo') again and again, and
    calls @each(domain) each time.  Returns the delete's error (None) and
    the (processed, remaining, total) bytes the statistics showed."""
    other = libvirt.open(None)
    dom = other.lookupByName(td.name)
    result = {}

    def delete():
        result["error"] = error_or_none(td.delete, name)

    worker = threading.Thread(target=delete)
    worker.start()
    progress = []
    while worker.is_alive():
        try:
            stats = dom.jobStats(0)
        except libvirt.libvirtError:
            stats = {}
        if stats.get("type") == libvirt.VIR_DOMAIN_JOB_UNBOUNDED and "data_total" in stats:
            progress.append((stats["data_processed"], stats["data_remaining"],
                             stats["data_total"]))
        if each:
            each(dom)
        time.sleep(0.02)
    worker.join()
    other.close()
    return result["error"], progress


def error_or_none(fn, *args):
    try:
        fn(*args)
    except libvirt.libvirtError as e:
        return e
    return None
