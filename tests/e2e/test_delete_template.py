"""A disk that is its own qcow2 overlay on a shared template (issue 11).

Domain a's vda is own.qcow2, an overlay the user made on tmpl.qcow2 (data in
some slots); domain b's vda is another overlay on the same template.  Deleting
snapshots of a may merge data into a's own file, never into the template
(b reads it), never into b's images, and never unlinks or replaces own.qcow2:
once the last snapshot is gone, a's active layer is own.qcow2 again, on the
template.  Plain 11.3.0 does so (a delete commits the snapshot's overlay into
its backing image, the own file for the root); the series' planner must too.

The Oracle proves it after every step (harness check 6): both oracles guard
what lies below their disk's own file (the template), a's oracle also guards
b's own file, and each checks that its own file was not unlinked or
replaced.  b's oracle proves b still reads what it wrote over the template.

Running and shut off.  --children, --children-only and the branched tree are
marked 'series': plain 11.3.0 refuses them for external snapshots, so they
are skipped against the unpatched base ('SNAPDEL_INSTANCE=base make e2e');
single deletes of the root, middle and current snapshot, and the template
named by a relative backing file name, run against both.
"""

import json
import os
import subprocess

import pytest

from harness import (DELETE_CHILDREN, DELETE_CHILDREN_ONLY, DISK_SIZE, SLOT,
                     SLOTS, create_image, image_chain, run)

STATES = ["running", "shutoff"]
# slot -> pattern the template holds (the domains' writes use 1..255 from 1
# up, so a template byte is told apart from them)
TEMPLATE = {0: 0xa0, 2: 0xa2, 5: 0xa5, 9: 0xa9, 15: 0xaf}
TEMPLATE_SLOTS = [TEMPLATE.get(i, 0) for i in range(SLOTS)]
series = pytest.mark.series


def make_template(path):
    """A qcow2 image holding TEMPLATE (TEMPLATE_SLOTS)."""
    create_image(path)
    for slot, pattern in TEMPLATE.items():
        run("qemu-io", "-f", "qcow2", "-c",
            "write -P %d %d %d" % (pattern, slot * SLOT, SLOT), path)
    return path


def backing_of(path):
    """The backing file name as written in an image's header."""
    out = run("qemu-img", "info", "-U", "--output=json", path).stdout
    return json.loads(out).get("backing-filename")


class Setup:
    """Domain a (td, o) whose vda is @own on @tmpl, and the others' oracles
    that must hold through every step of a."""

    def __init__(self, td, o, own, tmpl, others=()):
        self.td, self.o, self.own, self.tmpl = td, o, own, tmpl
        self.others = list(others)
        self.backing_name = backing_of(own)
        assert tmpl in o.guarded, "the oracle does not guard the template %s" % tmpl

    def check(self):
        self.o.check()
        for other in self.others:
            other.check()
        # the own file is still the live disk's, right on the template,
        # which it names as the user wrote it
        chain = image_chain(self.td.top("vda"))
        assert chain[-2:] == [self.own, self.tmpl], (
            "vda's live chain %s does not end in its own file on the template" % chain)
        assert backing_of(self.own) == self.backing_name

    def delete(self, name, flags=0):
        running = self.td.running()
        self.o.delete(name, flags)
        assert self.td.running() == running
        self.check()

    def finished(self):
        """Every snapshot gone: vda is its own file on the template again,
        and nothing else is left in the domain's directory."""
        assert not self.o.snaps and self.o.current is None
        assert self.td.top("vda") == self.own
        assert image_chain(self.own) == [self.own, self.tmpl]
        want = [os.path.basename(f) for f in (self.own, self.tmpl)
                if os.path.dirname(f) == self.td.dir]
        assert sorted(os.listdir(self.td.dir)) == sorted(want)
        self.o.write("vda", 11)
        self.check()


def shared_template(make_domain, workdir, state):
    """tmpl.qcow2 in workdir/shared (outside both domains' directories),
    domain b with own.qcow2 on it and data of its own, then domain a with
    own.qcow2 on it, guarding b's own file."""
    shared = os.path.join(workdir, "shared")
    os.makedirs(shared)
    tmpl = make_template(os.path.join(shared, "tmpl.qcow2"))
    slots = TEMPLATE_SLOTS

    def own(directory):
        return {"vda": create_image(os.path.join(directory, "own.qcow2"), backing=tmpl)}

    running = state == "running"
    tb, ob = make_domain(images=own, live={"vda": slots}, running=running, suffix="b")
    ob.write("vda", 2)              # over a template slot
    ob.write("vda", 3)
    ob.check()
    td, o = make_domain(images=own, live={"vda": slots}, running=running)
    o.guard(tb.top("vda"))
    s = Setup(td, o, td.top("vda"), tmpl, [ob])
    s.check()
    return s


def chain3(s):
    """s1 -> s2 -> s3 on a's vda, writes before each (over template slots
    too) and after the last."""
    o = s.o
    for slot in (1, 2):
        o.write("vda", slot)
    o.snapshot("s1")
    for slot in (5, 4):
        o.write("vda", slot)
    o.snapshot("s2")
    for slot in (0, 6):
        o.write("vda", slot)
    o.snapshot("s3")
    for slot in (9, 1):
        o.write("vda", slot)
    s.check()


# -- upstream-supported: one snapshot at a time --------------------------------

@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("victim", ["s1", "s2", "s3"], ids=["root", "middle", "current"])
def test_delete_single(make_domain, workdir, state, victim):
    """Delete @victim, then the rest root first: each root delete merges
    into the own file, whose backing is the template."""
    s = shared_template(make_domain, workdir, state)
    chain3(s)
    s.delete(victim)
    for name in sorted(s.o.snaps):
        s.o.write("vda", 7)
        s.delete(name)
    s.finished()


@pytest.mark.parametrize("state", STATES)
def test_delete_relative_backing(make_domain, state):
    """own.qcow2 names its backing file relatively ('base.qcow2', made with
    qemu-img in the images' directory): the chain resolves it, base.qcow2
    in the domain's directory is guarded and referenced, and the header
    still names it relatively after every delete."""
    def images(directory):
        make_template(os.path.join(directory, "base.qcow2"))
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                        "-b", "base.qcow2", "own.qcow2", str(DISK_SIZE)],
                       cwd=directory, check=True)
        return {"vda": os.path.join(directory, "own.qcow2")}

    td, o = make_domain(images=images, live={"vda": TEMPLATE_SLOTS},
                        running=(state == "running"))
    base = os.path.join(td.dir, "base.qcow2")
    s = Setup(td, o, td.top("vda"), base)
    assert s.backing_name == "base.qcow2"
    s.check()
    chain3(s)
    for name in sorted(s.o.snaps):
        s.o.write("vda", 7)
        s.delete(name)
    s.finished()


# -- the series only ----------------------------------------------------------

@series
@pytest.mark.parametrize("state", STATES)
def test_delete_children(make_domain, workdir, state):
    s = shared_template(make_domain, workdir, state)
    chain3(s)
    s.delete("s1", DELETE_CHILDREN)
    s.finished()


@series
@pytest.mark.parametrize("state", STATES)
def test_delete_children_only(make_domain, workdir, state):
    s = shared_template(make_domain, workdir, state)
    chain3(s)
    s.delete("s1", DELETE_CHILDREN_ONLY)
    assert sorted(s.o.snaps) == ["s1"] and s.o.current == "s1"
    s.o.write("vda", 8)
    s.check()
    s.delete("s1")
    s.finished()


@series
@pytest.mark.parametrize("state", STATES)
def test_delete_branched(make_domain, workdir, state):
    """s1 -> s2, revert to s1, s3: the own file (s1's saved image) has two
    children.  Deleting s1 only changes the tree; deleting s2 leaves the own
    file one child (the revert's overlay, s3's saved image), which must be
    merged into the own file, not the own file pulled up into it (nor into
    the template); then s3."""
    s = shared_template(make_domain, workdir, state)
    o = s.o
    for slot in (1, 2):
        o.write("vda", slot)
    o.snapshot("s1")
    for slot in (5, 4):
        o.write("vda", slot)
    o.snapshot("s2")
    o.write("vda", 0)               # discarded by the revert
    s.check()
    o.revert("s1")
    s.check()
    for slot in (6, 9):
        o.write("vda", slot)
    o.snapshot("s3")
    for slot in (1, 7):
        o.write("vda", slot)
    s.check()
    s.delete("s1")
    assert sorted(o.snaps) == ["s2", "s3"] and o.current == "s3"
    o.write("vda", 10)
    s.delete("s2")
    o.write("vda", 12)
    s.delete("s3")
    s.finished()
