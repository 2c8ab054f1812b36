"""Deleting snapshots in trees that mix internal and external snapshots, as
virt-manager 5 makes them (external by default, on top of older internal
ones).

An internal snapshot lives inside the image that was the disk's active
layer when it was taken; the oracle reads its data out of that image
('qemu-img convert -l') and checks that every image holds exactly the
internal snapshots the model puts there.  Each shape runs shut off and
running; after every delete every invariant is proven, and every remaining
snapshot is reverted to and proven again, except internal snapshots with
external descendants: reverting to those is refused (it would overwrite
what the descendants saved), which is checked to change nothing.
"""

import pytest

from harness import DELETE_CHILDREN, DELETE_CHILDREN_ONLY, error_of, files_state

# Upstream refuses these deletes (or has no journal): they need the series
# and are skipped against the unpatched base or Debian's own packages.
pytestmark = pytest.mark.series

STATES = ["shutoff", "running"]


def internal(o, name):
    """An internal snapshot, in the domain's state: taken while running it
    holds the memory too, and reverting to it loads it with QEMU's
    snapshot-load.  (Plain 11.3.0 cannot: it starts QEMU for an incoming
    migration, whose inactive block nodes snapshot-load refuses with
    "Device ... is writable but does not support snapshots"; the series
    fixes that first.)"""
    o.snapshot_internal(name)


def iee(make_domain, state):
    """i1 (internal, in the disks' images) -> s2 -> s3 (external), vda +
    vdb, each snapshot after writes, then writes over saved data."""
    td, o = make_domain(disks=("vda", "vdb"), running=(state == "running"))
    o.write_all(0)
    internal(o, "i1")
    o.write_all(0)
    o.write_all(1)
    o.snapshot("s2")
    o.write_all(1)
    o.write_all(2)
    o.snapshot("s3")
    o.write_all(2)
    o.write_all(0)
    o.check()
    return td, o


def has_external_descendant(o, name):
    todo = o.children(name)
    while todo:
        c = todo.pop()
        if not o.snaps[c].get("internal"):
            return True
        todo += o.children(c)
    return False


def revert_each(o):
    """Revert to every remaining snapshot and prove the invariants; those
    libvirt must refuse are refused without a change."""
    td = o.td
    for name in sorted(o.snaps):
        if o.snaps[name].get("internal") and has_external_descendant(o, name):
            before = (files_state(td.dir), td.tops(), td.snapshot_names(), o.current)
            err = error_of(td.revert, name)
            assert "cannot revert to internal snapshot '%s'" % name in str(err), err
            # what to do, in the API's terms rather than a virsh command
            assert "delete the snapshots taken after it" in str(err), err
            assert (files_state(td.dir), td.tops(), td.snapshot_names(),
                    td.dom.snapshotCurrent().getName()) == before
            continue
        o.revert(name)
        o.check()
        o.write_all(5)
        o.check()


@pytest.mark.series
def test_revert_internal_running(make_domain):
    """The regression of libvirt 11.2 and 11.3 fixed in 11.4: an internal
    snapshot of a running domain, with its memory, is reverted to while the
    domain runs, then deleted; nothing external involved."""
    td, o = make_domain(disks=("vda", "vdb"), running=True)
    o.write_all(0)
    o.snapshot_internal("i1")
    o.write_all(0)
    o.write_all(3)
    o.check()
    o.revert("i1")
    assert td.running()
    o.check()
    o.write_all(4)
    o.snapshot_internal("i2")
    o.write_all(5)
    o.revert("i1")
    o.check()
    o.revert("i2")
    o.check()
    o.delete("i1")
    o.check()
    o.delete("i2")
    o.check()


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("order", [("s3", "s2", "i1"), ("s2", "s3", "i1"),
                                   ("i1", "s2", "s3")],
                         ids=["current-first", "middle-first", "internal-first"])
def test_delete_each(make_domain, state, order):
    """i1 -> s2 -> s3, deleting one after the other.  s2 saved the image
    holding i1: deleting it commits s3's image into that image (never the
    other way round, which would unlink i1's image).  Deleting i1 while s2
    or s3 remain deletes it from an image below the active layer: with
    qemu-img shut off, with QEMU's job on the backing node running."""
    td, o = iee(make_domain, state)
    for name in order:
        o.delete(name)
        o.check()
        revert_each(o)
    assert not o.snaps
    o.write_all(7)
    o.check()


@pytest.mark.parametrize("state", STATES)
def test_delete_children_from_internal_root(make_domain, state):
    """--children on the internal root removes both kinds in one plan: i1
    from its image, s2's and s3's images committed into it."""
    td, o = iee(make_domain, state)
    base = {d: td.dir + "/%s-%s.qcow2" % (td.name, d) for d in td.disks}
    o.delete("i1", DELETE_CHILDREN)
    assert not o.snaps
    assert td.tops() == base
    o.check()
    o.write_all(7)
    o.check()


@pytest.mark.parametrize("state", STATES)
def test_delete_children_only_of_internal_root(make_domain, state):
    """--children-only on the internal root: s2 and s3 go, their images are
    committed into the image holding i1 (an active commit when running),
    and i1, now without external descendants, can be reverted to."""
    td, o = iee(make_domain, state)
    base = {d: td.dir + "/%s-%s.qcow2" % (td.name, d) for d in td.disks}
    o.delete("i1", DELETE_CHILDREN_ONLY)
    assert sorted(o.snaps) == ["i1"]
    assert td.tops() == base
    o.check()
    revert_each(o)
    o.write_all(7)
    o.check()


@pytest.mark.parametrize("state", STATES)
def test_delete_external_below_internal(make_domain, state):
    """s1 (external) -> i2 (internal, taken on s1's overlay): deleting s1
    cannot merge s1's image with the overlay (that would unlink the image
    holding i2, or change what i2 reads), so only the metadata goes and
    the images stay; i2 still reads what it saved, and reverting to it
    works."""
    td, o = make_domain(disks=("vda", "vdb"), running=(state == "running"))
    o.write_all(0)
    o.snapshot("s1")
    o.write_all(1)
    internal(o, "i2")
    o.write_all(1)
    o.write_all(2)
    o.check()
    names = sorted(files_state(td.dir))
    tops = td.tops()
    o.delete("s1")
    assert sorted(files_state(td.dir)) == names
    assert td.tops() == tops
    o.check()
    revert_each(o)
    o.delete("i2")
    o.check()
