"""Faults other than the daemon's death: QEMU dying in the middle of a
delete, and the image being merged into running out of space.

QEMU killed (SIGKILL) while the daemon is held at an exact monitor write of
a running delete (strace, as in test_delete_resume.py), before QEMU read
the command:

  block-commit      the first one: no merge has started in QEMU
  job-finalize /    the first disk's: its commit is ready but not finished
  job-complete      (for an active commit, job-finalize comes after
                    job-complete: QEMU has made the base a copy of the top
                    and waits with the guest's writes on hold; the journal
                    marks the merge synced, and the resume points the disk
                    at the base instead of merging again)
  2nd job-finalize  vda's merge is finished (QEMU rewrote the header above
  2nd job-complete  it, or libvirt moved vda's saved definition onto the
                    base at the pivot), vdb's is not; for an active commit
                    the guest has been writing into vda's base since the
                    pivot, which the test stands for by a write into that
                    image after QEMU died: merging the old top again would
                    overwrite it

Then strace lets the daemon go: the delete finds QEMU gone, waits for the
domain to be stopped and finishes with qemu-img in the same call, which
returns success.  With 'daemon too' the daemon is killed as well and
QEMU dies while no daemon runs: the restarted daemon finds the domain dead
at reconnect and finishes the delete in the background.  Either way the
domain is shut off, every invariant holds, and it starts on the merged
chain with the right data.

Out of space: the domain's images live on a tmpfs that is shrunk to what
they use plus a little before the delete, so that the merge cannot write
the data it copies.  The delete must fail naming the image it writes and
the space, change nothing any reader sees, and finish once the file system
is grown again.

The tests kill the private daemon and QEMU: do not run them alongside
other e2e tests on the same daemon.
"""

import os
import re
import signal
import subprocess

import libvirt
import pytest
from lxml import etree

import faults
from faults import (SHAPES, Deleter, Log, alive, chain, daemon_pid, hold_monitor_write,
                    journal, journal_merges, kill_daemon, proven, qemu_pid, start_daemon,
                    wait_resumed, wait_until, WAIT)
from harness import SLOT, error_of, files_state, image_chain, run
import test_delete_branched as branched

hygiene = faults.hygiene        # autouse: a daemon, and no domain left over

# shape, QMP command, which monitor write of the delete it is, whether
# vda's merge is finished by then (see test_delete_resume.ONLINE_POINTS)
QEMU_KILLS = [
    ("s2", "block-commit", 1, False),
    ("s2", "job-finalize", 3, False),
    ("s2", "job-finalize", 9, True),
    ("s3", "block-commit", 1, False),
    ("s3", "job-complete", 4, False),
    ("s3", "job-finalize", 5, False),
    ("s3", "job-complete", 13, True),
    ("children", "block-commit", 1, False),
    ("children", "job-finalize", 5, False),
    ("children", "job-complete", 17, True),
]


def saved_source(td, target):
    """The file the domain's saved definition runs disk @target on."""
    path = os.path.join(os.environ["SNAPDEL_PREFIX"], "etc", "libvirt", "qemu",
                        td.name + ".xml")
    files = etree.parse(path).xpath("devices/disk[target/@dev=$t]/source/@file", t=target)
    assert len(files) == 1, files
    return files[0]


def kill_qemu(td):
    qpid = qemu_pid(td)
    os.kill(qpid, signal.SIGKILL)
    wait_until(lambda: not alive(qpid), "QEMU %d to die" % qpid)


def write_image(o, target, path, slot):
    """What the guest would have written into @path, the layer @target
    runs on, before QEMU died: written with qemu-io, and into the model."""
    o.pattern = o.pattern % 255 + 1
    run("qemu-io", "-f", "qcow2", "-c",
        "write -P %d %d %d" % (o.pattern, slot * SLOT, SLOT), path)
    o.live[target][slot] = o.pattern


def qemu_kill_cases():
    for shape, command, nth, done in QEMU_KILLS:
        for daemon in (False, True):
            if daemon and not done:
                continue
            yield pytest.param(shape, command, nth, done, daemon,
                               id="%s-%s%d%s" % (shape, command, nth,
                                                 "-daemon-too" if daemon else ""))


@pytest.mark.parametrize("shape,command,nth,done,daemon", list(qemu_kill_cases()))
def test_qemu_killed(make_domain, workdir, shape, command, nth, done, daemon):
    victim, flags = SHAPES[shape]
    td, o = chain(make_domain, running=True)
    deleter = Deleter(td, victim, flags)
    st, _, written, _ = hold_monitor_write(td, deleter, nth, "delay_enter", workdir)
    try:
        assert written == command, "monitor write %d is %s, not %s" % (nth, written, command)
        merges = {m["disk"]: m for m in journal_merges(td)}
        assert journal(td)["phase"] == "data"
        vda = merges["vda"]
        if vda["active"] == "yes":
            # the saved definition runs vda on the base once QEMU pivoted
            assert (saved_source(td, "vda") == vda["base"]) == done
        else:
            # the image above the top backs onto the base once finalized
            assert (image_chain(saved_source(td, "vda"))[1] == vda["base"]) == done
        if daemon:
            kill_daemon(daemon_pid(), release=st.release)
        kill_qemu(td)
        if done and merges["vda"]["active"] == "yes":
            # vda pivoted onto the base: the guest's later writes went there
            write_image(o, "vda", merges["vda"]["base"], 0)
    finally:
        st.detach()
    o.deleted(victim, flags)

    if daemon:
        deleter.interrupted()
        log = Log()
        start_daemon(td)
        wait_resumed(td, o, log, "data")
    else:
        deleter.join(WAIT)
        assert deleter.result == "returned success", deleter.result
        assert journal(td) is None

    assert not td.running()
    o.check()
    td.start()
    proven(o)


# -- out of space --------------------------------------------------------------

@pytest.fixture
def small_fs(workdir):
    """A tmpfs where make_domain puts the images (workdir/img); yields a
    function that sets how many bytes stay free."""
    mnt = os.path.join(workdir, "img")
    os.makedirs(mnt)
    run("mount", "-t", "tmpfs", "-o", "size=64m", "snapdel-e2e", mnt)

    def leave_free(nbytes):
        st = os.statvfs(mnt)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        size = (used + nbytes + 4095) // 4096 * 4096
        run("mount", "-o", "remount,size=%d" % size, mnt)

    yield leave_free
    subprocess.run(["umount", "-l", mnt])


@pytest.mark.parametrize("state", ["shutoff", "running"])
def test_out_of_space(make_domain, small_fs, state):
    """s1 -> s2 -> s3 with 1 MiB written into each layer; deleting s2 merges
    1 MiB or more into one image of each disk, with 128 KiB free."""
    td, o = chain(make_domain, running=(state == "running"))
    o.check()
    small_fs(128 * 1024)
    before = files_state(td.dir)
    names = td.snapshot_names()

    err = error_of(td.delete, "s2")
    msg = str(err)
    # "not enough space for '/.../img/e2e-...-vda.s1' on its file system: the
    #  snapshot delete copies up to 1.2 MiB into it, and 0.1 MiB are free; ..."
    m = re.search(r"not enough space for '([^']+)' on its file system: the snapshot delete "
                  r"copies up to ([\d.]+) MiB into it, and ([\d.]+) MiB are free", msg)
    assert m, msg
    assert os.path.dirname(m.group(1)) == td.dir, msg
    assert float(m.group(2)) >= 1.0 and float(m.group(3)) < 1.0, msg
    assert "run the delete again" in msg, msg
    failed = td.dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    assert failed.get("type") == libvirt.VIR_DOMAIN_JOB_FAILED, failed
    assert "not enough space" in failed.get("errmsg", ""), failed

    # nothing a reader sees has changed; the merge is pending
    assert td.snapshot_names() == names
    assert sorted(files_state(td.dir)) == sorted(before)
    assert journal(td)["phase"] == "data"
    if state == "running":
        assert td.running()
        assert not [d for d in td.disks if td.dom.blockJobInfo(d, 0)], "a block job is left"
    o.check()

    small_fs(64 * 1024 * 1024)
    o.delete("s2")
    assert journal(td) is None
    proven(o)


@pytest.mark.series
def test_out_of_space_domain_starts(make_domain, small_fs):
    """Shut off, a delete that runs out of space stays pending (phase
    'data').  The domain still starts, while the file system is still full:
    on the chains as they are on disk, with every snapshot listed and
    reading what it saved.  The guest writes once there is space again, and
    the retried delete finishes it while the domain runs: the commit is
    redone live, and the guest's newest data stays."""
    td, o = chain(make_domain, running=False)
    small_fs(128 * 1024)
    assert error_of(td.delete, "s2") is not None
    assert journal(td)["phase"] == "data"

    log = Log()
    td.start()                      # the resume fails again: still no space
    assert td.running()
    assert journal(td)["phase"] == "data"
    assert td.snapshot_names() == ["s1", "s2", "s3"]
    assert any("stays pending" in ln for ln in log.read()), log.tail()
    o.check()

    small_fs(64 * 1024 * 1024)
    o.write_all(5)
    o.check()
    o.delete("s2")
    assert journal(td) is None
    proven(o)


@pytest.mark.series
def test_pending_pull_waits_for_shutoff(make_domain, small_fs):
    """Shut off, deleting s2 of test_delete_branched.py's chain3 pulls the
    image s2 saved up into the image s3 saved, on vda (in the disk's chain),
    leaving the image below (s1's saved image) as it is.  Out of space the
    delete stays pending and the domain starts anyway.  Retried while it
    runs, the pull must not become a block commit, which would write into
    s1's saved image: the retry is refused, nothing any snapshot reads
    changes, and once the domain is shut off qemu-img finishes the delete."""
    td, o = branched.chain3(make_domain, "shutoff")
    small_fs(128 * 1024)
    assert error_of(td.delete, "s2") is not None
    assert [(m["disk"], m["mode"]) for m in journal_merges(td)] == [
        ("vda", "pull"), ("vdb", "commit")], journal_merges(td)
    td.start()
    assert td.running() and journal(td)["phase"] == "data"
    o.check()

    small_fs(64 * 1024 * 1024)
    o.write_all(5)
    err = error_of(td.delete, "s2")
    assert err is not None and "once the domain is shut off" in str(err), err
    assert journal(td)["phase"] == "data"
    assert td.snapshot_names() == ["s1", "s2", "s3"]
    o.check()

    td.stop()                       # the delete finishes in the background
    wait_until(lambda: journal(td) is None and td.snapshot_names() == ["s1", "s3"],
               "the delete to be finished once the domain is shut off")
    o.deleted("s2")
    o.check()
    td.start()
    proven(o)


def test_out_of_space_refuses_nothing_else(make_domain, small_fs):
    """A delete that fits is not refused on a nearly full file system: the
    check is what qemu-img or QEMU report, not an estimate."""
    td, o = chain(make_domain, running=False)
    # a snapshot whose image holds nothing: its merge copies nothing
    o.snapshot("s4")
    small_fs(64 * 1024)
    o.delete("s4")
    o.check()


@pytest.mark.parametrize("state", ["shutoff", "running"])
def test_unwritable_target_changes_nothing(make_domain, workdir, state):
    """The image a merge writes made immutable (chattr +i; root ignores file
    modes): the delete fails naming the image and the reason (qemu-img's
    when shut off; QEMU's, or DAC's, which cannot hand the image to QEMU,
    when running), changes nothing, leaves no pending delete (the domain
    starts, snapshots are created and reverted to); once the image is
    writable again the same delete succeeds."""
    td, o = chain(make_domain, running=state == "running")
    o.check()
    target = os.path.join(td.dir, "%s-vda.s1" % td.name)   # s2's saved image
    run("chattr", "+i", target)
    try:
        before = files_state(td.dir)
        err = error_of(td.delete, "s2")
        assert err is not None and target in str(err), err
        assert files_state(td.dir) == before
        assert journal(td) is None, "a merge that wrote nothing left a journal: %s" % journal(td)
        assert td.snapshot_names() == ["s1", "s2", "s3"]
    finally:
        run("chattr", "-i", target)
    o.check()
    if not td.running():
        td.start()
    o.write_all(5)
    o.snapshot("s4")
    o.revert("s3")
    o.check()
    td.stop()
    o.delete("s2")
    o.check()
