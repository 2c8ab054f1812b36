"""The tooling's bad paths: each must end in a clear error, never a hang and
never a half-done state.  Scripts that fetch or apply are run in a scratch
copy of the checkout (scripts + patches), so the real tree is not touched;
the daemon cases stop the private daemon for a moment and start it again."""

import os
import shutil
import socket
import subprocess

import pytest

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BASE_TARBALL = "libvirt_11.3.0.orig.tar.xz"


def sh(argv, cwd=TOP, env=None, timeout=300):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(argv, cwd=cwd, env=e, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


@pytest.fixture
def scratch(tmp_path):
    """A copy of the checkout's scripts and series with the verified base
    tarball already downloaded, as a clone would have after 'make base'."""
    top = tmp_path / "checkout"
    for d in ("scripts", "patches"):
        shutil.copytree(os.path.join(TOP, d), top / d)
    (top / "build" / "dl").mkdir(parents=True)
    shutil.copy(os.path.join(TOP, "build", "dl", BASE_TARBALL), top / "build" / "dl")
    return top


def pin(top, var, value):
    path = top / "scripts" / "common.sh"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(
        "%s=%s\n" % (var, value) if l.startswith(var + "=") else l for l in lines))


def test_hash_mismatch(scratch):
    pin(scratch, "LIBVIRT_ORIG_SHA256", "0" * 64)
    p = sh(["scripts/fetch-base.sh"], cwd=scratch)
    assert p.returncode != 0
    assert "hash mismatch for %s: expected %s" % (BASE_TARBALL, "0" * 64) in p.stdout
    # the bad download is kept aside, never used as the base
    assert not (scratch / "build" / "dl" / BASE_TARBALL).exists()
    assert (scratch / "build" / "dl" / (BASE_TARBALL + ".bad")).exists()


def test_no_source_package(scratch):
    pin(scratch, "LIBVIRT_VERSION", "99.0.0")
    p = sh(["scripts/fetch-base.sh"], cwd=scratch)
    assert p.returncode != 0
    assert "no deb-src reachable" in p.stdout and "99.0.0" in p.stdout


def test_patch_fails_to_apply(scratch):
    bad = scratch / "patches" / "9999-broken.patch"
    bad.write_text(
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: Nobody <nobody@invalid>\n"
        "Date: Thu, 1 Jan 2026 00:00:00 +0000\n"
        "Subject: [PATCH] broken: Touch a line that is not there\n\n"
        "Signed-off-by: Nobody <nobody@invalid>\n---\n"
        "diff --git a/meson.build b/meson.build\n"
        "--- a/meson.build\n+++ b/meson.build\n"
        "@@ -1,3 +1,3 @@\n-no such line\n+replacement\n context\n context\n")
    with open(scratch / "patches" / "series", "a") as f:
        f.write("9999-broken.patch\n")
    p = sh(["scripts/tree.sh"], cwd=scratch)
    assert p.returncode != 0
    assert "a patch of the series failed to apply on base" in p.stdout
    assert "broken: Touch a line that is not there" in p.stdout


def daemon(*args, env=None):
    return sh([os.path.join(TOP, "scripts", "daemon.sh")] + list(args), env=env, timeout=120)


@pytest.fixture
def stopped_daemon():
    assert daemon("stop").returncode == 0
    yield
    p = daemon("start")
    assert p.returncode == 0, p.stdout


def test_daemon_socket_in_use(stopped_daemon):
    path = os.path.join(os.environ["SNAPDEL_RUNDIR"], "libvirt", "virtlogd-sock")
    if os.path.exists(path):
        os.unlink(path)
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(path)
    squatter.listen(1)
    try:
        p = daemon("start")
    finally:
        squatter.close()
        os.unlink(path)
    assert p.returncode != 0
    assert "socket %s is already in use by another process" % path in p.stdout


def test_daemon_that_does_not_come_up(stopped_daemon):
    p = daemon("start", env={"VIRTQEMUD_CONF_EXTRA": "max_clients = \"many\""})
    assert p.returncode != 0
    assert "virtqemud failed to start" in p.stdout
    # the daemon's own words are shown, not just that it failed
    assert "max_clients" in p.stdout
