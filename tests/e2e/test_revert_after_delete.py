"""Reverting after deletes that moved "current" (issue 11, items 1 and 2).

A revert discards what was written since the current snapshot by removing
the active layer.  Plain 11.3.0 took that layer to be the current
snapshot's overlay (or revert overlay), which is true only while deletes
leave the current snapshot owning the active layer; the series deletes
current snapshots with children, after which it is not:

  * no current snapshot at all (the current one was a root and was deleted):
    virtqemud crashed in qemuSnapshotRevertExternalFinish;
  * s1, s2, s3; revert to s2; delete s2 (s1 becomes current while the domain
    runs on s2's revert overlay); revert to s1: the revert removed s1's
    overlay, which s3's saved state reads, and left the real active layer.

Each test then reverts to every remaining snapshot, with the oracle (which
reads back every snapshot and fails on leaked or missing files) after each
step.  All need the series: plain 11.3.0 refuses to delete a current
snapshot that has children.
"""

import pytest

from harness import DELETE_CHILDREN_ONLY

STATES = ["running", "shutoff"]
series = pytest.mark.series


def reverted_then_deleted(make_domain, state):
    """s1, s2, s3; revert to s2; delete s2: s1 is current and the domain
    runs on s2's revert overlay."""
    td, o = make_domain(disks=("vda", "vdb"), running=(state == "running"))
    for i, name in enumerate(["s1", "s2", "s3"]):
        o.write_all(i)
        o.snapshot(name)
    o.write_all(3)
    o.revert("s2")
    o.write_all(4)
    o.delete("s2")
    assert o.current == "s1"
    o.check()
    return td, o


def revert_to_all(o):
    for name in sorted(o.snaps):
        o.write_all(9)
        o.revert(name)
        o.check()


@series
@pytest.mark.parametrize("state", STATES)
def test_revert_after_deleting_current_root(make_domain, state):
    """s1 -> s2, revert to s1 (current, with a child), delete s1: no
    snapshot is current; a revert to s2 must work and discard the revert
    overlay the domain ran on."""
    td, o = make_domain(disks=("vda", "vdb"), running=(state == "running"))
    o.write_all(0)
    o.snapshot("s1")
    o.write_all(1)
    o.snapshot("s2")
    o.write_all(2)
    o.revert("s1")
    o.write_all(3)
    o.check()
    o.delete("s1")
    assert o.current is None
    o.check()
    o.write_all(4)
    o.revert("s2")
    o.check()
    revert_to_all(o)


@series
def test_revert_after_children_only_delete(make_domain):
    """The issue's second way there, from a shut-off domain: snap f1; snap
    f2; revert f1; start; delete f1; delete f2 --children-only; revert f2."""
    td, o = make_domain(disks=("vda",))
    o.write("vda", 0)
    o.snapshot("f1")
    o.write("vda", 1)
    o.snapshot("f2")
    o.revert("f1")
    td.start()
    o.write("vda", 2)
    o.delete("f1")
    o.check()
    o.delete("f2", DELETE_CHILDREN_ONLY)
    o.check()
    o.revert("f2")
    o.check()


@series
@pytest.mark.parametrize("state", STATES)
def test_revert_after_deleting_reverted(make_domain, state):
    """s1, s2, s3; revert to s2; delete s2 (s1 becomes current); revert to
    s1: s3 must still read what it saved, and the revert overlay the domain
    ran on must go."""
    td, o = reverted_then_deleted(make_domain, state)
    o.write_all(5)
    o.revert("s1")
    o.check()
    revert_to_all(o)
    # and the tree can still be emptied
    for name in sorted(o.snaps, reverse=True):
        o.delete(name)
        o.check()


@series
@pytest.mark.parametrize("state", STATES)
def test_delete_after_deleting_reverted(make_domain, state):
    """The same tree, but the next step is a delete: s1 (now current) runs
    on s2's revert overlay, two images above what s1 saved.  Deleting s1,
    then s3, must work (no false "changed outside of libvirt") and leave
    each disk on its own file (the last delete merges the revert overlay
    into it)."""
    td, o = reverted_then_deleted(make_domain, state)
    own = {d: o.own[d][0] for d in td.disks}
    o.write_all(5)
    o.delete("s1")
    o.check()
    o.delete("s3")
    o.check()
    assert o.current is None and not o.snaps
    assert td.tops() == own
