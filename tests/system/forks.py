#!/usr/bin/env python3
"""forks.py: the fork-and-rollback suite (issue 11): random sequences of an
operator's mistakes and bad days against one or two standbys, with a checker
that no standby ever loses an acknowledged save of the history it follows.

An episode starts one standby (sometimes two) on fresh directories and a
primary directory P (the bundled example, `loomship primary --saves N`,
a small table: systest.SMALL), then takes 3 to 6 steps (more with --long)
drawn from the seed:

  run        run the current primary directory for a few saves (maybe in
             --sync 1), often with a kill -9 of the primary or of a
             standby at a random instant (a killed standby is restarted on
             its port at once);
  empty      rm -rf the primary directory, then run it (a new history);
  older      put back an older copy of the primary directory (a `cp -a`
             of the stopped directory, or a `loomship backup` pulled from
             a standby), then run it;
  copy-after cp -a the primary directory to a second one; run the first,
             then the copy: two primaries one after the other;
  copy-both  the same, both at once;
  promote    `loomship promote URL` of a standby, with or without --force;
             sometimes the operator then fails over (the promoted node
             stops and its directory becomes the primary's; a new empty
             standby takes its place);
  promote-empty  a new empty standby joins and is promoted, with or without
             --force (DESIGN section 3: refused as PROMOTE_EMPTY unless
             forced);
  kill-standby / restart-standby  kill -9 (or SIGTERM) a standby, restart it;
  offline    a standby is stopped while the primary runs, then restarted;
  backup     pull a backup from a standby into the pool of older copies.

The checker. Every standby's position is read all along (GET /v1/status,
`applied` and `received`, every 20 ms and after each step) and when it is
stopped (`loomship inspect DIR --json`). Per standby it keeps the history it
follows (the first non-empty `"history"` it showed) and every (history, seq)
-> checksum it showed; it fails when a position
  - moves backwards in seq (applied, received, and inspect, each on its own),
    or to a lower epoch;
  - names another history than the one the standby follows;
  - holds another checksum at a seq the standby held before.
A standby that held an acknowledged save (an ack-log line, DESIGN section
5) and then lost it fails one of these. Beyond that:
  - a primary exits 0 (every standby holds all it committed), 3 (fenced) or
    4 (stopped with a standby not holding everything: refused, diverged),
    or dies by our kill -9; anything else is a failure;
  - a solo run that exits 0 leaves every standby it shipped to at its
    final position (received seq and checksum);
  - two copies of one directory run at once cannot both exit 0;
  - in --sync 1, some standby holds the last acknowledged save (received
    seq past it, or at it with its checksum);
  - a killed primary's directory verifies and holds its last acknowledged
    save;
  - a promotion without --force of a standby that never applied anything
    is refused;
  - at the end, `loomship verify` passes on every directory (standbys,
    primary directories, copies and backups; a directory whose creation was
    killed before its first save may hold no image).
Refusals are the expected outcome, not failures: a standby answering 409
(another history, would go backwards, divergence), a primary showing it
`diverged` and exiting 4, or fenced and exiting 3.

On a build without history ids (`"history"` missing), every position counts
as one history, so the signal is "seq went backwards" and a checksum that
changed at a seq. Without `--ack-log` (older builds), the LOOMSHIP_ACK_LOG
hook is used; without `promote --force`, a forced promotion is a plain one.

usage: forks.py LOOMSHIP [--episodes N] [--first I] [--seed S] [--long]
                [--keep] [--verbose] [--steps run,kill-standby,...]
--episodes defaults to 200; --long (or LOOMSHIP_SYSTEM_LONG=1) to 2,000
with longer episodes. Episode I draws from (seed, I) alone: a failure
prints the command that repeats it.
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

STEPS = {  # name: weight
    "run": 6, "empty": 3, "older": 3, "copy-after": 2, "copy-both": 2,
    "promote": 2, "promote-empty": 1, "kill-standby": 2, "restart-standby": 1,
    "backup": 1, "offline": 2,
}
RUN_TIMEOUT = 60.0
DRAIN = "1"  # --drain-timeout: a refused standby never catches up


def features(loomship):
    """What this build offers: --ack-log on primary, --force on promote."""
    def helptext(cmd):
        r = subprocess.run([loomship, cmd, "--help"], capture_output=True)
        return (r.stdout + r.stderr).decode(errors="replace")
    return {"ack_log": "--ack-log" in helptext("primary"),
            "force": "--force" in helptext("promote")}


def read_acks(path):
    """[(epoch, seq, checksum)] of complete lines of an ack log: DESIGN's
    `EPOCH SEQ CHECKSUM`, or the older hook's `seq S epoch E checksum C`."""
    acks = []
    try:
        with open(path) as f:
            for line in f:
                w = line.split()
                if not line.endswith("\n"):
                    break
                if len(w) == 3:
                    acks.append((int(w[0]), int(w[1]), w[2]))
                elif len(w) == 6 and w[0] == "seq":
                    acks.append((int(w[3]), int(w[1]), w[5]))
    except FileNotFoundError:
        pass
    return acks


def known_history(h):
    return h if h and h.strip("0") else None


def position(doc, part=None):
    """{history, epoch, seq, checksum} from a status document's `applied` or
    `received` (part), or from an inspect document; None if absent."""
    if doc is None:
        return None
    p = doc.get(part) if part else doc
    if not isinstance(p, dict) or "seq" not in p:
        return None
    return {"history": known_history(p.get("history") or doc.get("history")),
            "epoch": p.get("epoch", doc.get("epoch", 0)), "seq": p["seq"],
            "checksum": p.get("checksum")}


class Tracker:
    """What one standby has shown: the history it follows, the highest seq
    and epoch per kind of reading, and (history, seq) -> checksum."""

    def __init__(self):
        self.history = None
        self.max_seq = {}
        self.max_epoch = 0
        self.checksums = {}
        self.readings = 0

    def see(self, kind, pos):
        """Problems (strings) this reading shows; records it."""
        if pos is None:
            return []
        self.readings += 1
        out = []
        h, seq, cs = pos["history"], pos["seq"], pos["checksum"]
        if seq > 0 and h:
            if self.history is None:
                self.history = h
            elif h != self.history:
                out.append("%s switched history from %s to %s (at seq %d)"
                           % (kind, self.history, h, seq))
        top = self.max_seq.get(kind, 0)
        if seq < top:
            out.append("%s seq went backwards from %d to %d" % (kind, top, seq))
        self.max_seq[kind] = max(top, seq)
        if pos["epoch"] < self.max_epoch:
            out.append("%s epoch went backwards from %d to %d" % (kind, self.max_epoch, pos["epoch"]))
        self.max_epoch = max(self.max_epoch, pos["epoch"])
        if seq > 0 and cs:
            key = (h or self.history or "", seq)
            before = self.checksums.setdefault(key, cs)
            if before != cs:
                out.append("%s holds checksum %s at seq %d where it held %s"
                           % (kind, cs, seq, before))
        return out

    def empty(self):
        return max(self.max_seq.values(), default=0) == 0


class Node:
    """A standby process and what it has shown."""

    def __init__(self, name, directory):
        self.name, self.dir = name, directory
        self.proc = self.url = None
        self.port = 0
        self.track = Tracker()
        self.lock = threading.Lock()  # one reading at a time, in order
        self.promoted = False


class Run:
    """One `loomship primary` process."""

    def __init__(self, proc, directory, acks, sync, targets):
        self.proc, self.dir, self.acks, self.sync, self.targets = proc, directory, acks, sync, targets
        self.killed = False
        self.out = ""


class Episode:
    def __init__(self, suite, index):
        self.s = suite
        self.index = index
        self.rng = random.Random(suite.seed * 1000003 + index)
        self.root = os.path.join(suite.root, "e%d" % index)
        os.makedirs(self.root)
        self.nodes = []
        self.made = 0  # standbys started so far (a new one gets a new name)
        self.pdir = self.p("p")
        self.pool = []  # older copies of primary directories
        self.dirs = {}  # every primary-side directory -> it holds an image
        # Every primary-side directory's lineage: seq -> checksum of the
        # positions it passed through (its runs' ack logs and final lines,
        # inherited by copies), to tell the forks of one history apart.
        self.lineage = {}
        self.problems = []
        self.steps = []
        self.runs = 0
        self.stopping = False

    def p(self, what):
        return os.path.join(self.root, what)

    def fail(self, what):
        """Note a problem; each distinct one is printed once (a standby that
        went backwards stays there for every later reading)."""
        if what in self.problems:
            return
        self.problems.append(what)
        if len(self.problems) <= 12:
            print("FAIL episode %d (%s): %s" % (self.index, " ".join(self.steps), what), flush=True)

    # -- standbys --

    def start_node(self, node):
        for attempt in range(40):
            proc, url = systest.start_standby(self.s.loomship, node.dir, node.port,
                                              log=self.p(node.name + ".log"))
            if url:
                node.proc, node.url = proc, url
                node.port = int(url.rsplit(":", 1)[1])
                return
            systest.stop(proc, signal.SIGKILL)
            time.sleep(0.05 * (attempt + 1))  # the port may still be held
        raise RuntimeError("standby %s would not start (%s)" % (node.name, self.p(node.name + ".log")))

    def new_node(self):
        self.made += 1
        node = Node("s%d" % self.made, self.p("s%d" % self.made))
        self.start_node(node)
        self.nodes.append(node)
        return node

    def live(self):
        return [n for n in self.nodes if n.url]

    def observe(self, node):
        """Read a running node's status, feed its tracker; the document."""
        with node.lock:
            url = node.url
            st = systest.status(url, timeout=1) if url else None
            if st is not None and node.url == url:
                self.s.samples += 1
                for part in ("applied", "received"):
                    for pr in node.track.see(part, position(st, part)):
                        self.fail("%s: %s" % (node.name, pr))
        return st

    def observe_all(self):
        for node in self.live():
            self.observe(node)

    def sample_loop(self):
        while not self.stopping:
            self.observe_all()
            time.sleep(0.02)

    def halt_node(self, node, sig):
        """Stop a node, read its directory (inspect), verify it if killed."""
        with node.lock:
            proc, node.url = node.proc, None
        if proc.poll() is not None:
            self.fail("%s died by itself (status %s)" % (node.name, proc.returncode))
        rc = systest.stop(proc, sig)
        if sig == signal.SIGTERM and rc != 0:
            self.fail("%s did not stop cleanly on SIGTERM (status %s)" % (node.name, rc))
        doc = systest.inspect(self.s.loomship, node.dir)
        if doc is not None:
            for pr in node.track.see("inspect", position(doc)):
                self.fail("%s: %s" % (node.name, pr))
        if sig == signal.SIGKILL:
            self.check_verify(node.dir, node.name, may_be_empty=node.track.empty())

    def check_verify(self, d, who, may_be_empty):
        ok, out = systest.verify(self.s.loomship, d)
        if not ok and not (may_be_empty and out.endswith("no image in that directory")):
            self.fail("verify %s (%s): %s" % (who, d, out))

    # -- primaries --

    def start_run(self, d, saves, sync, targets):
        self.runs += 1
        acks = self.p("acks-%d" % self.runs)
        args = [self.s.loomship, "primary", "--dir", d, "--saves", str(saves),
                "--drain-timeout", DRAIN, "--sync", str(sync), "--sync-timeout", "1",
                "--seed", str(self.rng.randrange(1, 1 << 62))] + systest.SMALL
        for n in targets:
            args += ["--standby", "http://127.0.0.1:%d" % n.port]
        env = dict(os.environ)
        env.pop("LOOMSHIP_ACK_LOG", None)
        if self.s.features["ack_log"]:
            args += ["--ack-log", acks]
        else:
            env["LOOMSHIP_ACK_LOG"] = acks
        log = open(self.p("primary.log"), "ab")
        proc = systest.spawn(args, stdout=subprocess.PIPE, stderr=log, env=env)
        log.close()
        return Run(proc, d, acks, sync, list(targets))

    def finish_run(self, run):
        try:
            out, _ = run.proc.communicate(timeout=RUN_TIMEOUT)
            run.out = out.decode(errors="replace")
        except subprocess.TimeoutExpired:
            run.proc.kill()
            run.proc.communicate()
            self.fail("a primary on %s did not stop within %.0f s" % (run.dir, RUN_TIMEOUT))
        rc = run.proc.returncode
        self.s.count("exit %s" % ("kill -9" if run.killed and rc == -9 else rc))
        if run.killed and rc == -signal.SIGKILL:
            self.check_killed_primary(run)
        elif rc not in (0, 3, 4):
            self.fail("the primary on %s exited %s: %s" % (os.path.basename(run.dir), rc,
                                                           self.log_tail()))
        if rc in (0, 3, 4) or read_acks(run.acks):
            self.dirs[run.dir] = True
        passed = self.lineage.setdefault(run.dir, {})
        passed.update((s, c) for _, s, c in read_acks(run.acks))
        last = systest.committed_line(run.out)
        if last:
            passed[last[0]] = last[1]
        return rc

    def log_tail(self):
        with open(self.p("primary.log"), errors="replace") as f:
            return " | ".join(f.read().splitlines()[-3:])

    def check_killed_primary(self, run):
        self.check_verify(run.dir, "killed primary", may_be_empty=not self.dirs.get(run.dir))
        acks = read_acks(run.acks)
        if not acks:
            return
        e, s, c = acks[-1]
        doc = systest.inspect(self.s.loomship, run.dir)
        if doc is None or doc["seq"] < s or (doc["seq"] == s and doc["checksum"] != c):
            self.fail("killed primary's directory holds %s, not its last acknowledged "
                      "save (%d, %d, %s)" % (doc and position(doc), e, s, c))

    def check_exit0(self, run):
        """A solo run exited 0: every standby it shipped to holds its final
        position (DESIGN section 5)."""
        last = systest.committed_line(run.out)
        if last is None:
            self.fail("the primary exited 0 without its 'committed seq' line")
            return
        for n in run.targets:
            if not n.url or n.promoted:
                continue
            st = self.observe(n)
            got = position(st, "received")
            if got is None or (got["seq"], got["checksum"]) != last:
                self.fail("the primary exited 0, yet %s holds %s, not its final seq %d "
                          "checksum %s" % (n.name, got and (got["seq"], got["checksum"]),
                                           last[0], last[1]))

    def check_sync(self, run):
        """--sync 1: some standby holds the last acknowledged save durably."""
        acks = read_acks(run.acks)
        if not acks:
            return
        e, s, c = acks[-1]
        seen = []
        for n in run.targets:
            got = position(self.observe(n), "received") if n.url else None
            if got is None:
                continue
            if got["seq"] > s or (got["seq"] == s and got["checksum"] == c):
                return
            seen.append((n.name, got["seq"], got["checksum"]))
        self.fail("--sync 1 acknowledged (%d, %d, %s), no standby holds it: %s" % (e, s, c, seen))

    def chaos(self, runs):
        """kill -9 a primary or a standby at a random instant (or nothing)."""
        r = self.rng.random()
        if r < 0.4:
            return
        time.sleep(self.rng.random() * 0.15)
        if r < 0.7:
            run = self.rng.choice(runs)
            if run.proc.poll() is None:
                run.killed = True
                systest.stop(run.proc, signal.SIGKILL)
                self.s.count("kill -9 primary")
        elif self.live():
            node = self.rng.choice(self.live())
            self.halt_node(node, signal.SIGKILL)
            self.start_node(node)
            self.s.count("kill -9 standby")

    def run_dirs(self, dirs, sync=0):
        """Run primaries on dirs at once, with chaos; check their outcome."""
        targets = [n for n in self.nodes if n.url]
        # --sync 1 against a standby that refuses waits --sync-timeout (1 s)
        # per save: few saves then.
        saves = self.rng.choice([3, 5] if sync else [3, 5, 10, 20, 40])
        runs = [self.start_run(d, saves, sync, targets) for d in dirs]
        self.chaos(runs)
        codes = [self.finish_run(run) for run in runs]
        self.observe_all()
        if len(runs) == 1 and codes[0] == 0 and not runs[0].killed:
            self.check_exit0(runs[0])
        if len(runs) > 1 and codes.count(0) > 1:
            self.fail("two copies of one directory both exited 0: the standbys cannot "
                      "hold both forks")
        if sync:
            self.check_sync(runs[0])

    # -- steps --

    def copy_dir(self, src, dst=None):
        """cp -a of a stopped primary-side directory (to a new name by
        default), with its lineage; returns the copy's path."""
        dst = dst or self.p("copy%d" % len(self.dirs))
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, symlinks=True)
        self.dirs[dst] = True
        self.lineage[dst] = dict(self.lineage.get(src, {}))
        return dst

    def snapshot(self, d):
        """A cp -a copy of a stopped primary directory into the pool."""
        if os.path.isdir(d) and self.dirs.get(d):
            self.pool.append(self.copy_dir(d))

    def check_lineages(self):
        """A standby that matched a primary-side lineage at seq T held, at
        every lower seq it showed, what that lineage held there: otherwise it
        jumped onto another fork and lost the saves after the fork point."""
        for node in self.nodes:
            held = {seq: c for (_, seq), c in node.track.checksums.items()}
            for d, passed in self.lineage.items():
                matched = [t for t, c in held.items() if passed.get(t) == c]
                if not matched:
                    continue
                top = max(matched)
                for seq in sorted(held):
                    if seq < top and seq in passed and passed[seq] != held[seq]:
                        self.fail("%s held seq %d checksum %s, then seq %d of %s, whose seq "
                                  "%d is %s: it jumped onto another fork" % (
                                      node.name, seq, held[seq], top, os.path.basename(d),
                                      seq, passed[seq]))
                        break

    def step(self, name):
        rng = self.rng
        if name == "run":
            if rng.random() < 0.4:
                self.snapshot(self.pdir)
            self.run_dirs([self.pdir], sync=1 if rng.random() < 0.3 else 0)
        elif name == "empty":
            shutil.rmtree(self.pdir, ignore_errors=True)
            self.dirs[self.pdir] = False
            self.lineage[self.pdir] = {}
            self.run_dirs([self.pdir])
        elif name == "older":
            if not self.pool:
                return self.step("run")
            self.copy_dir(rng.choice(self.pool), self.pdir)
            self.run_dirs([self.pdir])
        elif name in ("copy-after", "copy-both"):
            if not self.dirs.get(self.pdir):
                return self.step("run")
            b = self.copy_dir(self.pdir)
            if name == "copy-both":
                self.run_dirs([self.pdir, b])
            else:
                self.run_dirs([self.pdir])
                self.run_dirs([b])
            if rng.random() < 0.5:
                self.pdir = b
        elif name == "promote":
            self.promote(rng.choice(self.nodes), failover=rng.random() < 0.5)
        elif name == "promote-empty":
            self.promote(self.new_node(), failover=False)
        elif name == "offline":
            # A standby is down while the primary runs, then comes back.
            node = rng.choice(self.nodes)
            self.halt_node(node, signal.SIGTERM)
            self.run_dirs([self.pdir])
            self.start_node(node)
        elif name in ("kill-standby", "restart-standby"):
            node = rng.choice(self.nodes)
            self.halt_node(node, signal.SIGKILL if name == "kill-standby" else signal.SIGTERM)
            self.start_node(node)
        elif name == "backup":
            node = rng.choice(self.nodes)
            out = self.p("backup%d" % len(self.dirs))
            r = subprocess.run([self.s.loomship, "backup", "--from", node.url, "--out", out],
                               capture_output=True)
            if r.returncode == 0:
                self.dirs[out] = True
                self.pool.append(out)
                self.lineage[out] = self.held_upto(node, out)
            elif not node.track.empty():
                self.fail("backup from %s: %s" % (node.name, r.stderr.decode(errors="replace")))

    def held_upto(self, node, d):
        """What a standby showed, up to the position of directory d (a
        backup of it, or its own directory after a failover)."""
        doc = systest.inspect(self.s.loomship, d)
        top = doc["seq"] if doc else 0
        return {seq: c for (_, seq), c in node.track.checksums.items() if seq <= top}

    def promote(self, node, failover):
        force = self.rng.random() < 0.5
        before = self.observe(node)
        args = [self.s.loomship, "promote", node.url]
        if force and self.s.features["force"]:
            args.append("--force")
        r = subprocess.run(args, capture_output=True)
        after = self.observe(node)
        empty = before is not None and before.get("role") == "standby" and \
            before["applied"]["seq"] == 0
        self.s.count("promote%s %s%s" % (" --force" if force else "", "empty " if empty else "",
                                         "accepted" if r.returncode == 0 else "refused"))
        if r.returncode == 0 and empty and not force:
            self.fail("%s was promoted without --force though it never applied anything "
                      "(DESIGN section 3: PROMOTE_EMPTY)" % node.name)
        if r.returncode != 0 or (after and after.get("role") != "primary"):
            return
        node.promoted = True
        if failover and not empty:
            # The operator runs the application on the promoted node's
            # directory; a new empty standby takes its place.
            self.halt_node(node, signal.SIGTERM)
            self.nodes.remove(node)
            self.pdir = node.dir
            self.dirs[node.dir] = True
            self.lineage[node.dir] = self.held_upto(node, node.dir)
            self.new_node()
            self.s.count("failover")

    def run(self, steps):
        self.new_node()
        if self.rng.random() < 0.3:
            self.new_node()
        sampler = threading.Thread(target=self.sample_loop, daemon=True)
        sampler.start()
        try:
            self.steps.append("run")
            self.step("run")
            names, weights = zip(*((k, w) for k, w in STEPS.items() if k in self.s.steps))
            for _ in range(steps):
                name = self.rng.choices(names, weights)[0]
                self.steps.append(name)
                self.s.count(name)
                self.step(name)
                self.observe_all()
                self.check_lineages()
        finally:
            self.stopping = True
            sampler.join(5)
        for node in self.nodes:
            self.halt_node(node, signal.SIGTERM)
            self.check_verify(node.dir, node.name, may_be_empty=node.track.empty())
        self.check_lineages()
        for d, holds in self.dirs.items():
            if os.path.isdir(d):
                self.check_verify(d, "primary-side directory", may_be_empty=not holds)


class Suite:
    def __init__(self, loomship, root, seed):
        self.loomship, self.root, self.seed = loomship, root, seed
        self.features = features(loomship)
        self.steps = set(STEPS)
        self.counts = {}
        self.samples = 0

    def count(self, what):
        self.counts[what] = self.counts.get(what, 0) + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("loomship")
    ap.add_argument("--episodes", type=int)
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--seed", type=int,
                    default=int(os.environ.get("LOOMSHIP_FORKS_SEED", "0")) or None)
    ap.add_argument("--long", action="store_true",
                    default=os.environ.get("LOOMSHIP_SYSTEM_LONG") == "1")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--steps", help="only these steps (comma-separated names) after the first run")
    a = ap.parse_args()
    episodes = a.episodes or (2000 if a.long else 200)
    seed = a.seed or random.SystemRandom().randrange(1, 1 << 31)
    root = tempfile.mkdtemp(prefix="loomship-forks-")
    suite = Suite(os.path.abspath(a.loomship), root, seed)
    if a.steps:
        suite.steps = set(a.steps.split(",")) & set(STEPS)
    print("forks: seed %d, episodes %d..%d, in %s (build: %s)"
          % (seed, a.first, a.first + episodes - 1, root,
             ", ".join("%s %s" % (k, "yes" if v else "no") for k, v in suite.features.items())),
          flush=True)
    t0 = time.monotonic()
    failed = []
    for i in range(a.first, a.first + episodes):
        ep = Episode(suite, i)
        try:
            ep.run(ep.rng.randint(5, 10) if a.long else ep.rng.randint(3, 6))
        except (RuntimeError, OSError) as e:
            ep.fail("the episode could not go on: %s" % e)
        finally:
            for proc in systest._children:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if a.verbose:
            print("episode %d: %s: %s" % (i, " ".join(ep.steps),
                                          "FAIL" if ep.problems else "ok"), flush=True)
        if ep.problems:
            failed.append(i)
        elif not a.keep:
            shutil.rmtree(ep.root, ignore_errors=True)
        done = i - a.first + 1
        if done % 20 == 0:
            print("... %d episodes, %d failed, %.0f s" % (done, len(failed), time.monotonic() - t0),
                  flush=True)
    print("forks: %d episodes (%s); %d standby readings; %d failed episodes; seed %d; %.0f s"
          % (episodes, ", ".join("%s %d" % kv for kv in sorted(suite.counts.items())),
             suite.samples, len(failed), seed, time.monotonic() - t0))
    if failed:
        me = sys.argv[0]
        for i in failed[:10]:
            print("repeat: %s %s --seed %d --first %d --episodes 1 --keep --verbose"
                  % (me, a.loomship, seed, i))
        print("directories and logs of failed episodes kept in", root)
        return 1
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
