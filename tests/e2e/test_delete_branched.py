"""Deleting snapshots in branched trees.

Since libvirt 9.9, reverting to an external snapshot S creates a new overlay
on S's saved image; if S has children, the new overlay is S's <revertDisks>
and the next snapshot becomes another child of S: the tree branches, and the
image S saved is the backing file of several overlays.  The engine's rules,
proved here running and shut off with the oracle after every step:

  * an image nothing reads any more is unlinked;
  * a free image (not the live top, not a remaining snapshot's saved state)
    with exactly one child is merged with it: the child committed down, or
    the free image pulled up into the child (qemu-img rebase), whichever
    copies fewer allocated bytes;
  * a free image with two or more children stays (data the branches share);
    the snapshot only leaves the metadata.  A later delete that leaves it
    with one child merges it;
  * images of a branch the domain does not run on are merged with qemu-img,
    even while the domain runs.

The daemon logs each plan ("deleting snapshot '%s' of domain '%s' copies
%llu bytes in %zu merges"); the tests compare it with the allocated bytes of
the images they expect to be merged.  Reverts go through Oracle.revert (see
TestDomain.revert for the flags libvirt 11.3 needs).
"""

import json
import os
import re

import pytest

from harness import (DELETE_CHILDREN, DELETE_CHILDREN_ONLY, image_chain,
                     run, virsh)
from test_delete_engine import assert_names, images_of, refused

# Upstream refuses these deletes (or has no journal): they need the series
# and are skipped against the unpatched base or Debian's own packages.
pytestmark = pytest.mark.series

STATES = ["running", "shutoff"]
DISKS = ("vda", "vdb")


# -- helpers -----------------------------------------------------------------

def daemon_log():
    return os.path.join(os.environ["SNAPDEL_LOGDIR"],
                        os.environ.get("SNAPDEL_QEMUD", "virtqemud") + ".log")


def log_size():
    try:
        return os.path.getsize(daemon_log())
    except FileNotFoundError:
        return 0


def logged_plan(td, name, offset):
    """(bytes, merges) of the plan the daemon logged for deleting @name of
    @td's domain since @offset of its log (the whole log if it was rotated
    by a daemon restart since)."""
    path = daemon_log()
    if os.path.getsize(path) < offset:
        offset = 0
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    pat = re.compile(r"deleting snapshot '%s' of domain '%s' copies (\d+) bytes in (\d+) merges"
                     % (re.escape(name), re.escape(td.name)))
    found = pat.findall(text)
    assert found, "no plan logged for deleting %s of %s in %s" % (name, td.name, path)
    return int(found[-1][0]), int(found[-1][1])


def allocated(path):
    """Allocated bytes of a file, as the planner counts them."""
    return os.stat(path).st_blocks * 512


def assert_nothing_unread(o, keep=()):
    """Stricter than check()'s leak rule, which counts every existing
    overlay a snapshot's <disks> names: here every file of the domain must
    be read by a live disk or a remaining snapshot's saved state (or be a
    memory file).  An overlay only a stale pointer names (that of a snapshot
    that is not current, after the branch it started was deleted) holds
    data nothing reads: the engine must have unlinked it."""
    td = o.td
    read = set()
    for top in td.tops().values():
        read.update(image_chain(top))
    for name, s in o.snaps.items():
        sources, _, mem = o.snapshot_sources(name)
        for d in s["disks"]:
            read.update(image_chain(sources[d]))
        if mem:
            read.add(mem)
    unread = sorted({os.path.join(td.dir, f) for f in os.listdir(td.dir)} - read - set(keep))
    assert not unread, "files no disk and no snapshot reads: %s" % unread


def verify(o, keep=()):
    """Every invariant the oracle proves, that the next revert will discard
    the right files, and that nothing is kept that nothing reads (but the
    files in @keep)."""
    o.check()
    o.check_current_overlay()
    assert_nothing_unread(o, keep)


def delete(o, name, flags=0, merges=None, nbytes=None, keep=()):
    """Delete through the oracle; the domain's state must not change, and
    the plan the daemon logged must have @merges merges copying @nbytes
    bytes (when given).  Then verify(o, @keep)."""
    td = o.td
    running = td.running()
    offset = log_size()
    o.delete(name, flags)
    assert td.running() == running, "deleting %s changed the domain's state" % name
    got = logged_plan(td, name, offset)
    want = (nbytes if nbytes is not None else got[0],
            merges if merges is not None else got[1])
    assert got == want, "plan of deleting %s: %d bytes in %d merges, expected %d in %d" % (
        name, got[0], got[1], want[0], want[1])
    verify(o, keep)
    return got


def saved(o, name):
    """target -> image snapshot @name saved, as libvirt has it now."""
    return o.snapshot_sources(name)[0]


def backing_of(path):
    """The backing file named in an image's header (None: none)."""
    out = run("qemu-img", "info", "-U", "--output=json", path).stdout
    return json.loads(out).get("backing-filename")


def children_of(td, image):
    """Images of the domain's directory whose header names @image as backing."""
    out = []
    for f in sorted(os.listdir(td.dir)):
        path = os.path.join(td.dir, f)
        with open(path, "rb") as fh:
            if fh.read(4) != b"QFI\xfb":
                continue
        if backing_of(path) == image:
            out.append(path)
    return out


def disk_files(td, target):
    return sorted(images_of(td, target))


def base_image(td, target):
    return os.path.join(td.dir, "%s-%s.qcow2" % (td.name, target))


def assert_only_base_images(td):
    """Every snapshot gone: each disk is its own image again, alone."""
    for d in td.disks:
        assert image_chain(td.top(d)) == [base_image(td, d)]
    assert sorted(os.listdir(td.dir)) == sorted(
        os.path.basename(base_image(td, d)) for d in td.disks)


def live_chain_state(td):
    """The live chains and the stamps of their files."""
    out = {}
    for d in td.disks:
        chain = image_chain(td.top(d))
        out[d] = [(f, os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in chain]
    return out


def chain3(make_domain, state):
    """s1 -> s2 -> s3 on vda + vdb, s3 current.  The image s2 saved (s1's
    overlay) and the one s3 saved (s2's overlay) are written so that merging
    them is cheaper by pulling on vda (1 slot under 3) and by committing on
    vdb (3 slots under 1)."""
    td, o = make_domain(disks=DISKS, running=(state == "running"))
    o.write_all(0)
    o.snapshot("s1")
    o.write("vda", 1)
    for slot in (1, 2, 3):
        o.write("vdb", slot)
    o.snapshot("s2")
    for slot in (4, 5, 6):
        o.write("vda", slot)
    o.write("vdb", 4)
    o.snapshot("s3")
    o.write_all(7)                  # discarded by the revert
    verify(o)
    return td, o


def delete_offbranch_s2(o, s1):
    """Delete s2 of chain3's tree after the domain left that branch: the
    image s2 saved has one child, the image s3 saved.  Both are off the live
    chain, so they are merged with qemu-img even while the domain runs, and
    the live chain is not touched.  vda pulls s2's image up into s3's, vdb
    commits s3's image down into s2's (the cheaper way, as chain3 wrote
    them); the plan copies the smaller image of each disk."""
    td = o.td
    s2, s3 = saved(o, "s2"), saved(o, "s3")
    for d in td.disks:
        assert backing_of(s3[d]) == s2[d]
    assert allocated(s2["vda"]) < allocated(s3["vda"])
    assert allocated(s2["vdb"]) > allocated(s3["vdb"])
    want = sum(min(allocated(s2[d]), allocated(s3[d])) for d in td.disks)
    live = live_chain_state(td)
    delete(o, "s2", merges=2, nbytes=want)
    assert live_chain_state(td) == live, "merging another branch touched the live chain"
    # vda pulled: s2's image is gone, s3's image backs onto s1's
    assert not os.path.exists(s2["vda"])
    assert saved(o, "s3")["vda"] == s3["vda"]
    assert backing_of(s3["vda"]) == s1["vda"]
    # vdb committed: s3's image is gone, s2's image holds s3's state
    assert not os.path.exists(s3["vdb"])
    assert saved(o, "s3")["vdb"] == s2["vdb"]
    assert backing_of(s2["vdb"]) == s1["vdb"]


def branched(make_domain, state):
    """s1 -> s2, then revert to s1 and write: s1 is current, has child s2
    (a branch the domain does not run on any more) and its revert overlay
    is the live top."""
    td, o = make_domain(disks=DISKS, running=(state == "running"))
    o.write_all(0)
    o.snapshot("s1")
    o.write_all(1)
    o.snapshot("s2")
    o.write_all(2)                  # discarded by the revert
    verify(o)
    o.revert("s1")
    verify(o)
    o.write_all(3)
    o.write_all(0)
    verify(o)
    return td, o


def finish(o):
    """What is left keeps working: the guest writes, every remaining snapshot
    can be reverted to and reads back what it saved, and deleting the rest
    one by one (the current snapshot last: deleting with no current snapshot
    is test_delete_current_with_child's) ends with each disk back to its
    single image."""
    o.write_all(10)
    verify(o)
    for name in sorted(o.snaps):
        o.revert(name)
        verify(o)
        o.write_all(11)
        verify(o)
    for name in sorted(o.snaps, key=lambda n: (n == o.current, n)):
        delete(o, name)
        o.write_all(12)
        verify(o)
    assert not o.snaps
    assert_only_base_images(o.td)


# -- 1: a branch off the root, then the root and the middle deleted ----------

@pytest.mark.parametrize("state", STATES)
def test_delete_root_then_middle_of_branched(make_domain, state):
    """s1 -> s2 -> s3, revert to s1, s4 on the new branch.  Deleting s1
    leaves the image s1 saved (two branches back onto it) and only changes
    the tree.  Deleting s2 then frees s2's saved image, which has one child
    (s3's saved image) on the branch the domain does not run on: merged with
    qemu-img even while running, without touching the live chain.  vda is
    written so that pulling s2's image up is cheaper, vdb so that committing
    s3's image down is.  Then every remaining snapshot is reverted to."""
    td, o = chain3(make_domain, state)
    s1 = saved(o, "s1")
    o.revert("s1")
    verify(o)
    o.write_all(8)
    o.snapshot("s4")
    o.write_all(9)
    o.write_all(0)
    verify(o)
    for d in td.disks:
        assert len(children_of(td, s1[d])) == 2, children_of(td, s1[d])

    # s1: the image it saved has two children (s2's and s4's saved images)
    names = sorted(os.listdir(td.dir))
    delete(o, "s1", merges=0, nbytes=0)
    assert sorted(o.snaps) == ["s2", "s3", "s4"] and o.current == "s4"
    assert sorted(os.listdir(td.dir)) == names
    for d in td.disks:
        assert os.path.exists(s1[d])
        assert len(children_of(td, s1[d])) == 2, children_of(td, s1[d])

    # s2: off the running branch, its saved image has one child
    delete_offbranch_s2(o, s1)

    # revert to s3 and s4 in turn, then delete them
    finish(o)


# -- 1b: the other branch merged, then reverted to ----------------------------

@pytest.mark.parametrize("state", STATES)
def test_delete_offbranch_then_revert(make_domain, state):
    """s1 -> s2 -> s3, revert to s1 and write (no snapshot after the revert:
    s1 keeps its <revertDisks>).  Deleting s2, on the branch the domain left,
    merges its image with s3's with qemu-img (pulled on vda, committed on
    vdb), running or not; then s3 and s1 are reverted to and read back what
    they saved (the saved <domain> of a snapshot taken running records the
    backing chain, which must not name a merged image any more)."""
    td, o = chain3(make_domain, state)
    s1 = saved(o, "s1")
    o.revert("s1")
    verify(o)
    o.write_all(8)
    o.write_all(0)
    verify(o)
    delete_offbranch_s2(o, s1)
    assert sorted(o.snaps) == ["s1", "s3"] and o.current == "s1"
    finish(o)


# -- 2: the current snapshot has a child ---------------------------------------

@pytest.mark.parametrize("state", STATES)
def test_delete_current_with_child(make_domain, state):
    """s1 -> s2, revert to s1, write: s1 is current and has child s2.
    Deleting s1 changes only the tree (its saved image has two children,
    s2's saved image and the live overlay); current goes to s1's parent,
    none.  Deleting s2 afterwards (a delete while the domain has no
    current snapshot) unlinks s2's image, which leaves s1's image with one
    child, the live top: it is merged then."""
    td, o = branched(make_domain, state)
    s1, s2 = saved(o, "s1"), saved(o, "s2")
    names = sorted(os.listdir(td.dir))
    delete(o, "s1", merges=0, nbytes=0)
    assert o.current is None and sorted(o.snaps) == ["s2"]
    assert sorted(os.listdir(td.dir)) == names
    for d in td.disks:
        assert len(children_of(td, s1[d])) == 2

    o.write_all(4)
    verify(o)
    tops = td.tops()
    want = sum(allocated(tops[d]) for d in td.disks)
    delete(o, "s2", merges=2, nbytes=want)
    for d in td.disks:
        assert not os.path.exists(s2[d])
    assert_only_base_images(td)


# -- 3: --children and --children-only over a branched tree --------------------

@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("victim,flags", [("s2", DELETE_CHILDREN),
                                          ("s1", DELETE_CHILDREN),
                                          ("s1", DELETE_CHILDREN_ONLY)],
                         ids=["children-offbranch", "children-root",
                              "children-only-root"])
def test_delete_children_branched(make_domain, state, victim, flags):
    """The tree of test 2 (s1 current with the reverted live overlay, s2 on
    the other branch).  --children on s2 and --children-only on s1 remove
    only s2: its saved image is unlinked, nothing is merged.  --children on
    s1 removes both: s2's image is unlinked and s1's image, left with the
    live top as its only child, merged with it."""
    td, o = branched(make_domain, state)
    s1, s2 = saved(o, "s1"), saved(o, "s2")
    tops = td.tops()
    if victim == "s1" and flags & DELETE_CHILDREN:
        delete(o, victim, flags, merges=2,
               nbytes=sum(allocated(tops[d]) for d in td.disks))
        assert not o.snaps and o.current is None
        assert_only_base_images(td)
    else:
        delete(o, victim, flags, merges=0, nbytes=0)
        assert sorted(o.snaps) == ["s1"] and o.current == "s1"
        assert td.tops() == tops
        for d in td.disks:
            assert not os.path.exists(s2[d])
            assert image_chain(tops[d]) == [tops[d], s1[d]]
    finish(o)


# -- 4: three branches off one snapshot --------------------------------------

@pytest.mark.parametrize("state", STATES)
def test_delete_three_branches(make_domain, state):
    """Revert to s1 three times, each time write and take s2a, s2b, s2c:
    three images back onto the image s1 saved.  Deleting s1 keeps it (shared
    data of three branches), deleting s2a leaves it two children, deleting
    s2b leaves it one (the image s2c saved, under the live top): merged at
    once, so the live chain is the live top on a single image that holds
    s2c's state.  Deleting s2c merges the rest; nothing is left behind."""
    td, o = make_domain(disks=DISKS, running=(state == "running"))
    o.write_all(0)
    o.snapshot("s1")
    o.write_all(1)                  # discarded by the first revert
    for i, name in enumerate(["s2a", "s2b", "s2c"]):
        o.revert("s1")
        verify(o)
        o.write_all(2 + i)
        o.write_all(0)
        o.snapshot(name)
        verify(o)
    o.write_all(5)
    verify(o)
    shared = saved(o, "s1")
    branch = {n: saved(o, n) for n in ("s2a", "s2b", "s2c")}
    for d in td.disks:
        assert sorted(children_of(td, shared[d])) == sorted(b[d] for b in branch.values())

    names = sorted(os.listdir(td.dir))
    delete(o, "s1", merges=0, nbytes=0)
    assert sorted(os.listdir(td.dir)) == names
    for d in td.disks:
        assert os.path.exists(shared[d])
        assert sorted(children_of(td, shared[d])) == sorted(b[d] for b in branch.values())
    assert o.current == "s2c"

    delete(o, "s2a", merges=0, nbytes=0)
    for d in td.disks:
        assert not os.path.exists(branch["s2a"][d])
        assert sorted(children_of(td, shared[d])) == sorted(
            [branch["s2b"][d], branch["s2c"][d]])

    # one child left: the shared image is merged with s2c's saved image,
    # which sits under the live top (the base of a chain is never pulled)
    o.write_all(6)
    verify(o)
    want = sum(allocated(branch["s2c"][d]) for d in td.disks)
    delete(o, "s2b", merges=2, nbytes=want)
    for d in td.disks:
        top = td.top(d)
        chain = image_chain(top)
        assert len(chain) == 2, chain
        assert chain[1] == shared[d] == saved(o, "s2c")[d], chain
        assert not os.path.exists(branch["s2b"][d])
        assert not os.path.exists(branch["s2c"][d])
        assert disk_files(td, d) == sorted(chain)
        assert children_of(td, shared[d]) == [top]

    tops = td.tops()
    delete(o, "s2c", merges=2, nbytes=sum(allocated(tops[d]) for d in td.disks))
    assert o.current is None
    assert_only_base_images(td)


# -- 5: a refused delete in a branched tree -----------------------------------

@pytest.mark.parametrize("state", STATES)
def test_delete_branched_detached_disk(make_domain, state):
    """s1 -> s2, revert to s1, s3 (s1 has two children, s3 is current), then
    vdb is detached.  s1 and s3, on the branch the domain runs on, made
    overlays of vdb: deleting either (or s1 with its subtree) is refused,
    naming the snapshot, vdb and an image, and nothing changes.  s2, on the
    other branch, can still go: its images are only unlinked."""
    td, o = branched(make_domain, state)
    o.snapshot("s3")
    o.write_all(4)
    verify(o)
    vdb = images_of(td, "vdb")
    vdb_top = td.top("vdb")

    # Running: 'detach-disk --live' fails here ("Bus 'pci.0' does not support
    # hotplugging"); detach from the persistent definition and restart the
    # domain so that the live one has no vdb either.
    virsh("detach-disk", td.name, "vdb", "--config")
    if state == "running":
        td.stop()
        td.start()
    td.disks.remove("vdb")
    del o.live["vdb"]
    assert td.xml().xpath("devices/disk/target/@dev") == ["vda"]
    # vdb's last active layer is the user's, now attached nowhere: only s3's
    # overlay pointer names it, and no delete may take it
    keep = [vdb_top]
    verify(o, keep)

    for name, flags in (("s1", 0), ("s3", 0), ("s1", DELETE_CHILDREN)):
        err = refused(td, td.delete, name, flags)
        assert_names(err, name, "vdb", vdb)
        assert "no disk 'vdb'" in str(err), str(err)
        verify(o, keep)

    s2 = saved(o, "s2")
    delete(o, "s2", merges=0, nbytes=0, keep=keep)
    for d in ("vda", "vdb"):
        assert not os.path.exists(s2[d])
    assert sorted(o.snaps) == ["s1", "s3"] and o.current == "s3"
    assert os.path.exists(vdb_top)
    o.write_all(5)
    verify(o, keep)
