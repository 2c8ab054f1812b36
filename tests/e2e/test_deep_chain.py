"""Backing chains at libvirt's own limit, QEMU_DOMAIN_STORAGE_SOURCE_CHAIN_MAX_DEPTH
(200 layers).  On plain 11.3.0 a domain about 40 layers deep can neither start
nor delete snapshots while shut off: QEMU's reports nest once per layer and the
JSON parser gave up at 32 levels.  A user who reaches the limit must be able to
delete snapshots to get back under it, so every path is tested at exactly 200.
"""

import os

import pytest

from harness import SLOTS, create_image, error_of, files_state, run

LIMIT = 200


def build_chain(directory, layers):
    """A chain of @layers qcow2 images; every 10th layer writes one slot.
    Returns the top image and the slot patterns the chain reads back."""
    os.makedirs(directory, exist_ok=True)
    slots = [0] * SLOTS
    prev = None
    for i in range(layers):
        path = os.path.join(directory, "layer%03d.qcow2" % i)
        create_image(path, backing=prev)
        if i % 10 == 0:
            slot, pattern = (i // 10) % SLOTS, 100 + i // 10
            run("qemu-io", "-f", "qcow2", "-c",
                "write -P %d %d %d" % (pattern, slot * 1024 * 1024, 1024 * 1024), path)
            slots[slot] = pattern
        prev = path
    return prev, slots


def deep_domain(make_domain, workdir, layers, running):
    top, slots = build_chain(os.path.join(workdir, "img"), layers)
    return make_domain(images={"vda": top}, live={"vda": slots}, running=running)


@pytest.mark.parametrize("state", ["running", "shutoff"])
def test_chain_at_limit(make_domain, workdir, state):
    # 199 layers: the domain starts, and one snapshot brings it to exactly 200.
    td, o = deep_domain(make_domain, workdir, LIMIT - 1, state == "running")
    o.check()
    o.snapshot("s1")
    o.write("vda", 3)
    o.check()
    assert len(o.snapshot_sources("s1")[0]) == 1

    # At 200 layers another snapshot is one past the limit: refused clearly,
    # with nothing changed.
    before = files_state(td.dir)
    err = error_of(td.snapshot, "s2")
    assert "more than 200 layers deep are not supported for disk 'vda'" in str(err)
    assert files_state(td.dir).keys() == before.keys()
    o.check()

    # Deleting the snapshot gets the user back under the limit.
    o.delete("s1")
    o.check()

    # The same at 200 layers with the other state: take s1 again, switch
    # state, delete it there, and finally run the 199-layer domain.
    o.snapshot("s1")
    o.write("vda", 4)
    if td.running():
        td.stop()
    else:
        td.start()
    o.check()
    o.delete("s1")
    o.check()
    if not td.running():
        td.start()
    o.write("vda", 5)
    o.check()


def test_domain_at_limit_starts(make_domain, workdir):
    td, o = deep_domain(make_domain, workdir, LIMIT, running=True)
    o.write("vda", 7)
    o.check()


def test_chain_past_limit_refused(make_domain, workdir):
    td, o = deep_domain(make_domain, workdir, LIMIT + 1, running=False)
    err = error_of(td.start)
    # the chain is detected from the images, and detection stops at the limit
    assert "backing chain of '%s' is more than 200 images deep" % td.top("vda") in str(err)
    assert not td.running()
    o.check()
