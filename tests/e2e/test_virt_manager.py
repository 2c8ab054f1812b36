"""virt-manager's snapshot Delete button, for real: trixie's virt-manager 5.0
under Xvfb, connected to qemu:///system, driven through its accessibility
tree (AT-SPI, with dogtail) as a user would drive it.

A running TCG domain gets snapshots from virt-manager's own "Create
snapshot" dialog (on a running domain virt-manager 5.0 takes external disk
and memory snapshots by default: the test asserts that the dialog offers
exactly that), with distinct data written into the guest's disk between
them.  Then the details window's Snapshots page deletes one: the list
libvirt reports must equal the list virt-manager shows, and the Oracle
proves the guest's disk and every remaining snapshot.  Last, a delete
libvirt refuses (the chain was changed behind its back) must show libvirt's
error message in virt-manager's error dialog.

Screenshots of the Snapshots page before and after the delete, and of the
error dialog, go to $SNAPDEL_VMGR_ARTIFACTS (default
/var/tmp/snapdel-artifacts/virt-manager), which is kept, with virt-manager's
debug log.

The GUI packages are not in the trixie root the CI's 'make e2e' uses, so
there the test is skipped; 'make deb-check' installs them
(DEB_CHECK_GUI_PACKAGES in scripts/deb-check.sh)."""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys

import libvirt
import pytest
from lxml import etree

from faults import wait_until
from harness import error_of, virsh

ARTIFACTS = os.environ.get("SNAPDEL_VMGR_ARTIFACTS",
                           "/var/tmp/snapdel-artifacts/virt-manager")

# virt-manager, an X server, a session bus for AT-SPI, dogtail and
# ImageMagick's 'import' for the screenshots
MISSING = [c for c in ("virt-manager", "Xvfb", "dbus-daemon", "import")
           if not shutil.which(c)]
MISSING += [m for m in ("dogtail",) if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason="needs virt-manager under Xvfb with AT-SPI; not installed: %s "
    "(DEB_CHECK_GUI_PACKAGES in scripts/deb-check.sh)" % ", ".join(MISSING))

# How long a step may take before the test gives up: snapshots with memory
# state and commits run under TCG on a busy 2-CPU machine.
TIMEOUT = 40


def wait_for(what, cond, timeout=TIMEOUT):
    """faults.wait_until(), with the AT-SPI events dispatched between polls."""
    def pumped():
        pump()
        return cond()
    return wait_until(pumped, what, timeout, 0.1)


def pump():
    """Dispatch the AT-SPI events that reached this process (windows shown
    and gone, children added): its cache of virt-manager's tree follows
    them only when GLib's main context runs."""
    if "gi.repository.GLib" in sys.modules:
        ctx = sys.modules["gi.repository.GLib"].MainContext.default()
        while ctx.iteration(False):
            pass


def killpg(proc):
    """End a process we started in a session of its own, with whatever it
    started (dbus-daemon's activated AT-SPI bus and registry)."""
    # the group is the process's own (start_new_session): never ours
    assert proc.pid != os.getpgrp()
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def desktop(tmp_path_factory):
    """An Xvfb display and a D-Bus session bus (AT-SPI's bus launcher and
    registry are activated on it), exported in this process's environment:
    AT-SPI in this process (dogtail) and virt-manager must meet on the same
    buses, so dogtail is imported only once they exist.  Yields dogtail's
    tree module."""
    saved = {k: os.environ.get(k) for k in
             ("DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "GTK_MODULES", "NO_AT_BRIDGE",
              "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR")}
    home = str(tmp_path_factory.mktemp("vmgr-home"))
    procs = []
    try:
        # Xvfb picks a free display and writes its number to the pipe
        r, w = os.pipe()
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x1024x24",
                                 "-nolisten", "tcp"], pass_fds=(w,), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(xvfb)
        os.close(w)
        display = b""
        with os.fdopen(r, "rb") as f:
            display = f.readline().strip()
        assert display, "Xvfb did not start"
        os.environ["DISPLAY"] = ":" + display.decode()
        bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1"],
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(bus)
        os.environ["DBUS_SESSION_BUS_ADDRESS"] = bus.stdout.readline().strip()
        # GTK's ATK bridge on, in virt-manager (it inherits this) and as
        # dogtail's test for "accessibility enabled" wants it
        os.environ["GTK_MODULES"] = "gail:atk-bridge"
        os.environ["NO_AT_BRIDGE"] = "0"
        # virt-manager's settings, cache (its snapshot screenshots) and
        # runtime files stay out of root's home
        for k in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
            os.environ[k] = os.path.join(home, k.lower())
            os.makedirs(os.environ[k], mode=0o700, exist_ok=True)

        from dogtail import config
        config.logDebugToFile = False
        config.logDebugToStdOut = False
        # dogtail's searches retry for searchCutoffCount * searchBackoffDuration
        config.searchCutoffCount = 50
        config.searchBackoffDuration = 0.2
        config.actionDelay = 0.1
        config.defaultDelay = 0.1
        from dogtail import tree
        yield tree
    finally:
        if "dogtail.tree" in sys.modules:
            # This process stays connected to the session bus (GLib's, for
            # GSettings) and the accessibility bus: GLib raises SIGTERM when
            # its session bus goes away, unless told not to.
            from gi.repository import Atspi, Gio
            Atspi.exit()
            Gio.bus_get_sync(Gio.BusType.SESSION).set_exit_on_close(False)
        for p in reversed(procs):
            killpg(p)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def gone(node):
    """Whether a window is hidden or destroyed."""
    try:
        return not node.showing
    except Exception:       # destroyed: the accessible object is defunct
        return True


class VirtManager:
    """virt-manager showing one domain's details window, and the widgets of
    it the test uses, found by role and accessible name."""

    def __init__(self, tree, domain, artifacts):
        self.tree = tree
        self.domain = domain
        self.artifacts = artifacts
        self.log = os.path.join(artifacts, "virt-manager.log")
        self.proc = subprocess.Popen(
            ["virt-manager", "--no-fork", "--debug", "--connect", "qemu:///system",
             "--show-domain-editor", domain],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.app = wait_for("virt-manager on the accessibility bus", self._find_app)
        self.window = self.app.child(roleName="frame", name="%s on QEMU/KVM" % domain)

    def _find_app(self):
        assert self.proc.poll() is None, "virt-manager exited (%d); see %s" % (
            self.proc.returncode, self.log)
        return self.tree.root.findChild(
            lambda n: n.name == "virt-manager" and n.roleName == "application",
            recursive=False, retry=False, requireResult=False)

    def close(self):
        killpg(self.proc)

    def screenshot(self, name):
        """The whole screen (there is no window manager: the dialogs lie on
        top of the details window), as a PNG in the artifacts."""
        path = os.path.join(self.artifacts, name + ".png")
        subprocess.run(["import", "-window", "root", path], check=True)
        return path

    def dump(self, name):
        """The screen and virt-manager's accessibility tree, into the
        artifacts (for a failure)."""
        try:
            self.screenshot(name)
            self.app.dump(fileName=os.path.join(self.artifacts, name + ".a11y.txt"))
        except Exception as e:      # keep the test's own error
            print("dumping virt-manager's state failed: %s" % e)

    # -- the Snapshots page -------------------------------------------------
    def open_snapshots(self):
        self.window.child(roleName="radio button", name="Snapshots").click()
        self.slist = self.window.child(roleName="table", name="snapshot-list")
        wait_for("the Snapshots page", lambda: self.slist.showing)

    def button(self, name):
        return self.window.child(roleName="button", name=name)

    def rows(self):
        """{snapshot name: the table's child for its row}.  GTK's tree view
        has a cell per row (a child of the table) holding the row's
        renderers' cells: the label's reads the name, then a line of its
        state."""
        out = {}
        for row in self.slist.findChildren(lambda n: n.roleName == "table cell",
                                           recursive=False):
            for cell in [row] + row.findChildren(lambda n: n.roleName == "table cell"):
                if cell.name:
                    out[cell.name.split("\n")[0].strip()] = row
        return out

    def shown(self):
        """The snapshot names the Snapshots page lists."""
        return sorted(self.rows())

    def select(self, snap):
        """Select @snap's row, and only it (the list allows several, and
        Delete deletes every selected snapshot)."""
        rows = self.rows()
        assert snap in rows, "%s is not in virt-manager's list %s" % (snap, sorted(rows))
        sel = self.slist.querySelection()
        sel.clearSelection()
        sel.selectChild(rows[snap].getIndexInParent())
        wait_for("%s alone selected" % snap, lambda: self.selected() == [snap])

    def selected(self):
        """The names of the rows selected."""
        rows = self.rows()
        sel = self.slist.querySelection()
        return sorted(n for n, row in rows.items()
                      if sel.isChildSelected(row.getIndexInParent()))

    def dialog(self):
        """virt-manager's message dialog (accessible name 'vmm dialog'), once
        it is showing."""
        return wait_for("virt-manager's dialog", lambda: self.app.findChild(
            lambda n: n.name == "vmm dialog" and n.showing, recursive=False,
            retry=False, requireResult=False))

    def dialog_text(self, dlg):
        return "\n".join(n.name for n in dlg.findChildren(lambda n: n.roleName == "label")
                         if n.name)

    def press(self, dlg, name):
        dlg.child(roleName="button", name=name).click()
        wait_for("the dialog to close", lambda: gone(dlg))

    def dialog_open(self):
        return self.app.findChild(lambda n: n.name == "vmm dialog" and n.showing,
                                  recursive=False, retry=False, requireResult=False)

    # -- the Create snapshot dialog ------------------------------------------
    def create_snapshot(self, snap):
        """Take snapshot @snap with the dialog's defaults; return what the
        dialog offered: the mode selected and the memory file's path."""
        self.button("snapshot-add").click()
        dlg = wait_for("the Create snapshot dialog", lambda: self.app.findChild(
            lambda n: n.roleName == "frame" and n.name == "Create snapshot" and n.showing,
            recursive=False, retry=False, requireResult=False))
        # the name entry is what the "Name:" label labels (the dialog has
        # other text fields: the description, the memory file's combo box)
        entry = dlg.child(roleName="label", name="Name:").labelee
        assert entry.roleName == "text", entry
        entry.text = snap
        external = dlg.child(roleName="radio button", name="external")
        internal = dlg.child(roleName="radio button", name="internal")
        offered = {"external": external.checked, "internal": internal.checked,
                   "memory": None}
        if external.checked:
            # the memory file: the combo box (shown for a running domain)
            # follows the name as it changes
            combo = dlg.child(roleName="combo box")
            offered["memory"] = wait_for(
                "the memory file to follow the name %s" % snap,
                lambda: combo.name if combo.showing and combo.name.endswith("-mem." + snap)
                else None)
        dlg.child(roleName="button", name="Finish").click()
        wait_for("the Create snapshot dialog to close", lambda: gone(dlg))
        return offered


@pytest.fixture
def artifacts(request):
    d = os.path.join(ARTIFACTS, request.node.name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def snapshot_memory(td, snap):
    """The memory file of @snap's XML, or None."""
    x = etree.fromstring(td.dom.snapshotLookupByName(snap).getXMLDesc(0))
    mem = x.find("memory[@snapshot='external']")
    return mem.get("file") if mem is not None else None


def test_delete_button(make_domain, desktop, artifacts):
    td, o = make_domain(disks=("vda",), running=True)
    vm = VirtManager(desktop, td.name, artifacts)
    try:
        vm.open_snapshots()
        assert vm.shown() == []

        # Snapshots as the dialog takes them, with the guest's disk
        # written before each one (and overwritten after)
        for i, snap in enumerate(["s1", "s2", "s3"]):
            o.write("vda", i)
            o.write("vda", 8)
            offered = vm.create_snapshot(snap)
            wait_for("%s in libvirt" % snap, lambda: snap in td.snapshot_names())
            # virt-manager 5.0 on a running domain: external, with the
            # memory state in a file beside the disk
            mem = os.path.join(td.dir, "%s-mem.%s" % (td.name, snap))
            assert offered == {"external": True, "internal": False, "memory": mem}, offered
            assert snapshot_memory(td, snap) == mem
            o.taken(snap, memory=mem)
            wait_for("%s in virt-manager's list" % snap, lambda: snap in vm.shown())
        o.write("vda", 3)
        o.write("vda", 0)
        o.check()
        assert vm.shown() == td.snapshot_names() == ["s1", "s2", "s3"]

        # Delete s2 (the middle of the chain) with the button
        vm.select("s2")
        vm.screenshot("1-before-delete")
        vm.button("snapshot-delete").click()
        dlg = vm.dialog()
        assert "permanently delete the selected snapshots" in vm.dialog_text(dlg)
        vm.press(dlg, "Yes")
        wait_for("s2 gone from libvirt", lambda: "s2" not in td.snapshot_names())
        o.deleted("s2")
        wait_for("virt-manager's list to follow libvirt's",
                 lambda: vm.shown() == td.snapshot_names())
        assert not vm.dialog_open(), "virt-manager showed a dialog: %s" % (
            vm.dialog_text(vm.dialog_open()))
        vm.screenshot("2-after-delete")
        assert vm.shown() == td.snapshot_names() == ["s1", "s3"]
        o.check()

        # A delete libvirt refuses: the user merged vda's active layer (the
        # overlay s3 created) into its backing file with a block commit,
        # behind libvirt's snapshot code (as test_delete_engine.py's
        # test_delete_chain_changed_behind_back).  s3 now saves what the
        # disk holds: the model follows the user's doing.
        virsh("blockcommit", td.name, "vda", "--active", "--shallow", "--pivot")
        o.snaps["s3"]["disks"]["vda"] = list(o.live["vda"])
        o.check()
        vm.select("s3")
        vm.button("snapshot-delete").click()
        vm.press(vm.dialog(), "Yes")
        dlg = vm.dialog()
        text = vm.dialog_text(dlg)
        vm.screenshot("3-refused-delete")
        # The same request through the API: refused with the message the
        # dialog must show
        err = error_of(td.delete, "s3")
        msg = err.get_error_message()
        # (the dialog wraps its label's text, also inside a path at a '-':
        # compare without any white space)
        assert "".join(("Error deleting snapshot 's3': " + msg).split()) in "".join(
            text.split()), (
            "virt-manager's error dialog:\n%s\ndoes not show libvirt's error:\n%s" % (text, msg))
        vm.press(dlg, "Close")
        vm.button("snapshot-refresh").click()
        wait_for("virt-manager's list to follow libvirt's",
                 lambda: vm.shown() == td.snapshot_names() == ["s1", "s3"])
        o.check()
    except BaseException:
        # what virt-manager showed when the test failed
        vm.dump("failed")
        raise
    finally:
        vm.close()
