#!/usr/bin/python3
"""Driver of scripts/bench.sh: time virDomainSnapshotDelete of external
snapshots of a shut-off domain, against one daemon per process.

  bench.py chain DIR LAYERS         build a shared chain of LAYERS qcow2 images
  bench.py measure LABEL WORKDIR CHAINTOP REPS OUT
                                    time every scenario against the daemon the
                                    environment points at (scripts/env.sh)
  bench.py floor WORKDIR REPS OUT   time 'dd' of the same bytes, with fsync
  bench.py report OUT...            print the table

Every scenario is one disk with three external snapshots s1 -> s2 -> s3 and
DELTA bytes written into the disk before each snapshot and after the last,
so each snapshot's overlay holds DELTA bytes.  'middle' deletes s2 (its
overlay is merged into s1's), 'current' deletes s3 (merged into s2's, which
becomes the active layer).  Depth counts the images of the chain when the
delete runs: at depth 4 the snapshots are on one fresh image; at depth 200 on
the shared chain of 197 layers, which no delete writes to.

The clock runs only around the delete call.  Setup and the check that follows
(the disk still reads back every write, the snapshot is gone) are not timed.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

MiB = 1024 * 1024
DELTA = MiB
DISK_SIZE = 64 * MiB
SNAPS = ("s1", "s2", "s3")
LIMIT = 200
# Depth is the number of images in the disk's chain when the delete runs:
# SHALLOW is s1 -> s2 -> s3 on one image, LIMIT is libvirt's limit.
SHALLOW = len(SNAPS) + 1
SCENARIOS = [
    (SHALLOW, "middle", "s2"),
    (SHALLOW, "current", "s3"),
    (LIMIT, "middle", "s2"),
    (LIMIT, "current", "s3"),
]


def run(*argv):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), p.returncode, p.stdout.strip()))
    return p.stdout


def create_image(path, backing=None):
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        argv += ["-u", "-F", "qcow2", "-b", backing]
    run(*argv, path, str(DISK_SIZE))


def chain(directory, layers):
    """LAYERS images, each backed by the previous one; prints the top."""
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    prev = None
    for i in range(layers):
        path = os.path.join(directory, "layer%03d.qcow2" % i)
        create_image(path, prev)
        prev = path
    # some data in the chain, as a real one would have
    run("qemu-io", "-f", "qcow2", "-c", "write -P 7 %d %d" % (16 * MiB, DELTA), prev)
    print(prev)


def short(msg, n=110):
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[:n - 3] + "..."


# -- one daemon ------------------------------------------------------------

class Bench:
    def __init__(self, conn, workdir, chaintop):
        self.conn = conn
        self.workdir = workdir
        self.chaintop = chaintop

    def cleanup(self, name, directory):
        import libvirt
        try:
            dom = self.conn.lookupByName(name)
        except libvirt.libvirtError:
            dom = None
        if dom is not None:
            if dom.isActive():
                dom.destroy()
            for s in dom.listAllSnapshots():
                try:
                    s.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
                except libvirt.libvirtError:
                    pass
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        shutil.rmtree(directory, ignore_errors=True)

    def top(self, dom):
        from xml.etree import ElementTree
        x = ElementTree.fromstring(dom.XMLDesc(0))
        return x.find("devices/disk/source").get("file")

    def write(self, dom, slot):
        run("qemu-io", "-f", "qcow2", "-c",
            "write -P %d %d %d" % (slot + 1, slot * DELTA, DELTA), self.top(dom))

    def setup(self, name, directory, depth):
        """A shut-off domain whose disk holds s1 -> s2 -> s3 over a chain of
        depth - 3 layers (one fresh image at depth 4)."""
        import libvirt
        self.cleanup(name, directory)
        os.makedirs(directory)
        if depth == SHALLOW:
            base = os.path.join(directory, "base.qcow2")
            create_image(base)
        else:
            base = self.chaintop
        dom = self.conn.defineXML(
            "<domain type='qemu'><name>%s</name>"
            "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            "<source file='%s'/><target dev='vda' bus='virtio'/></disk>"
            "<memballoon model='none'/></devices></domain>" % (name, base))
        slots = []
        if depth == SHALLOW:
            self.write(dom, 0)
            slots.append(0)
        for i, s in enumerate(SNAPS):
            dom.snapshotCreateXML(
                "<domainsnapshot><name>%s</name><memory snapshot='no'/><disks>"
                "<disk name='vda' snapshot='external'><driver type='qcow2'/>"
                "<source file='%s'/></disk></disks></domainsnapshot>"
                % (s, os.path.join(directory, "vda.%s" % s)),
                libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY)
            self.write(dom, i + 1)
            slots.append(i + 1)
        got = len(json.loads(run("qemu-img", "info", "-U", "--backing-chain",
                                 "--output=json", self.top(dom))))
        assert got == depth, "the disk's chain has %d layers, not %d" % (got, depth)
        return dom, slots

    def verify(self, dom, victim, slots):
        """What a delete must not change, cheaply: the live disk reads back
        every write, the domain is still shut off, the snapshot is gone."""
        assert not dom.isActive(), "the domain is running after the delete"
        names = sorted(s.getName() for s in dom.listAllSnapshots())
        assert names == sorted(set(SNAPS) - {victim}), "snapshots left: %s" % names
        top = self.top(dom)
        argv = ["qemu-io", "-f", "qcow2", "-r"]
        for slot in slots:
            argv += ["-c", "read -P %d %d %d" % (slot + 1, slot * DELTA, DELTA)]
        out = run(*argv, top)
        assert "Pattern verification failed" not in out, \
            "%s does not read back every write after the delete: %s" % (top, short(out))

    def one(self, depth, kind, victim, rep):
        import libvirt
        name = "snapdel-bench-%d-%s" % (depth, kind)
        directory = os.path.join(self.workdir, "%d-%s" % (depth, kind))
        errors = (libvirt.libvirtError, RuntimeError, AssertionError)
        try:
            try:
                dom, slots = self.setup(name, directory, depth)
                snap = dom.snapshotLookupByName(victim)
            except errors as e:
                return {"error": "setup: " + str(e)}
            t0 = time.perf_counter()
            try:
                snap.delete(0)
            except libvirt.libvirtError as e:
                return {"error": str(e), "seconds": time.perf_counter() - t0}
            dt = time.perf_counter() - t0
            try:
                self.verify(dom, victim, slots)
            except errors as e:
                return {"error": "wrong result: " + str(e), "seconds": dt}
            return {"seconds": dt}
        finally:
            try:
                self.cleanup(name, directory)
            except errors as e:
                print("bench: cleaning up %s: %s" % (name, e), file=sys.stderr)


def measure(label, workdir, chaintop, reps, out):
    import libvirt
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    prefix = os.environ["SNAPDEL_PREFIX"]
    with open("/proc/self/maps") as f:
        if os.path.join(prefix, "lib", "libvirt.so") not in f.read():
            sys.exit("bench: python3-libvirt did not load %s/lib/libvirt.so" % prefix)
    b = Bench(connect(), os.path.join(workdir, label), chaintop)
    result = {"label": label, "prefix": prefix, "libversion": b.conn.getLibVersion(),
              "scenarios": {}, "reconnects": 0}
    # domains an interrupted bench left behind (their images are gone with
    # the bench's work directory)
    for dom in b.conn.listAllDomains():
        if dom.name().startswith("snapdel-bench-"):
            b.cleanup(dom.name(), os.path.join(b.workdir, "stale"))
    for depth, kind, victim in SCENARIOS:
        key = "%d/%s" % (depth, kind)
        runs = []
        for rep in range(reps):
            while True:
                r = b.one(depth, kind, victim, rep)
                if "error" not in r or alive(b.conn):
                    break
                # The daemon went away under us (the normal private daemon is
                # shared: 'make run', 'make e2e' restart it).  That run says
                # nothing about the delete: reconnect and run it again.
                result["reconnects"] += 1
                print("    %-8s lost the daemon (%s); reconnecting, repeating the run"
                      % (label, short(r["error"], 60)), file=sys.stderr)
                if result["reconnects"] > 10:
                    sys.exit("bench: lost the %s daemon %d times; is something restarting it?"
                             % (label, result["reconnects"]))
                b.conn = connect()
            runs.append(r)
            if "error" not in r:
                state = "%.3f s" % r["seconds"]
            else:
                state = "fails: " + short(r["error"], 70)
            print("    %-8s depth %3d, delete %-7s (%s) %d/%d: %s"
                  % (label, depth, kind, victim, rep + 1, reps, state), file=sys.stderr)
            if "error" in r:
                break           # a failure repeats; do not spend time on it
        result["scenarios"][key] = runs
    b.conn.close()
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


def connect(timeout=60):
    """The daemon the environment points at, waiting while it (re)starts."""
    import libvirt
    end = time.monotonic() + timeout
    while True:
        try:
            return libvirt.open("qemu:///system")
        except libvirt.libvirtError:
            if time.monotonic() > end:
                raise
            time.sleep(0.5)


def alive(conn):
    import libvirt
    try:
        return conn.isAlive() == 1 and conn.getLibVersion() > 0
    except libvirt.libvirtError:
        return False


def floor(workdir, reps, out):
    """dd of the delta's bytes from one file into another, with fsync: the
    least a merge of DELTA bytes costs, process start included."""
    os.makedirs(workdir, exist_ok=True)
    src = os.path.join(workdir, "delta.raw")
    dst = os.path.join(workdir, "target.raw")
    with open(src, "wb") as f:
        f.write(b"\x5a" * DELTA)
    runs = []
    for _ in range(reps):
        with open(dst, "wb") as f:
            f.truncate(DISK_SIZE)
        t0 = time.perf_counter()
        run("dd", "if=" + src, "of=" + dst, "bs=%d" % DELTA, "count=1",
            "conv=notrunc,fsync", "status=none")
        runs.append({"seconds": time.perf_counter() - t0})
    shutil.rmtree(workdir, ignore_errors=True)
    with open(out, "w") as f:
        json.dump({"label": "floor", "runs": runs}, f, indent=1)


# -- the table ---------------------------------------------------------------

def stats(runs):
    """(median, min, n) of the successful runs, or the error of a failure."""
    errs = [r["error"] for r in runs if "error" in r]
    if errs:
        return None, errs[0]
    t = [r["seconds"] for r in runs]
    return (statistics.median(t), min(t), len(t)), None


def cell(s):
    return "%.3f (%.3f)" % (s[0], s[1])


def report(files):
    res = {}
    for fn in files:
        with open(fn) as f:
            d = json.load(f)
        res[d["label"]] = d
    fl, _ = stats(res["floor"]["runs"])
    reps = len(res["floor"]["runs"])
    cols = [("base", "upstream 11.3.0"), ("patched", "patched")]
    name_of = dict(cols)
    print()
    print("External snapshot delete, shut-off domain, %d MiB delta; wall seconds of "
          "virDomainSnapshotDelete, median (min) of %d" % (DELTA // MiB, reps))
    print("depth = images in the disk's chain when the delete runs: %d = one image "
          "<- s1 <- s2 <- s3; %d = %d layers <- s1 <- s2 <- s3"
          % (SHALLOW, LIMIT, LIMIT - len(SNAPS)))
    print()
    hdr = ("%-22s %-20s %-20s %-16s %-9s %s"
           % ("chain depth, delete", cols[0][1], cols[1][1], "floor: dd+fsync",
              "ratio", "goal (patched)"))
    print(hdr)
    print("-" * len(hdr))
    notes = []
    for depth, kind, victim in SCENARIOS:
        key = "%d/%s" % (depth, kind)
        row = ["%d, %s (%s)" % (depth, kind, victim)]
        s = {}
        for label, _ in cols:
            st, err = stats(res[label]["scenarios"][key])
            s[label] = st
            if err is None:
                row.append(cell(st))
            else:
                runs = res[label]["scenarios"][key]
                after = (" after %.1f s" % runs[-1]["seconds"]) if "seconds" in runs[-1] else ""
                notes.append("%s, depth %d, %s: fails%s: %s" % (name_of[label], depth, kind, after, err))
                row.append("fails, see [%d]" % len(notes))
        row.append(cell(fl))
        if s["base"] and s["patched"]:
            row.append("%.2f" % (s["patched"][0] / s["base"][0]))
        else:
            row.append("-")
        if depth == SHALLOW:
            if s["patched"] and s["base"]:
                met = s["patched"][0] <= s["base"][0] / 10
                goal = "<= 1/10 upstream: %s" % ("met" if met else "not met")
            else:
                goal = "<= 1/10 upstream: n/a"
        else:
            if s["patched"]:
                goal = "<= 0.5 s: %s" % ("met" if s["patched"][0] <= 0.5 else "not met")
            else:
                goal = "<= 0.5 s: not met (fails)"
        row.append(goal)
        print("%-22s %-20s %-20s %-16s %-9s %s" % tuple(row))
    print()
    for i, n in enumerate(notes, 1):
        print("[%d] %s" % (i, short(n, 400)))
    if notes:
        print()
    for label, name in cols:
        print("%-16s %s (libvirt %d)" % (name + ":", res[label]["prefix"], res[label]["libversion"]))
        if res[label].get("reconnects"):
            print("%-16s its daemon was restarted %d time(s) by something else during the "
                  "run; the runs it cut were repeated" % ("", res[label]["reconnects"]))


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "chain" and len(argv) == 4:
        chain(argv[2], int(argv[3]))
    elif cmd == "measure" and len(argv) == 7:
        measure(argv[2], argv[3], argv[4], int(argv[5]), argv[6])
    elif cmd == "floor" and len(argv) == 5:
        floor(argv[2], int(argv[3]), argv[4])
    elif cmd == "report" and len(argv) > 2:
        report(argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except KeyboardInterrupt:
        sys.exit(130)
