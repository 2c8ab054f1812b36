"""Seeded random walks over snapshot operations (issue 11).

Each walk is one domain whose disks vda and vdb are each their own qcow2
overlay (own-vda.qcow2, own-vdb.qcow2) on a shared template (tmpl.qcow2,
outside the domain's directory, data in a few slots), and a second domain
whose vda is another overlay on the same template, with data of its own.  A
random.Random(seed) picks, from what the Oracle's model says is valid, a
sequence of steps:

  snap NAME [memory | vda | vdb]   external snapshot of both disks (disk-only),
                                   with memory state (running only), or of
                                   one disk only (the other snapshot='no')
  write DISK SLOT 0xPP             one slot of a disk filled with a pattern
  revert NAME                      to a snapshot that saved every disk (one
                                   with memory only while running: it starts
                                   the domain); running stays running
  delete NAME [--children | --children-only] [--metadata]
  start                            start the shut-off domain
  destroy                          stop the running domain (TestDomain.stop)
  finish                           no snapshot is left: each disk is its own
                                   file on the template again and nothing
                                   else is in the domain's directory (not
                                   checked once a --metadata delete was done:
                                   its images are the user's then)

A walk starts shut off with no snapshot, takes SNAPDEL_WALK_STEPS_N (40)
random steps, then deletes the remaining snapshots in random order and ends
with 'finish'.  After every step Oracle.check() proves every live disk,
every snapshot's saved state, the tree, that nothing leaked, qemu-img check,
and that the template and the other domain's own file never change (check 6);
the other domain's oracle runs at the end.

Random walks do not pick --metadata.  It hands the snapshots' images to the
user, and from then on libvirt rightly leaves them alone: a revert does not
unlink a user's active layer, and a delete whose chain holds one is refused as
a chain changed outside of libvirt (the first soak met both).  Modelling that
needs a model of who owns each image, which the Oracle does not have.  A
replayed list may still use it: the step then also removes what nothing
references any more, as a user would (what Oracle.check() would call leaked),
'finish' no longer expects the own files alone, and the refusals REFUSALS
allows after a --metadata delete pass.

A delete the daemon refuses passes only if the refusal is in REFUSALS (a
refusal the product documents, whose cause the walk can produce: only after
a --metadata delete, so in a random walk every refusal fails it) and changed
nothing (files, tree, snapshot XML, state, block jobs); the model stays as it
was.  Any other libvirt error or oracle failure fails the walk with the seed
and the steps so far, which replay:

  SNAPDEL_WALK_STEPS='snap f1; write vda 3 0x2a; revert f1' \\
      make e2e E2E=tests/e2e/test_random_walk.py PYTEST_ARGS='-k replay'

and, with SNAPDEL_WALK_REDUCE=1 as well, are reduced (steps removed while the
walk still fails the same way: the same kind of step, the same error with
names, paths and numbers blanked; steps a removal made invalid are skipped)
to a short sequence for a plain test.  'make soak' runs many seeds:
SNAPDEL_WALK_SEEDS='100-129' (or '1,5,7-9') replaces the default seeds.
"""

import os
import random
import re
import shutil
import time

import libvirt
import pytest

import harness
from harness import (DELETE_CHILDREN, DELETE_CHILDREN_ONLY, DELETE_METADATA,
                     SLOTS, Oracle, create_image, image_chain, run)
from test_delete_engine import world
from test_delete_template import TEMPLATE_SLOTS, make_template

pytestmark = pytest.mark.series

DISKS = ("vda", "vdb")
DEFAULT_SEEDS = [1, 2, 3]
STEPS_N = int(os.environ.get("SNAPDEL_WALK_STEPS_N", "40"))
MAX_SNAPS = 8
TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

FLAG_NAMES = [("--children", DELETE_CHILDREN),
              ("--children-only", DELETE_CHILDREN_ONLY),
              ("--metadata", DELETE_METADATA)]

# Refusals a walk may meet: (pattern of the error, "always" or "metadata"
# (only after a --metadata delete in the walk), where it is documented).
# The product documents others, whose causes a walk never produces (a chain
# changed outside libvirt, a detached disk, another block job, images not on
# local storage, --children with --children-only): met in a walk, they fail it.
REFUSALS = [
    (r"cannot delete snapshot '[^']+': disk '[^']+' \(.*\): nothing would use "
     r"image '.*' after the delete, but no snapshot of the domain is known to "
     r"have created it", "metadata",
     "the error itself (delete only the metadata and remove the image), "
     "patch 'Merge and remove only images the snapshots own': images a "
     "--metadata delete handed to the user"),
    (r"cannot delete snapshot '[^']+': disk '[^']+' \(.*\): .*(the chain was changed|"
     r"its overlay was merged) outside of libvirt", "metadata",
     "kbase/snapshots.rst, virsh.rst: a chain changed outside of snapshot "
     "handling; after --metadata the user's images sit in it"),
]


class InvalidStep(Exception):
    """A step the model says cannot be taken now (a replayed list that names
    a snapshot that does not exist, starts a running domain, ...)."""


class WalkFailure(AssertionError):
    pass


def parse_seeds(spec):
    """'100-129', '1,5,7-9' -> [100, ..., 129], [1, 5, 7, 8, 9]."""
    out = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def parse_steps(text):
    return [s.strip() for s in re.split(r"[;\n]", text) if s.strip()]


def notation(steps):
    return "; ".join(steps)


def signature(step, exc):
    """How a walk failed, for 'fails the same way': the kind of step (verb
    and flags) and the error's first line with snapshot names, paths and
    numbers blanked."""
    words = step.split()
    kind = " ".join([words[0]] + [w for w in words[1:] if w.startswith("--")])
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    msg = re.sub(r"/[^\s'\",)]+", "PATH", msg)
    msg = re.sub(r"\bf\d+\b", "SNAP", msg)
    msg = re.sub(r"\d+", "N", msg)
    return (kind, type(exc).__name__, msg[:160])


def cleanup_domain(conn, name, directory):
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        dom = None
    if dom is not None:
        stale = harness.TestDomain.__new__(harness.TestDomain)
        stale.dom, stale.dir = dom, directory
        stale.cleanup()
    shutil.rmtree(directory, ignore_errors=True)


def connect():
    """A connection to the private daemon; started again if it died (a
    crash in one walk must not fail the walks after it)."""
    try:
        return libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        run(os.path.join(TOP, "scripts", "daemon.sh"), "start")
        return libvirt.open("qemu:///system")


class Walk:
    """One walk's world (the template, domain a with its oracle, domain b
    with its oracle) and the steps taken on it."""

    def __init__(self, conn, root, name):
        self.conn, self.root, self.name = conn, root, name
        self.steps = []
        self.refusals = []
        self.metadata = False
        self.next_id = 1
        self.doms = []
        cleanup_domain(conn, name, os.path.join(root, "img"))
        cleanup_domain(conn, name + "-b", os.path.join(root, "img-b"))
        shutil.rmtree(root, ignore_errors=True)
        shared = os.path.join(root, "shared")
        os.makedirs(shared)
        self.tmpl = make_template(os.path.join(shared, "tmpl.qcow2"))
        ref = os.path.join(root, "ref")

        bdir = os.path.join(root, "img-b")
        os.makedirs(bdir)
        self.tb = harness.TestDomain(conn, name + "-b", bdir, ("vda",),
                             {"vda": create_image(os.path.join(bdir, "own-vda.qcow2"),
                                                  backing=self.tmpl)})
        self.doms.append(self.tb)
        self.ob = Oracle(self.tb, ref, {"vda": TEMPLATE_SLOTS})
        self.ob.write("vda", 2)     # over a template slot
        self.ob.write("vda", 3)
        self.ob.check()

        adir = os.path.join(root, "img")
        os.makedirs(adir)
        images = {d: create_image(os.path.join(adir, "own-%s.qcow2" % d), backing=self.tmpl)
                  for d in DISKS}
        self.td = harness.TestDomain(conn, name, adir, DISKS, images)
        self.doms.append(self.td)
        self.o = Oracle(self.td, ref, {d: list(TEMPLATE_SLOTS) for d in DISKS})
        self.o.guard(self.tb.top("vda"))
        assert self.tmpl in self.o.guarded
        self.o.check()

    def close(self):
        for td in self.doms:
            td.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the model's view -----------------------------------------------------
    def full(self, name):
        return all(d in self.o.snaps[name]["disks"] for d in DISKS)

    def revertable(self):
        running = self.td.running()
        return [n for n in sorted(self.o.snaps)
                if self.full(n) and (running or not self.o.snaps[n]["memory"])]

    # -- choosing ---------------------------------------------------------------
    def choose(self, rng):
        """A random step that is valid now."""
        o, running = self.o, self.td.running()
        snaps = sorted(o.snaps)
        revertable = self.revertable()
        options = [("write", 30), ("destroy" if running else "start", 8)]
        if len(snaps) < MAX_SNAPS:
            options.append(("snap", 20))
        if snaps:
            options.append(("delete", 12 + 3 * len(snaps)))
        if revertable:
            options.append(("revert", 12))
        total = sum(w for _, w in options)
        pick = rng.uniform(0, total)
        for kind, w in options:
            pick -= w
            if pick <= 0:
                break
        if kind == "write":
            return "write %s %d 0x%02x" % (rng.choice(DISKS), rng.randrange(SLOTS),
                                           o.pattern % 255 + 1)
        if kind == "snap":
            name = "f%d" % self.next_id
            r = rng.random()
            if running and r < 0.3:
                return "snap %s memory" % name
            if r > 0.85:
                return "snap %s %s" % (name, rng.choice(DISKS))
            return "snap " + name
        if kind == "delete":
            victim = rng.choice(snaps)
            r = rng.random()
            if r < 0.6:
                return "delete " + victim
            if r < 0.8:
                return "delete %s --children" % victim
            return "delete %s --children-only" % victim
        if kind == "revert":
            return "revert " + rng.choice(revertable)
        return kind

    # -- doing --------------------------------------------------------------------
    def execute(self, step):
        """Take one step (InvalidStep if the model says it cannot be taken),
        then prove everything with the oracle."""
        o, td = self.o, self.td
        words = step.split()
        verb, args = words[0], words[1:]
        running = td.running()
        if verb == "snap":
            if len(args) not in (1, 2) or args[0] in o.snaps:
                raise InvalidStep(step)
            name, kind = args[0], (args[1] if len(args) > 1 else None)
            memory, disks = None, None
            if kind == "memory":
                if not running:
                    raise InvalidStep("%s: memory state needs a running domain" % step)
                memory = os.path.join(td.dir, "%s.mem" % name)
            elif kind in DISKS:
                disks = {d: ("external" if d == kind else "no") for d in DISKS}
            elif kind is not None:
                raise InvalidStep(step)
            o.snapshot(name, disks, memory)
            m = re.match(r"f(\d+)$", name)
            if m:
                self.next_id = max(self.next_id, int(m.group(1)) + 1)
        elif verb == "write":
            if len(args) != 3 or args[0] not in DISKS:
                raise InvalidStep(step)
            slot, pattern = int(args[1]), int(args[2], 0)
            if not (0 <= slot < SLOTS and 1 <= pattern <= 255):
                raise InvalidStep(step)
            o.pattern = pattern - 1
            o.write(args[0], slot)
        elif verb == "revert":
            if len(args) != 1 or args[0] not in o.snaps:
                raise InvalidStep(step)
            if not self.full(args[0]):
                raise InvalidStep("%s: it did not save every disk" % step)
            if o.snaps[args[0]]["memory"] and not running:
                raise InvalidStep("%s: it has memory state, which starts the domain" % step)
            o.revert(args[0])
        elif verb == "delete":
            if not args or args[0] not in o.snaps:
                raise InvalidStep(step)
            flags = 0
            for opt in args[1:]:
                found = [f for n, f in FLAG_NAMES if n == opt]
                if not found:
                    raise InvalidStep(step)
                flags |= found[0]
            self.delete(step, args[0], flags)
        elif verb == "start":
            if running or args:
                raise InvalidStep(step)
            td.start()
        elif verb == "destroy":
            if not running or args:
                raise InvalidStep(step)
            td.stop()
        elif verb == "finish":
            if o.snaps or args:
                raise InvalidStep("%s: snapshots are left" % step)
            self.finish()
        else:
            raise InvalidStep(step)
        o.check()

    def delete(self, step, name, flags):
        o, td = self.o, self.td
        before = world(td)
        try:
            td.delete(name, flags)
        except libvirt.libvirtError as e:
            after = world(td)
            for k in before:
                assert after[k] == before[k], "refused delete changed %s:\n%s\n->\n%s\n(%s)" % (
                    k, before[k], after[k], e)
            msg = str(e)
            allowed = [why for pat, when, why in REFUSALS
                       if re.search(pat, msg) and (when == "always" or self.metadata)]
            if not allowed:
                raise
            self.refusals.append("%s: %s" % (step, msg))
            return
        assert td.running() == before["running"], "%s changed the domain's state" % step
        o.deleted(name, flags)
        if flags & DELETE_METADATA:
            self.metadata = True
            for f in self.unreferenced():
                os.unlink(f)

    def unreferenced(self):
        """The files of the domain's directory Oracle.check() would call
        leaked (the same rule)."""
        o, td = self.o, self.td
        referenced = set()
        for top in td.tops().values():
            referenced.update(image_chain(top))
        for name in o.snaps:
            sources, overlays, mem = o.snapshot_sources(name)
            for f in list(sources.values()) + overlays:
                if os.path.exists(f):
                    referenced.update(image_chain(f))
            if mem:
                referenced.add(mem)
        present = {os.path.join(td.dir, f) for f in os.listdir(td.dir)}
        return sorted(present - referenced)

    def finish(self):
        if self.metadata:
            return
        td, o = self.td, self.o
        for d in DISKS:
            own = o.own[d][0]
            assert td.top(d) == own, "no snapshot left, but %s runs on %s, not its own file %s" % (
                d, td.top(d), own)
            assert image_chain(own) == [own, self.tmpl], (
                "%s's own file %s has the chain %s" % (d, own, image_chain(own)))
        want = sorted("own-%s.qcow2" % d for d in DISKS)
        assert sorted(os.listdir(td.dir)) == want, (
            "no snapshot left, but the domain's directory holds %s" % sorted(os.listdir(td.dir)))

    def step(self, step):
        self.steps.append(step)
        self.execute(step)

    # -- whole walks ------------------------------------------------------------------
    def random(self, rng, n):
        for _ in range(n):
            self.step(self.choose(rng))
        # the rest of the tree goes; a refused delete goes with --metadata
        while self.o.snaps:
            victim = rng.choice(sorted(self.o.snaps))
            refused = len(self.refusals)
            self.step("delete " + victim)
            if len(self.refusals) > refused:
                self.step("delete %s --metadata" % victim)
        self.step("finish")
        self.ob.check()

    def replay(self, steps, skip_invalid=False):
        for s in steps:
            if skip_invalid:
                try:
                    self.steps.append(s)
                    self.execute(s)
                except InvalidStep:
                    self.steps.pop()
            else:
                self.step(s)
        self.ob.check()


def failure(what, walk, exc, quiet=False):
    steps = walk.steps
    msg = ("%s failed at step %d: %s\n  %s: %s\nsteps: %s\nreplay: "
           "SNAPDEL_WALK_STEPS='%s' make e2e E2E=tests/e2e/test_random_walk.py "
           "PYTEST_ARGS='-k replay'" % (
               what, len(steps), steps[-1] if steps else "(setup)",
               type(exc).__name__, str(exc).strip(), notation(steps), notation(steps)))
    if walk.refusals:
        msg += "\nrefused (as documented): " + " | ".join(walk.refusals)
    if not quiet:
        print(msg)
    err = WalkFailure(msg)
    err.steps = list(steps)
    return err


def run_walk(conn, base, name, what, body, quiet=False):
    """Build a world in @base/@name, run @body(walk) on it; a failure names
    the steps."""
    walk = None
    try:
        walk = Walk(conn, os.path.join(base, name), "e2e-" + name)
        body(walk)
    except Exception as e:
        if walk is None:
            raise
        raise failure(what, walk, e, quiet) from e
    finally:
        if walk is not None:
            try:
                walk.close()
            except libvirt.libvirtError:
                pass
    return walk


SEEDS = (parse_seeds(os.environ["SNAPDEL_WALK_SEEDS"])
         if os.environ.get("SNAPDEL_WALK_SEEDS") else DEFAULT_SEEDS)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_walk(workdir, seed):
    conn = connect()
    t0 = time.time()
    try:
        walk = run_walk(conn, workdir, "walk-%d" % seed, "seed %d (%d steps)" % (seed, STEPS_N),
                        lambda w: w.random(random.Random(seed), STEPS_N))
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass
    print("seed %d: %d steps in %.0f s%s\n  %s" % (
        seed, len(walk.steps), time.time() - t0,
        "; refused: " + " | ".join(walk.refusals) if walk.refusals else "",
        notation(walk.steps)))


def replay_steps(base, steps, name="walk-replay", skip_invalid=False, quiet=False):
    """Replay @steps on a fresh world in @base; returns the Walk or raises
    WalkFailure (what a plain test reduced from a seed calls)."""
    conn = connect()
    try:
        return run_walk(conn, base, name, "replay",
                        lambda w: w.replay(steps, skip_invalid), quiet)
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass


def reduce_steps(base, name, steps, budget):
    """Remove chunks of steps (then 'memory' from snapshots) while the
    replay still fails the same way; steps a removal made invalid are
    skipped.  Returns (signature or None, steps, replays)."""
    n = 0
    t0 = time.time()

    def attempt(cand):
        nonlocal n
        n += 1
        try:
            walk = replay_steps(base, cand, name, skip_invalid=True, quiet=True)
            got, done = None, walk.steps
        except WalkFailure as e:
            got, done = signature(e.steps[-1], e.__cause__), e.steps
        print("reduce %d (%.0f s): %d -> %d steps: %s" % (
            n, time.time() - t0, len(cand), len(done), "same" if got == sig else got))
        return got, done

    sig = None
    sig, done = attempt(steps)
    if sig is None:
        return None, steps, n
    steps = done
    chunk = max(1, len(steps) // 2)
    while chunk >= 1 and n < budget:
        i, changed = 0, False
        while i < len(steps) - 1 and n < budget:   # the failing step stays
            cand = steps[:i] + steps[i + chunk:]
            if cand[-1:] != steps[-1:]:
                cand = cand + steps[-1:]
            got, done = attempt(cand)
            if got == sig and len(done) < len(steps):
                steps, changed = done, True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    for i, step in enumerate(steps):
        if step.endswith(" memory") and n < budget:
            cand = steps[:i] + [step[:-len(" memory")]] + steps[i + 1:]
            got, done = attempt(cand)
            if got == sig and len(done) <= len(steps):
                steps = done
    return sig, steps, n


@pytest.mark.skipif(not os.environ.get("SNAPDEL_WALK_STEPS"),
                    reason="set SNAPDEL_WALK_STEPS='snap f1; ...' to replay a walk")
def test_replay(workdir):
    """Replay SNAPDEL_WALK_STEPS; with SNAPDEL_WALK_REDUCE=1 reduce them
    (at most SNAPDEL_WALK_REDUCE_MAX=150 replays).  SNAPDEL_WALK_TAG=x
    names the domains and directory after x, so that two replays can run
    at once."""
    steps = parse_steps(os.environ["SNAPDEL_WALK_STEPS"])
    tag = os.environ.get("SNAPDEL_WALK_TAG")
    base = os.path.join(os.path.dirname(workdir), "replay-" + tag) if tag else workdir
    name = "walk-" + (tag or "replay")
    try:
        if not os.environ.get("SNAPDEL_WALK_REDUCE"):
            walk = replay_steps(base, steps, name)
            print("replayed %d steps%s" % (len(walk.steps), "; refused: " + " | ".join(
                walk.refusals) if walk.refusals else ""))
            return
        budget = int(os.environ.get("SNAPDEL_WALK_REDUCE_MAX", "150"))
        sig, reduced, n = reduce_steps(base, name, steps, budget)
        if sig is None:
            print("the steps do not fail")
            return
        # once more, strict, for the error of the reduced sequence
        err = None
        try:
            replay_steps(base, reduced, name, quiet=True)
        except WalkFailure as e:
            err = e
    finally:
        if tag:
            shutil.rmtree(base, ignore_errors=True)
    if err is None:
        pytest.fail("reduced to %s, which then passed (flaky): %s" % (
            notation(reduced), sig), pytrace=False)
    pytest.fail("reduced in %d replays from %d to %d steps %s:\n%s" % (
        n, len(steps), len(reduced), sig, err), pytrace=False)
