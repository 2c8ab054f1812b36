"""Deleting external snapshots in a linear chain: what libvirt 11.3.0 already
does, which the series must keep working, running and shut off."""

import pytest

from harness import DELETE_METADATA, files_state, virsh

STATES = ["running", "shutoff"]


def chain4(make_domain, state, disks=("vda", "vdb")):
    """s1 -> s2 -> s3 -> s4 with a write to every disk between snapshots."""
    td, o = make_domain(disks=disks, running=(state == "running"))
    for i, name in enumerate(["s1", "s2", "s3", "s4"]):
        o.write_all(i)
        o.snapshot(name)
    o.write_all(4)
    o.write_all(0)          # overwrite data that snapshots saved
    o.check()
    return td, o


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("victim", ["s1", "s2", "s4"], ids=["root", "middle", "current"])
def test_delete_single(make_domain, state, victim):
    td, o = chain4(make_domain, state)
    o.delete(victim)
    o.check()
    # and the rest of the chain, one by one, down to no snapshot at all
    for name in sorted(o.snaps, reverse=True):
        o.write_all(5)
        o.delete(name)
        o.check()
    assert o.current is None


@pytest.mark.parametrize("state", STATES)
def test_delete_with_virsh(make_domain, state):
    """The command line users type, not only the API."""
    td, o = chain4(make_domain, state, disks=("vda",))
    out = virsh("snapshot-delete", td.name, "s3").stdout
    assert "Domain snapshot s3 deleted" in out
    o.deleted("s3")
    o.check()


@pytest.mark.parametrize("state", STATES)
def test_delete_metadata_only(make_domain, state):
    td, o = chain4(make_domain, state, disks=("vda",))
    before = files_state(td.dir)
    o.delete("s2", DELETE_METADATA)
    # --metadata removes the snapshot from the tree and touches no image
    assert set(files_state(td.dir)) == set(before)
    o.check()


def test_delete_nonexistent(make_domain):
    td, o = make_domain(running=True)
    o.snapshot("s1")
    p = virsh("snapshot-delete", td.name, "nosuch", check=False)
    assert p.returncode != 0
    assert "Domain snapshot not found" in p.stdout and "nosuch" in p.stdout
    o.check()
