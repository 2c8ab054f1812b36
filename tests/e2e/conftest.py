"""Fixtures of the end-to-end suite.  'make e2e' starts the private daemon and
sets the environment (scripts/env.sh) before pytest runs."""

import os
import shutil

import libvirt
import pytest

from harness import Oracle, TestDomain, short_name

WORKROOT = "/var/tmp/snapdel-e2e"


def pytest_configure(config):
    # Errors are raised as exceptions and asserted; do not print them too.
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    # The bindings must load the libvirt.so we built, not Debian's libvirt0.
    prefix = os.environ.get("SNAPDEL_PREFIX")
    if not prefix:
        pytest.exit("SNAPDEL_PREFIX is not set: run the suite with 'make e2e'", 2)
    with open("/proc/self/maps") as f:
        maps = f.read()
    if os.path.join(prefix, "lib", "libvirt.so") not in maps:
        pytest.exit("python3-libvirt did not load %s/lib/libvirt.so" % prefix, 2)


@pytest.fixture
def conn():
    c = libvirt.open("qemu:///system")
    assert c.getLibVersion() >= 11003000
    yield c
    c.close()


@pytest.fixture
def workdir(request):
    d = os.path.join(WORKROOT, short_name(request.node.nodeid))
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_domain(conn, workdir, request):
    """make_domain(disks=("vda",), images=None) -> (TestDomain, Oracle)."""
    made = []

    def make(disks=("vda",), images=None, live=None, running=False):
        name = "e2e-" + short_name(request.node.nodeid)
        old = None
        try:
            old = conn.lookupByName(name)
        except libvirt.libvirtError:
            pass
        if old is not None:
            stale = TestDomain.__new__(TestDomain)
            stale.dom, stale.dir = old, os.path.join(workdir, "img")
            stale.cleanup()
        td = TestDomain(conn, name, os.path.join(workdir, "img"), disks, images)
        made.append(td)
        oracle = Oracle(td, os.path.join(workdir, "ref"), live)
        if running:
            td.start()
        return td, oracle

    yield make
    for td in made:
        td.cleanup()
