"""The private daemon: 'make run' gives a working demo, and a daemon restart
(make stop / make run) leaves running domains running and keeps snapshots."""

import os
import subprocess

import libvirt

from harness import virsh

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def make(*targets):
    p = subprocess.run(["make", "-s", "-C", TOP] + list(targets),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.returncode == 0, p.stdout
    return p.stdout


def qemu_pid(name):
    path = os.path.join(os.environ["SNAPDEL_RUNDIR"], "libvirt", "qemu", name + ".pid")
    return int(open(path).read().strip())


def test_restart_keeps_domains_and_snapshots(make_domain):
    td, o = make_domain(disks=("vda", "vdb"), running=True)
    o.write_all(0)
    o.snapshot("s1")
    o.write_all(1)
    pid = qemu_pid(td.name)

    make("stop")
    os.kill(pid, 0)                       # QEMU survived the daemon
    make("run")

    conn = libvirt.open("qemu:///system")
    td.conn, td.dom = conn, conn.lookupByName(td.name)
    assert td.running() and qemu_pid(td.name) == pid
    o.check()
    # the reconnected daemon drives the domain and its snapshots as before
    o.write_all(2)
    o.delete("s1")
    o.check()


def test_make_run_demo():
    """The README's promise: make run, then snapshot-create-as and
    snapshot-delete on the demo.  A demo that existed before is left as it
    was found (running); one this test made is removed again."""
    existed = virsh("dominfo", "demo", check=False).returncode == 0
    images = os.path.join(os.environ["SNAPDEL_STATEDIR"], "images")
    out = make("run")
    assert "eval \"$(make -s env)\"" in out
    try:
        assert virsh("domstate", "demo").stdout.strip() == "running"
        targets = virsh("domblklist", "demo").stdout
        assert "vda" in targets and "vdb" in targets
        virsh("snapshot-create-as", "demo", "e2e-demo", "--disk-only")
        assert "e2e-demo" in virsh("snapshot-list", "demo", "--name").stdout
        virsh("snapshot-delete", "demo", "e2e-demo")
        assert "e2e-demo" not in virsh("snapshot-list", "demo", "--name").stdout
        for f in os.listdir(images):
            assert "e2e-demo" not in f, "overlay %s left behind" % f
    finally:
        if not existed:
            virsh("destroy", "demo", check=False)
            virsh("undefine", "demo", "--snapshots-metadata", check=False)
            for f in os.listdir(images):
                if f.startswith("demo-"):
                    os.unlink(os.path.join(images, f))
