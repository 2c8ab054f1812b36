"""Fixtures of the end-to-end suite.  'make e2e' starts the private daemon and
sets the environment (scripts/env.sh) before pytest runs."""

import os
import shutil
import subprocess

import libvirt
import pytest

from harness import Oracle, TestDomain, short_name

# 'make deb-check' runs the suite against the daemon of the .debs that
# 'make deb' built, installed in a copy of the trixie root (Debian's paths);
# 'make deb-check-stock' against Debian's own packages, without the series.
PACKAGED = bool(os.environ.get("SNAPDEL_PACKAGED"))
STOCK = PACKAGED and bool(os.environ.get("SNAPDEL_DEB_STOCK"))

# one per daemon (checkout and instance): two checkouts' suites may run at once
WORKROOT = "/var/tmp/snapdel-e2e-" + (
    "deb" if PACKAGED else os.path.basename(os.environ.get("SNAPDEL_STATEDIR", "x")))

# 'SNAPDEL_INSTANCE=base make e2e' runs against the unpatched 11.3.0 that
# scripts/bench.sh builds (instance 'base', see scripts/common.sh): tests
# marked 'series' need the series and are skipped there.
INSTANCE = os.environ.get("SNAPDEL_INSTANCE", "")
UPSTREAM = INSTANCE == "base" or STOCK


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "series: needs the patch series; skipped against the "
        "unpatched base (SNAPDEL_INSTANCE=base)")
    # Errors are raised as exceptions and asserted; do not print them too.
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    prefix = os.environ.get("SNAPDEL_PREFIX")
    if not prefix:
        pytest.exit("SNAPDEL_PREFIX is not set: run the suite with 'make e2e'", 2)
    if PACKAGED:
        # libvirt0 must be ours (its version carries '+snapdel'), or with
        # SNAPDEL_DEB_STOCK Debian's
        ver = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libvirt0"],
                             stdout=subprocess.PIPE, text=True).stdout
        if ("+snapdel" in ver) == STOCK or not ver:
            pytest.exit("libvirt0 '%s' is not the package expected (%s)"
                        % (ver, "Debian's" if STOCK else "the one 'make deb' built"), 2)
        return
    # The bindings must load the libvirt.so we built, not Debian's libvirt0.
    want = INSTANCE + "-prefix" if INSTANCE else "prefix"
    if os.path.basename(prefix.rstrip("/")) != want:
        pytest.exit("SNAPDEL_PREFIX=%s is not the prefix of SNAPDEL_INSTANCE='%s'"
                    % (prefix, INSTANCE), 2)
    with open("/proc/self/maps") as f:
        maps = f.read()
    if os.path.join(prefix, "lib", "libvirt.so") not in maps:
        pytest.exit("python3-libvirt did not load %s/lib/libvirt.so" % prefix, 2)


def pytest_collection_modifyitems(config, items):
    # SNAPDEL_SERIES_ON_BASE=1 runs them against the base anyway, to show
    # what they catch there
    if not UPSTREAM or os.environ.get("SNAPDEL_SERIES_ON_BASE"):
        return
    skip = pytest.mark.skip(reason="needs the series; the daemon is unpatched "
                            "11.3.0 (SNAPDEL_INSTANCE=base)")
    for item in items:
        if item.get_closest_marker("series"):
            item.add_marker(skip)


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
    """make_domain(disks=("vda",), images=None, live=None, running=False,
    suffix="", formats=None, imgdir=None) -> (TestDomain, Oracle).

    The domain is named after the test, its images are in workdir/img; a
    test that needs more than one domain gives the others a @suffix (name
    e2e-<test>-<suffix>, images in workdir/img-<suffix>).  @images maps a
    target to its image, or is a function of the images' directory that
    returns that map: it runs after a stale domain of the same name (a run
    that died) was cleaned up with its directory, so it can make the
    images there.  @live: target -> the SLOTS patterns the disk holds.
    @formats: target -> its image's format (qcow2 if not given); @imgdir:
    another directory for the images; @secrets: target -> the uuid of the
    secret holding its LUKS image's passphrase (harness.PASSPHRASE); @qmp:
    the path of a second QMP monitor QEMU listens on (harness.Qmp)."""
    made = []

    def make(disks=("vda",), images=None, live=None, running=False, suffix="",
             formats=None, imgdir=None, secrets=None, qmp=None):
        name = "e2e-" + short_name(request.node.nodeid) + ("-" + suffix if suffix else "")
        imgdir = imgdir or os.path.join(workdir, "img" + ("-" + suffix if suffix else ""))
        old = None
        try:
            old = conn.lookupByName(name)
        except libvirt.libvirtError:
            pass
        if old is not None:
            stale = TestDomain.__new__(TestDomain)
            stale.dom, stale.dir = old, imgdir
            stale.cleanup()
        if callable(images):
            os.makedirs(imgdir, exist_ok=True)
            images = images(imgdir)
        td = TestDomain(conn, name, imgdir, disks, images, formats, secrets, qmp)
        made.append(td)
        oracle = Oracle(td, os.path.join(workdir, "ref"), live)
        if running:
            td.start()
        return td, oracle

    yield make
    for td in made:
        td.cleanup()
