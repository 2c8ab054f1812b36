"""End-to-end harness: real virtqemud, virtlogd, QEMU (TCG) and qcow2 images.

TestDomain drives a persistent domain of the private daemon: it writes into
its disks (through QEMU's monitor while running, with qemu-io while shut off)
and creates and deletes snapshots.  The Oracle keeps a model of what every
disk and every snapshot must hold, and check() proves the model against the
real images with qemu-img:

  1. every live disk reads back its last writes;
  2. every remaining snapshot's saved disk state (the disk sources in its
     <domain>) reads back exactly what the disk held when it was taken;
  3. snapshot parents and the current snapshot match the model;
     (Oracle.revert models virDomainRevertToSnapshot: the live disks go
     back to what the snapshot saved, and it becomes current)
  4. no image or memory file in the domain's directory is left that nothing
     references, and everything referenced exists;
  5. every qcow2 image passes 'qemu-img check', and holds exactly the
     internal snapshots the model puts in it (an internal snapshot's data,
     read out with 'qemu-img convert -l', is compared like any other);
  6. each disk's own file (its source when the Oracle was made) still
     exists and is the same file (same inode: never unlinked or replaced),
     and the images below it (its backing chain then, which no snapshot
     created: a template other domains may share) and every file guard()
     names keep the sha256 they had when recorded: a delete may merge data
     into a disk's own file, never into anything below it or anyone else's.
  7. DAC (QEMU as libvirt-qemu with dynamic ownership and remember_owner,
     scripts/daemon.sh): every image in a running domain's chain belongs to
     the QEMU user, so QEMU can open it for writing when a commit needs it;
     every other image of the domain, below it or guarded belongs to whom
     it belonged at rest (the owner DAC remembered) or to the QEMU user (DAC
     restores only a disk's top image when QEMU stops; backing images stay
     QEMU's), never to anyone else, and carries none of DAC's remembered-
     owner attributes, which would make a later start or stop restore the
     wrong owner; no image's mode changes.

Disk contents are modelled as SLOTS slots of SLOT bytes; each write fills one
slot with a single byte pattern, so an expected disk is a raw file that
'qemu-img compare' checks byte for byte.
"""

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import time

from xml.sax.saxutils import quoteattr

import libvirt
import libvirt_qemu
from lxml import etree

SLOT = 1024 * 1024
SLOTS = 16
DISK_SIZE = SLOT * SLOTS

DELETE_CHILDREN = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN
DELETE_CHILDREN_ONLY = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN_ONLY
DELETE_METADATA = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY


def run(*argv, check=True):
    """Run a command; on failure raise with its output, which pytest shows."""
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s" % (" ".join(argv),
                                                       p.returncode, p.stdout))
    return p


def virsh(*args, check=True):
    return run("virsh", *args, check=check)


def escape(value):
    """@value for an XML attribute written between single quotes."""
    return quoteattr(value)[1:-1].replace("'", "&apos;")


def image_format(path):
    """'qcow2' or 'raw', from the image's magic (a file or block device)."""
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


def source_path(source):
    """The file or block device a <source> element names."""
    return source.get("file") or source.get("dev")


def disk_alias(target):
    """libvirt's alias for a virtio disk: vda -> virtio-disk0."""
    return "virtio-disk%d" % (ord(target[-1]) - ord("a"))


def chain_info(path):
    """qemu-img info of each image of @path's backing chain, top first."""
    return json.loads(run("qemu-img", "info", "-U", "--backing-chain", "--output=json",
                          path).stdout)


# The passphrase of the LUKS-encrypted images a test made (one per test; set
# and cleared by the test): qemu-img reads them, and the images above them,
# only with it.
PASSPHRASE = None


def key_args(image):
    """The arguments that let qemu-img open @image when a layer of its chain
    is encrypted, and @image's part of them: (['--object', ...], opts); or
    None.  With them every image on the command line is an option string
    (--image-opts)."""
    if not PASSPHRASE:
        return None
    layers = [i for i, x in enumerate(chain_info(image)) if x.get("encrypted")]
    if not layers:
        return None
    args = ["--object", "secret,id=key,data=%s" % PASSPHRASE, "--image-opts"]
    opts = ["driver=qcow2", "file.filename=" + image.replace(",", ",,")]
    opts += ["backing." * i + "encrypt.key-secret=key" for i in layers]
    return args, ",".join(opts)


def image_chain(path, data_files=False):
    """The files of an image's backing chain, top first, as qemu-img sees it;
    with @data_files, each qcow2 image's external data file follows it."""
    files = []
    for i in chain_info(path):
        files.append(i["filename"])
        data = i.get("format-specific", {}).get("data", {}).get("data-file")
        if data_files and data:
            files.append(data if os.path.isabs(data) else
                         os.path.join(os.path.dirname(i["filename"]), data))
    return files


def stamp(path):
    """What changes whenever a file is written or replaced (None: missing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def sha256(path):
    """sha256 of a file's bytes (None: missing)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        return None
    return h.hexdigest()


# The QEMU user and DAC's extended attributes (src/security/security_util.c)
QEMU_USER = os.environ.get("SNAPDEL_QEMU_USER", "libvirt-qemu")
DAC_XATTRS = ("trusted.libvirt.security.dac", "trusted.libvirt.security.ref_dac")


def qemu_ids():
    """The user and group QEMU runs as: scripts/daemon.sh's qemu.conf names
    the group of the user's name, as Debian's build does (qemu_group), which
    is not the user's primary group where trixie's postinst made it (kvm)."""
    return (pwd.getpwnam(QEMU_USER).pw_uid, grp.getgrnam(QEMU_USER).gr_gid)


def dac_xattrs(path):
    """DAC's remembered-owner attributes on @path: name -> value."""
    out = {}
    for name in DAC_XATTRS:
        try:
            out[name] = os.getxattr(path, name).decode()
        except OSError:
            pass
    return out


def live_chains(conn):
    """Every file or block device in the chain of any running domain of
    @conn, as libvirt's live XML lists them (what DAC labelled)."""
    files = set()
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        x = etree.fromstring(dom.XMLDesc(0))
        for src in x.xpath("devices/disk//source"):
            path = src.get("file") or src.get("dev")
            if path:
                files.add(path)
    return files


def create_image(path, backing=None, size=DISK_SIZE):
    """A qcow2 image, optionally on a qcow2 backing file.  The backing chain
    is not opened (-u): creating a deep chain stays linear in its depth."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        argv += ["-u", "-F", "qcow2", "-b", backing]
    run(*argv, path, str(size))
    return path


class TestDomain:
    """A persistent domain with qcow2 disks in its own directory."""

    def __init__(self, conn, name, workdir, disks=("vda",), images=None, formats=None,
                 secrets=None, qmp=None):
        self.conn = conn
        self.name = name
        self.dir = workdir
        self.disks = list(disks)
        os.makedirs(self.dir, exist_ok=True)
        images = images or {}
        formats = formats or {}
        secrets = secrets or {}         # target -> uuid of its LUKS passphrase
        xml_disks = []
        for d in self.disks:
            path = images.get(d) or create_image(
                os.path.join(self.dir, "%s-%s.qcow2" % (name, d)))
            enc = ""
            if d in secrets:
                enc = ("<encryption format='luks'><secret type='passphrase' uuid='%s'/>"
                       "</encryption>" % secrets[d])
            xml_disks.append(
                "<disk type='file' device='disk'>"
                "<driver name='qemu' type='%s'/>"
                "<source file='%s'>%s</source><target dev='%s' bus='virtio'/>"
                "</disk>" % (formats.get(d, "qcow2"), escape(path), enc, d))
        # a second QMP monitor, for tests that act on QEMU while the daemon
        # is held (the domain is then tainted as custom-monitor)
        extra = ""
        if qmp:
            extra = ("<qemu:commandline><qemu:arg value='-qmp'/>"
                     "<qemu:arg value='unix:%s,server=on,wait=off'/></qemu:commandline>"
                     % escape(qmp.replace(",", ",,")))
        xml = ("<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
               "<name>%s</name>"
               "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
               "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
               "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>%s"
               "<memballoon model='none'/></devices>%s</domain>"
               % (name, "".join(xml_disks), extra))
        self.dom = conn.defineXML(xml)
        self.last_revert = 0

    # -- state -------------------------------------------------------------
    def running(self):
        return self.dom.isActive() == 1

    def start(self):
        self.dom.create()

    def stop(self):
        if self.running():
            self.dom.destroy()

    def xml(self):
        return etree.fromstring(self.dom.XMLDesc(0))

    def top(self, target):
        """The file (or block device) of the disk's active layer."""
        files = self.xml().xpath("devices/disk[target/@dev=$t]/source/@file | "
                                 "devices/disk[target/@dev=$t]/source/@dev", t=target)
        assert len(files) == 1, "disk %s of %s has %d sources" % (target, self.name, len(files))
        return files[0]

    def tops(self):
        return {d: self.top(d) for d in self.disks}

    # -- data --------------------------------------------------------------
    def write(self, target, slot, pattern):
        off, ln = slot * SLOT, SLOT
        if self.running():
            self.qemu_io(target, "write -P %d %d %d" % (pattern, off, ln))
        else:
            top = self.top(target)
            run("qemu-io", "-f", image_format(top), "-c",
                "write -P %d %d %d" % (pattern, off, ln), top)

    def qemu_io(self, target, command):
        """qemu-io @command on a running domain's disk, inside QEMU, then a
        flush."""
        dev = "/machine/peripheral/%s/virtio-backend" % disk_alias(target)
        for cmd in (command, "flush"):
            out = libvirt_qemu.qemuMonitorCommand(
                self.dom, 'qemu-io -d %s "%s"' % (dev, cmd),
                libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
            # qemu-io reports success on QEMU's stdout (the domain log);
            # anything the monitor answers is an error.
            if out.strip():
                raise AssertionError("qemu-io %s on %s: %s" % (cmd, target, out))

    def fill(self, target, pattern, size, chunk=64 * 1024 * 1024):
        """Write @pattern over the first @size bytes of a running domain's
        disk (far more than the SLOTS the oracle models: for tests that
        need a merge to take a while)."""
        for off in range(0, size, chunk):
            self.qemu_io(target, "write -P %d %d %d" % (pattern, off, min(chunk, size - off)))

    # -- snapshots ---------------------------------------------------------
    def snapshot_xml(self, name, disks=None, memory=None):
        """External snapshot XML; @disks maps target -> 'external', 'no', or
        ('block', device) for an overlay the caller made on a block device
        (created with VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT)."""
        disks = disks or {d: "external" for d in self.disks}
        parts = []
        for d in self.disks:
            kind = disks.get(d, "no")
            if isinstance(kind, tuple):
                parts.append("<disk name='%s' snapshot='external' type='block'>"
                             "<driver type='qcow2'/><source dev='%s'/></disk>"
                             % (d, escape(kind[1])))
            elif kind == "external":
                parts.append("<disk name='%s' snapshot='external'>"
                             "<driver type='qcow2'/><source file='%s'/></disk>"
                             % (d, escape(os.path.join(self.dir, "%s-%s.%s" % (self.name, d, name)))))
            else:
                parts.append("<disk name='%s' snapshot='no'/>" % d)
        mem = ("<memory snapshot='external' file='%s'/>" % memory if memory
               else "<memory snapshot='no'/>")
        return ("<domainsnapshot><name>%s</name>%s<disks>%s</disks>"
                "</domainsnapshot>" % (name, mem, "".join(parts)))

    def snapshot(self, name, disks=None, memory=None):
        flags = 0 if memory else libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        if any(isinstance(k, tuple) for k in (disks or {}).values()):
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
        return self.dom.snapshotCreateXML(self.snapshot_xml(name, disks, memory), flags)

    def snapshot_internal(self, name):
        """An internal snapshot of every disk, as 'virsh snapshot-create-as'
        takes it by default: in each disk's active layer (with the memory
        state when running)."""
        return self.dom.snapshotCreateXML(
            "<domainsnapshot><name>%s</name></domainsnapshot>" % name, 0)

    def delete(self, name, flags=0):
        self.dom.snapshotLookupByName(name).delete(flags)

    def revert(self, name):
        """virDomainRevertToSnapshot to an external snapshot; the domain ends
        in the state it had (running or shut off).

        libvirt 11.3 reverts a disk-only external snapshot (state
        'disk-snapshot' when taken running, 'shutoff' when taken shut off)
        through qemuSnapshotRevertInactive: a running domain is stopped
        (its QEMU is killed), a new overlay is created with qemu-img on
        every disk's saved image, the overlay of the snapshot that was
        current is unlinked, and the domain is started again only with
        VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING (or _PAUSED); without a flag a
        running domain ends shut off.  So a running domain is reverted with
        REVERT_RUNNING, a shut-off one with no flag.

        libvirt names the new overlays after the revert's creation time in
        seconds (<image stem>.<seconds>), and refuses to create a file that
        exists: two reverts in one second onto images of the same stem
        collide.  Reverts are therefore at least a second boundary apart.

        Plain 11.3.0 crashes reverting a domain with no current snapshot
        (qemuSnapshotRevertExternalFinish); the series' first patch fixes
        it, and test_revert_after_delete.py reaches that state."""
        while int(time.time()) <= self.last_revert:
            time.sleep(0.05)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING if self.running() else 0
        try:
            self.dom.revertToSnapshot(self.dom.snapshotLookupByName(name), flags)
        finally:
            self.last_revert = int(time.time())

    def snapshot_names(self):
        return sorted(s.getName() for s in self.dom.listAllSnapshots())

    def cleanup(self):
        try:
            self.stop()
        except libvirt.libvirtError:
            pass
        try:
            for s in self.dom.listAllSnapshots():
                try:
                    s.delete(DELETE_METADATA)
                except libvirt.libvirtError:
                    pass
            self.dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        except libvirt.libvirtError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class Oracle:
    """The model of what every disk and snapshot must hold, and its proof."""

    def __init__(self, td, refdir, live=None):
        self.td = td
        self.refdir = refdir
        os.makedirs(refdir, exist_ok=True)
        # live[target] = list of SLOTS patterns (0 = never written)
        self.live = {d: list((live or {}).get(d, [0] * SLOTS)) for d in td.disks}
        # snaps[name] = {"parent": str|None, "disks": {target: slots},
        #                "memory": path|None}
        self.snaps = {}
        self.current = None
        self.pattern = 0
        self.checked = {}           # path -> ((size, mtime, inode) checked clean,
                                    #          its internal snapshots)
        self.chains = {}            # path -> [(file, stamp)] of its chain
        self.seen = {}              # path -> chain, within one check()
        # Each disk's own file, which no snapshot created and every delete
        # must keep (target -> (path, inode)), and the files nothing may
        # write: what lies below the own files, and whatever guard() adds.
        self.own = {}
        self.guarded = {}           # path -> sha256
        self.at_rest = {}           # path -> (uid, gid, mode) when unlabelled
        for d in td.disks:
            own = td.top(d)
            self.own[d] = (own, os.stat(own).st_ino)
            for f in image_chain(own)[1:]:
                self.guard(f)

    def guard(self, path):
        """From now on check() fails if @path is changed, replaced by other
        bytes or removed (another domain's image, a shared template)."""
        digest = sha256(path)
        assert digest, "cannot guard %s: it does not exist" % path
        self.guarded[path] = digest

    # -- actions that change the model and the domain together -------------
    def write(self, target, slot):
        self.pattern = self.pattern % 255 + 1
        self.td.write(target, slot, self.pattern)
        self.live[target][slot] = self.pattern
        return self.pattern

    def write_all(self, slot):
        for d in self.td.disks:
            self.write(d, slot)

    def snapshot(self, name, disks=None, memory=None):
        self.td.snapshot(name, disks, memory)
        self.taken(name, disks, memory)

    def taken(self, name, disks=None, memory=None):
        """Model an external snapshot @name that someone else took (a
        management application such as virt-manager), as snapshot() would
        have taken it: @disks and @memory as there."""
        disks = disks or {d: "external" for d in self.td.disks}
        self.snaps[name] = {
            "parent": self.current,
            "disks": {d: list(self.live[d]) for d, k in disks.items()
                      if k == "external" or isinstance(k, tuple)},
            "memory": memory,
            "internal": False,
        }
        self.current = name

    def snapshot_internal(self, name):
        """Internal snapshot of every disk: its data lives inside the
        disk's active layer."""
        self.td.snapshot_internal(name)
        self.snaps[name] = {
            "parent": self.current,
            "disks": {d: list(self.live[d]) for d in self.td.disks},
            "memory": None,
            "internal": True,
        }
        self.current = name

    def children(self, name):
        return [n for n, s in self.snaps.items() if s["parent"] == name]

    def descendants(self, name):
        out = []
        for c in self.children(name):
            out += [c] + self.descendants(c)
        return out

    def deleted(self, name, flags=0):
        """Apply the API's tree semantics of a successful delete to the model."""
        parent = self.snaps[name]["parent"]
        if flags & DELETE_CHILDREN_ONLY:
            gone, heir = self.descendants(name), name
        elif flags & DELETE_CHILDREN:
            gone, heir = [name] + self.descendants(name), parent
        else:
            gone, heir = [name], parent
            for c in self.children(name):
                self.snaps[c]["parent"] = parent
        if self.current in gone:
            self.current = heir
        for g in gone:
            del self.snaps[g]

    def delete(self, name, flags=0):
        self.td.delete(name, flags)
        self.deleted(name, flags)

    def revert(self, name):
        """Revert to snapshot @name (running stays running, shut off stays
        shut off): every live disk reads what @name saved, and @name is
        current.  What was written since the current snapshot is discarded
        with its overlay, which libvirt unlinks, unless a snapshot's saved
        <domain> names it (one that left the disk out, snapshot='no': a
        revert to it builds on that file, and check() counts it referenced);
        the new overlays (named by libvirt) back onto @name's saved images.
        check() finds files by reference, so the new names need no
        bookkeeping here."""
        saved = self.snaps[name]["disks"]
        missing = [d for d in self.td.disks if d not in saved]
        if missing:
            raise NotImplementedError("revert to %s, which did not save disks %s: "
                                      "the model does not know what they read"
                                      % (name, missing))
        running = self.td.running()
        before = self.td.tops()
        # files a snapshot's saved <domain> names: an active layer among
        # them is what a snapshot that left the disk out (snapshot='no')
        # recorded for it, which a revert to that snapshot builds on
        named = {f for n in self.snaps for f in self.snapshot_sources(n)[0].values()}
        self.td.revert(name)
        for d in self.td.disks:
            self.live[d] = list(saved[d])
        self.current = name
        assert self.td.running() == running, "revert to %s changed the domain's state" % name
        sources, _, _ = self.snapshot_sources(name)
        if self.snaps[name].get("internal"):
            # loaded into the image it lives in, which is the active layer
            for d, top in self.td.tops().items():
                assert top == sources[d], (
                    "revert to internal %s runs %s on %s, not on %s" % (name, d, top, sources[d]))
            return
        for d, top in self.td.tops().items():
            assert top != before[d], "revert to %s kept %s's overlay %s" % (name, d, top)
            chain = image_chain(top)
            assert chain[1:2] == [sources[d]], (
                "revert to %s: %s's new overlay %s backs onto %s, not onto the "
                "saved image %s" % (name, d, top, chain[1:2], sources[d]))
            if before[d] in named:
                assert os.path.exists(before[d]), (
                    "revert to %s removed %s's previous overlay %s, which a "
                    "snapshot's saved <domain> names" % (name, d, before[d]))
                continue
            assert not os.path.exists(before[d]), (
                "revert to %s left %s's previous overlay %s (the data written "
                "since the current snapshot is discarded)" % (name, d, before[d]))

    # -- proof --------------------------------------------------------------
    def check_current_overlay(self):
        """The overlays the current snapshot points at (<revertDisks> once it
        was reverted to while it had children, else <disks>) are the live
        disks' active layers: the next revert unlinks exactly these files to
        discard what was written since, so a delete that merged them away
        must have moved the pointer to the image that took their place.
        Not part of check(): a user may change the chain behind libvirt's
        back (test_delete_chain_changed_behind_back)."""
        if not self.current:
            return
        x = etree.fromstring(self.td.dom.snapshotLookupByName(self.current).getXMLDesc(0))
        disks = x.findall("revertDisks/disk") or x.findall("disks/disk")
        for disk in disks:
            d = disk.get("name")
            if disk.get("snapshot") != "external" or d not in self.td.disks:
                continue
            src = source_path(disk.find("source"))
            assert src == self.td.top(d), (
                "current snapshot %s points at overlay %s of %s, but the disk's "
                "active layer is %s" % (self.current, src, d, self.td.top(d)))

    def _reference(self, slots):
        path = os.path.join(self.refdir, "ref-" + "-".join("%02x" % p for p in slots) + ".raw")
        if not os.path.exists(path):
            with open(path + ".tmp", "wb") as f:
                f.truncate(DISK_SIZE)
                for i, p in enumerate(slots):
                    if p:
                        f.seek(i * SLOT)
                        f.write(bytes([p]) * SLOT)
            os.rename(path + ".tmp", path)
        return path

    def _compare_internal(self, what, image, name, slots):
        """An internal snapshot's data, as qemu-img reads it out of its
        image."""
        raw = os.path.join(self.refdir, "internal.raw")
        p = run("qemu-img", "convert", "-U", "-f", "qcow2", "-l", "snapshot.name=" + name,
                "-O", "raw", image, raw, check=False)
        assert p.returncode == 0, "%s: no internal snapshot %s in %s:\n%s" % (
            what, name, image, p.stdout)
        try:
            p = run("qemu-img", "compare", "-f", "raw", "-F", "raw", raw,
                    self._reference(slots), check=False)
        finally:
            os.unlink(raw)
        assert p.returncode == 0, "%s (%s in %s) does not hold what the model says:\n%s" % (
            what, name, image, p.stdout)

    def internal_snapshots(self, image):
        """Names of the internal snapshots inside @image."""
        spec = {"driver": "qcow2", "backing": None,
                "file": {"driver": "file", "filename": image}}
        out = run("qemu-img", "info", "-U", "--output=json", "json:" + json.dumps(spec)).stdout
        return sorted(s["name"] for s in json.loads(out).get("snapshots", []))

    def _compare(self, what, image, slots):
        keyed = key_args(image)
        if keyed:
            args, opts = keyed
            p = run("qemu-img", "compare", "-U", *args, opts,
                    "driver=raw,file.filename=" + self._reference(slots).replace(",", ",,"),
                    check=False)
        else:
            p = run("qemu-img", "compare", "-U", "-f", image_format(image), "-F", "raw",
                    image, self._reference(slots), check=False)
        assert p.returncode == 0, "%s (%s) does not hold what the model says:\n%s" % (
            what, image, p.stdout)

    def snapshot_sources(self, name):
        """target -> file of the disk in the snapshot's saved <domain>."""
        snap = self.td.dom.snapshotLookupByName(name)
        x = etree.fromstring(snap.getXMLDesc(0))
        out = {}
        for disk in x.findall("domain/devices/disk"):
            src = disk.find("source")
            if src is not None and source_path(src):
                out[disk.find("target").get("dev")] = source_path(src)
        # the overlays the snapshot created: when it was taken, and the one
        # of its last revert if it has children (<revertDisks>)
        overlays = [source_path(d.find("source"))
                    for d in x.findall("disks/disk[@snapshot='external']") +
                    x.findall("revertDisks/disk[@snapshot='external']")
                    if d.find("source") is not None]
        mem = x.find("memory[@snapshot='external']")
        return out, overlays, (mem.get("file") if mem is not None else None)

    def _chain(self, path):
        """image_chain(path) with data files, asked of qemu-img again only when a file of the
        chain was written or replaced since (a backing file is named in its
        overlay's header, so the chain cannot change otherwise).  File
        timestamps are coarse (a clock tick): a file written in the last
        second could be written again without its stamp changing, so a chain
        with such a file is not cached."""
        if path in self.seen:       # asked before in this check()
            return self.seen[path]
        hit = self.chains.get(path)
        if hit and all(stamp(f) == s for f, s in hit):
            return [f for f, _ in hit]
        files = image_chain(path, data_files=True)
        stamps = [(f, stamp(f)) for f in files]
        if all(s and time.time_ns() - s[1] > 10**9 for _, s in stamps):
            self.chains[path] = stamps
        else:
            self.chains.pop(path, None)
        self.seen[path] = files
        return files

    def check_untouchable(self):
        """6. the own files are there, and nothing guarded changed; the
        failure names every file that broke the rule."""
        bad = []
        for d, (own, ino) in sorted(self.own.items()):
            try:
                if os.stat(own).st_ino != ino:
                    bad.append("%s's own file %s was replaced by another file" % (d, own))
            except FileNotFoundError:
                bad.append("%s's own file %s was unlinked" % (d, own))
        for path, digest in sorted(self.guarded.items()):
            now = sha256(path)
            if now is None:
                bad.append("guarded image %s vanished" % path)
            elif now != digest:
                bad.append("guarded image %s was written (sha256 %s, was %s)" % (
                    path, now, digest))
        assert not bad, "; ".join(bad)

    def check_owners(self, files):
        """7. owners and modes under DAC; the failure names every file."""
        labelled = live_chains(self.td.conn)
        qemu = qemu_ids()
        bad = []
        for path in sorted(files):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            xattrs = dac_xattrs(path)
            rest = self.at_rest.get(path)
            if rest is None:
                # first seen: at rest it is what it is now, or while
                # labelled what DAC remembered ("+uid:+gid"), or, for an
                # image a snapshot created while running, the daemon's
                uid, gid = st.st_uid, st.st_gid
                if path in labelled:
                    uid, gid = 0, 0
                    if "trusted.libvirt.security.dac" in xattrs:
                        u, g = xattrs["trusted.libvirt.security.dac"].split(":")
                        uid, gid = int(u.lstrip("+")), int(g.lstrip("+"))
                rest = self.at_rest[path] = (uid, gid, st.st_mode)
            if st.st_mode != rest[2]:
                bad.append("%s: mode %o, was %o" % (path, st.st_mode, rest[2]))
            if path in labelled:
                if (st.st_uid, st.st_gid) != qemu:
                    bad.append("%s is in a running domain's chain but owned by %d:%d, "
                               "not by the QEMU user %d:%d" % (path, st.st_uid, st.st_gid,
                                                               *qemu))
                continue
            if (st.st_uid, st.st_gid) not in (rest[:2], qemu):
                bad.append("%s is in no running domain's chain but owned by %d:%d, "
                           "neither its owner at rest %d:%d nor the QEMU user" % (
                               path, st.st_uid, st.st_gid, *rest[:2]))
            if xattrs:
                bad.append("%s is in no running domain's chain but keeps DAC's %s" % (
                    path, xattrs))
        assert not bad, "; ".join(bad)

    def check(self):
        td = self.td
        self.seen = {}
        # 6. first: a written template breaks other domains, whatever this
        # one reads
        self.check_untouchable()
        # 3. the tree
        assert td.snapshot_names() == sorted(self.snaps), "snapshot list"
        for name, s in self.snaps.items():
            snap = td.dom.snapshotLookupByName(name)
            try:
                parent = snap.getParent().getName()
            except libvirt.libvirtError:
                parent = None
            assert parent == s["parent"], "parent of %s is %s, model says %s" % (
                name, parent, s["parent"])
        if self.current:
            assert td.dom.hasCurrentSnapshot() == 1, "no current snapshot"
            assert td.dom.snapshotCurrent().getName() == self.current
        else:
            assert td.dom.hasCurrentSnapshot() == 0, "a current snapshot exists"

        referenced = set()
        # 1. live disks
        for d, top in td.tops().items():
            self._compare("live disk %s" % d, top, self.live[d])
            referenced.update(self._chain(top))
        # 2. every snapshot's saved state (an internal one's inside its image)
        internal = {}
        for name, s in self.snaps.items():
            sources, overlays, mem = self.snapshot_sources(name)
            for d, slots in s["disks"].items():
                if s.get("internal"):
                    self._compare_internal("snapshot %s disk %s" % (name, d), sources[d],
                                           name, slots)
                    internal.setdefault(sources[d], []).append(name)
                    continue
                self._compare("snapshot %s disk %s" % (name, d), sources[d], slots)
            for f in list(sources.values()) + overlays:
                if os.path.exists(f):
                    referenced.update(self._chain(f))
            if s["memory"]:
                assert mem == s["memory"]
                assert os.path.exists(mem), "memory file of %s is gone" % name
                referenced.add(mem)
        # 4. no leaks, nothing missing
        present = {os.path.join(td.dir, f) for f in os.listdir(td.dir)}
        leaked = sorted(present - referenced)
        assert not leaked, "files nothing references: %s" % leaked
        missing = sorted(f for f in referenced if not os.path.exists(f))
        assert not missing, "referenced files missing: %s" % missing
        # 7. owners: of the domain's files, its own files' chains and the
        # guarded images
        owned = set(present) | set(self.guarded)
        for own, _ in self.own.values():
            owned.update(self._chain(own) if os.path.exists(own) else [])
        self.check_owners(owned)
        # 5. image consistency; internal snapshots only where the model has them
        for f in sorted(present):
            found = self._qemu_img_check(f)
            assert found == sorted(internal.get(f, [])), (
                "%s holds internal snapshots %s, the model %s" % (
                    f, found, sorted(internal.get(f, []))))

    def _qemu_img_check(self, path):
        """qemu-img check of one image alone (its backing chain is not opened:
        each layer is checked on its own); returns the names of the internal
        snapshots inside it.  An image checked before and not modified since
        is not checked again."""
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        if path in self.checked and self.checked[path][0] == stamp:
            return self.checked[path][1]
        with open(path, "rb") as f:
            if f.read(4) != b"QFI\xfb":
                return []
        spec = {"driver": "qcow2", "backing": None,
                "file": {"driver": "file", "filename": path}}
        args = []
        if PASSPHRASE and chain_info(path)[0].get("encrypted"):
            spec["encrypt"] = {"key-secret": "key"}
            args = ["--object", "secret,id=key,data=%s" % PASSPHRASE]
        p = run("qemu-img", "check", "-U", *args, "json:" + json.dumps(spec), check=False)
        assert p.returncode == 0, "qemu-img check %s:\n%s" % (path, p.stdout)
        found = self.internal_snapshots(path)
        self.checked[path] = (stamp, found)
        return found


def error_of(fn, *args):
    """Call fn and return the libvirtError it must raise."""
    try:
        fn(*args)
    except libvirt.libvirtError as e:
        return e
    raise AssertionError("%s%r succeeded, but must fail" % (fn.__name__, args))


def files_state(directory):
    """Sizes and mtimes of a directory's files, to prove nothing changed."""
    out = {}
    for f in sorted(os.listdir(directory)):
        st = os.stat(os.path.join(directory, f))
        out[f] = (st.st_size, st.st_mtime_ns)
    return out


def short_name(nodeid):
    """A domain name from a test id, short and safe."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", nodeid.split("::")[-1]).strip("-")
    return name[-40:]
