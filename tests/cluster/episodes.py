#!/usr/bin/env python3
"""episodes.py LOOMSHIP [--episodes N] [--seed S] [--ttl T] [--sync N]
[--faults a,b,...]: failover episodes of a real loomship cluster (issue 16).

One 3-member etcd on 127.0.0.1 (tests/lib/etcd.py) serves every episode;
each episode gets its own cluster name, three fresh `loomship node`s with
--ack-log, and each node reaches etcd through its own TCP proxies (so one
node can be cut off from etcd). Per episode, chosen by the seed:

  kill_leader       kill -9 of the leader
  freeze_leader     SIGSTOP of the leader past its ttl, then SIGCONT: it must
                    acknowledge nothing more at its epoch, and rejoin as a
                    standby (rewound if it saved past the branch point)
  kill_standby      kill -9 of a standby
  etcd_member       kill -9 of one etcd member (restarted after)
  etcd_quorum       kill -9 of two etcd members past the ttl, then restart:
                    the leader fences itself, a leader is elected again
  partition_leader  the leader's etcd proxies drop everything
  kill_in_switchover  `loomship switchover`, and kill -9 of the leader or
                    of the target while it runs
  switchover        `loomship switchover --to` a standby: it must exit 0
  sigterm_leader    SIGTERM on the leader (a planned stop): it must hand
                    over and exit 0

and, only when named in --faults (so that the seeds above keep choosing
the same fault):

  dead_target       a switchover drained to a target that dies before it
                    leads (cut off from etcd, then kill -9): the old leader
                    must lead again (the liveness bug of seed 287304066)
  diverged_rejoin   (use --sync 0) both standbys frozen while the leader
                    saves on, the leader frozen, the standbys killed and
                    restarted (the frames in their sockets are gone), a new
                    leader elected, then the old leader thawed: it holds
                    commits past the branch point and must rejoin rewound
                    through the page-hash tree, moving fewer pages than
                    the image holds (rewound.pages < rewound.image_pages)

then waits (polling, with a deadline) until a leader acknowledges saves
after the fault (at a higher epoch when the leader was hit), stops every
node with kill -9, and runs tests/lib/history_check.py over the ack-logs and
the most advanced survivor's directory: no acknowledged save missing
(with --sync: none lost at all; without, lost ones are counted and must be
reported as rewound), never two nodes acknowledging at one epoch, epochs
increasing. Prints "episode K seed S fault F: ..." per episode, and the
seed of any failure. Exit 0 all passed, 1 a failure, 77 etcd missing.
Also a library: bench/failover_bench.py uses Cluster."""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import etcd  # noqa: E402
import history_check  # noqa: E402

FAULTS = ["kill_leader", "freeze_leader", "kill_standby", "etcd_member",
          "etcd_quorum", "partition_leader", "kill_in_switchover", "switchover",
          "sigterm_leader"]


def poll(fn, deadline, step=0.05):
    """fn() every step seconds until it is true: that value, or None once
    deadline seconds passed."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline:
        v = fn()
        if v:
            return v
        time.sleep(step)
    return None


def read_acks(path):
    """[(epoch, seq)] of an ack-log (whole lines only)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    e, s, _ = line.split()
                    out.append((int(e), int(s)))
    except FileNotFoundError:
        pass
    return out


class Node:
    def __init__(self, cluster, i):
        self.c, self.i, self.name = cluster, i, "n%d" % i
        self.port = etcd.free_port()
        self.dir = os.path.join(cluster.tmp, self.name)
        self.ack = os.path.join(cluster.tmp, self.name + ".ack")
        self.log = os.path.join(cluster.tmp, self.name + ".log")
        self.proxies = [etcd.TcpProxy(cluster.etcd.client_url(j))
                        for j in range(cluster.etcd.n)]
        self.proc = None
        self.frozen = False

    def start(self):
        """Start; a port another process took meanwhile (free_port races
        with every ephemeral port on the machine): again on a new one."""
        for _ in range(5):
            self._spawn()
            t0 = time.monotonic()
            while self.alive() and self.status() is None and time.monotonic() - t0 < 10:
                time.sleep(0.02)
            if self.alive():
                return
            self.port = etcd.free_port()
        raise RuntimeError("%s did not start; see %s" % (self.name, self.log))

    def _spawn(self):
        args = [self.c.loomship, "node", "--name", self.name, "--dir", self.dir,
                "--listen", "127.0.0.1:%d" % self.port,
                "--etcd", ",".join(p.url for p in self.proxies),
                "--cluster", self.c.name, "--ttl", str(self.c.ttl),
                "--sync", str(self.c.sync), "--rate", str(self.c.rate),
                "--pages", "4", "--keys", "256", "--arena-pages", "1024",
                "--ack-log", self.ack, "--drain-timeout", "5", "--sync-timeout", "3"]
        args += self.c.extra_args
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self.frozen = False

    def status(self):
        try:
            with urllib.request.urlopen("%s://127.0.0.1:%d/v1/status" % (
                    self.c.scheme, self.port), timeout=0.5, context=self.c.ssl_context) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def acks(self):
        return read_acks(self.ack)

    def close(self):
        self.kill()
        for p in self.proxies:
            p.close()


class Cluster:
    """Three nodes of one cluster name on a shared etcd."""

    def __init__(self, loomship, etcd_cluster, name, ttl, sync, rate=20, n=3):
        self.loomship, self.etcd, self.name = loomship, etcd_cluster, name
        self.ttl, self.sync, self.rate = ttl, sync, rate
        # Options every node also takes (e.g. TLS), and how to read status.
        self.extra_args, self.scheme, self.ssl_context = [], "http", None
        self.tmp = tempfile.mkdtemp(prefix="loomship-episode-")
        self.nodes = [Node(self, i) for i in range(n)]

    def start(self):
        for nd in self.nodes:
            nd.start()

    def leader(self):
        """The node the leader key names, from etcd, or None."""
        try:
            keys = self.etcd.get_prefix("/loomship/%s/leader" % self.name)
        except Exception:  # etcd down
            return None
        v = keys.get("/loomship/%s/leader" % self.name)
        if not v:
            return None
        name = json.loads(v)["name"]
        return next((nd for nd in self.nodes if nd.name == name), None)

    def max_ack(self):
        """The highest (epoch, seq) acknowledged by any node."""
        best = (0, 0)
        for nd in self.nodes:
            a = nd.acks()
            if a and a[-1] > best:
                best = a[-1]
        return best

    def wait_acks(self, after, count=3, deadline=30.0, epoch_above=0):
        """Poll until some node acknowledged count saves past `after` (an
        (epoch, seq)) at an epoch above epoch_above: that first (epoch, seq)
        and the time it took, or None on the deadline."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline:
            for nd in self.nodes:
                fresh = [a for a in nd.acks() if a > after and a[0] > epoch_above]
                if len(fresh) >= count:
                    return fresh[0], time.monotonic() - t0
            time.sleep(0.02)
        return None

    def close(self, keep=False):
        for nd in self.nodes:
            nd.signal(signal.SIGCONT)
            nd.close()
        if not keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def check(self, seed, no_loss, leader=None):
        """history_check over every ack-log and the most advanced dir (the
        last leader's among equals: its positions ring is whole)."""
        docs = {}
        for nd in self.nodes:
            try:
                docs[nd.name] = history_check.inspect(self.loomship, nd.dir)
            except Exception:  # a node that never got a directory
                pass
        final = max(docs, key=lambda k: (docs[k]["epoch"], docs[k]["seq"], k == leader))
        report = history_check.check(
            {nd.name: nd.ack for nd in self.nodes}, docs[final],
            history_check.inspect_checksum_at(self.loomship,
                                              os.path.join(self.tmp, final)),
            seed=seed, no_loss=no_loss,
            survivors={k: v for k, v in docs.items() if k != final})
        return report


def run_checks(loomship, prefix, body, etcd_members=1, extra_args=(), **cluster_kw):
    """The frame of a process-level test of members (tests/lib/checks.py):
    etcd's members (77 when etcd is missing), a Cluster named prefix + pid
    started with extra_args, body(cluster), then every node closed (their
    directories kept after a failure); the exit code, 0 or 1."""
    from checks import FAILS
    if not etcd.etcd_available():
        print("SKIP: etcd-server missing")
        return 77
    with etcd.EtcdCluster(etcd_members) as ec:
        c = Cluster(loomship, ec, "%s%d" % (prefix, os.getpid()), **cluster_kw)
        c.extra_args = list(extra_args)
        try:
            c.start()
            body(c)
        finally:
            c.close(keep=bool(FAILS))
            if FAILS:
                print("kept %s" % c.tmp)
    print("FAILED: %d checks" % len(FAILS) if FAILS else "all passed")
    return 1 if FAILS else 0


# ---------------------------------------------------------------------------
# Faults: each returns the epoch the next acknowledgements must exceed.

def fault_kill_leader(c, lead, rng):
    lead.kill()
    return c.max_ack()[0]


def fault_freeze_leader(c, lead, rng):
    epoch = c.max_ack()[0]
    lead.signal(signal.SIGSTOP)
    lead.frozen = True
    # Frozen past its lease: until etcd names another leader (the lease
    # expired with the key and another member won), then up to 1 s more
    # (the fault's length). Thawed as soon as the key is gone, it could
    # win again itself, and the episode would not test a rejoin.
    if not poll(lambda: c.leader() not in (None, lead), 10 * c.ttl + 10):
        raise RuntimeError("no other member leads while %s is frozen (%d s)" % (
            lead.name, 10 * c.ttl + 10))
    time.sleep(rng.random())
    lead.signal(signal.SIGCONT)
    lead.frozen = False
    return epoch


def fault_kill_standby(c, lead, rng):
    others = [nd for nd in c.nodes if nd is not lead]
    rng.choice(others).kill()
    return 0


def fault_etcd_member(c, lead, rng):
    c.etcd_down = [rng.randrange(c.etcd.n)]
    c.etcd.kill(c.etcd_down[0])
    return 0


def fault_etcd_quorum(c, lead, rng):
    epoch = c.max_ack()[0]
    c.etcd_down = rng.sample(range(c.etcd.n), 2)
    for i in c.etcd_down:
        c.etcd.kill(i)
    # Quorum lost until the leader fenced itself (a standby again), then up
    # to 1 s more (the fault's length).
    demoted = lambda: (lead.status() or {}).get("role") == "standby"  # noqa: E731
    if not poll(demoted, 10 * c.ttl + 10):
        raise RuntimeError("the leader %s did not fence itself without quorum in %d s" % (
            lead.name, 10 * c.ttl + 10))
    time.sleep(rng.random())
    for i in c.etcd_down:
        c.etcd.restart(i)
    c.etcd_down = []
    return epoch  # the leader fenced itself: a new epoch (maybe the same node)


def fault_partition_leader(c, lead, rng):
    epoch = c.max_ack()[0]
    for p in lead.proxies:
        p.blackhole(True)
    c.partitioned = lead
    return epoch


def fault_kill_in_switchover(c, lead, rng):
    epoch = c.max_ack()[0]
    sw = subprocess.Popen([c.loomship, "switchover", "--etcd", c.etcd.endpoints,
                           "--cluster", c.name, "--timeout", "10"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.random() * 0.5)
    victim = lead if rng.random() < 0.5 else rng.choice(
        [nd for nd in c.nodes if nd is not lead])
    victim.kill()
    c.switchover = sw
    return epoch if victim is lead else 0


def lost_reported(report, lead, rejoined):
    """Async: the acknowledged saves the new history lacks were the old
    leader's, and a surviving old leader reports at least as many commits
    rewound."""
    if not report.lost:
        return True
    if any(a.node != lead.name for a in report.lost):
        print("  lost acks of another node than the old leader: %s" % report.lost)
        return False
    if rejoined is None:
        return True  # killed: it can report nothing
    frames = (rejoined.get("rewound") or {}).get("frames", 0)
    if frames < len(report.lost):
        print("  %d acks lost, %d commits reported rewound" % (len(report.lost), frames))
        return False
    return True


def wait_rejoined(node, epoch, deadline):
    """Poll until node is a standby following epoch (or later): its status
    document, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline:
        st = node.status()
        if st and st.get("role") == "standby" and st.get("epoch", 0) >= epoch:
            return st
        time.sleep(0.05)
    return None


def fault_switchover(c, lead, rng):
    epoch = c.max_ack()[0]
    to = rng.choice([nd for nd in c.nodes if nd is not lead])
    rc = subprocess.call([c.loomship, "switchover", "--etcd", c.etcd.endpoints,
                          "--cluster", c.name, "--to", to.name, "--timeout", "20"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if rc != 0:
        raise RuntimeError("loomship switchover --to %s exited %d" % (to.name, rc))
    return epoch


def fault_dead_target(c, lead, rng):
    """A handover drained to a target that dies before it leads: the target
    (the sync set's member with --sync) is cut off from etcd, so it cannot
    campaign, `loomship switchover --to` it, and once the old leader has
    handed the key over, kill -9 of the target. The old leader, which holds
    everything it acknowledged, must lead again."""
    epoch = c.max_ack()[0]
    prefix = "/loomship/%s/" % c.name
    sync = json.loads(c.etcd.get_prefix(prefix + "sync").get(prefix + "sync") or "null")
    names = sync["members"] if sync else [nd.name for nd in c.nodes if nd is not lead]
    target = next(nd for nd in c.nodes if nd.name == rng.choice(names))
    for p in target.proxies:
        p.blackhole(True)
    c.partitioned = target
    c.switchover = subprocess.Popen(
        [c.loomship, "switchover", "--etcd", c.etcd.endpoints, "--cluster", c.name,
         "--to", target.name, "--timeout", "5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        st = lead.status()
        if st and st.get("role") == "standby":
            break
        time.sleep(0.02)
    else:
        raise RuntimeError("%s did not hand over to %s" % (lead.name, target.name))
    target.kill()
    return epoch


def fault_diverged_rejoin(c, lead, rng):
    # The image first grows to most of its keys (256; --pages 4 a save), so
    # that a few seconds of saves on either side are a small divergence.
    if not poll(lambda: c.max_ack()[1] >= 100, 60):
        raise RuntimeError("the leader %s did not reach seq 100" % lead.name)
    epoch = c.max_ack()[0]
    others = [nd for nd in c.nodes if nd is not lead]
    for nd in others:
        nd.signal(signal.SIGSTOP)
    mark = c.max_ack()
    # Saves of the leader's that no standby takes (async: acknowledged).
    if not poll(lambda: len([a for a in lead.acks() if a > mark]) >= 3, 10):
        raise RuntimeError("%s acknowledged nothing while the standbys were frozen" % lead.name)
    lead.signal(signal.SIGSTOP)
    lead.frozen = True
    for nd in others:
        nd.kill()
        nd.start()
    if not poll(lambda: c.leader() not in (None, lead), 10 * c.ttl + 10):
        raise RuntimeError("no other member leads while %s is frozen" % lead.name)
    new = c.leader()
    poll(lambda: len([a for a in new.acks() if a[0] > epoch]) >= 2, 10)
    lead.signal(signal.SIGCONT)
    lead.frozen = False
    return epoch


def rewound_by_tree(st):
    """diverged_rejoin: the old leader rewound, moving fewer pages than its
    image holds (the page-hash tree, not a base image)."""
    rw = st.get("rewound") or {}
    if not rw or rw.get("frames", 0) == 0:
        print("  the old leader did not report a rewind: %s" % json.dumps(rw or None))
        return False
    if not rw.get("pages", 0) < rw.get("image_pages", 0):
        print("  the rewind moved %s of %s pages: not through the tree" % (
            rw.get("pages"), rw.get("image_pages")))
        return False
    return True


def fault_sigterm_leader(c, lead, rng):
    epoch = c.max_ack()[0]
    lead.signal(signal.SIGTERM)
    rc = lead.proc.wait(timeout=30)
    if rc != 0:
        raise RuntimeError("the leader exited %d after SIGTERM" % rc)
    return epoch


def run_episode(args, ec, k, seed):
    rng = random.Random(seed)
    fault = rng.choice(args.faults)
    c = Cluster(args.loomship, ec, "ep%d-%d" % (os.getpid(), k), args.ttl, args.sync,
                rate=args.rate)
    c.etcd_down, c.partitioned, c.switchover = [], None, None
    ok, text = False, ""
    try:
        c.start()
        got = c.wait_acks((0, 0), count=5, deadline=30)
        if not got:
            return False, "no leader acknowledged saves at start"
        lead = c.leader()
        if lead is None:
            return False, "no leader key"
        epoch_above = globals()["fault_" + fault](c, lead, rng)
        before = c.max_ack()  # acks from before the fault took hold do not count
        got = c.wait_acks(before, count=3, deadline=10 * args.ttl + 20,
                          epoch_above=epoch_above)
        if c.switchover is not None:
            c.switchover.wait(timeout=30)
        if c.partitioned is not None:
            for p in c.partitioned.proxies:
                p.blackhole(False)
        for i in c.etcd_down:
            c.etcd.restart(i)
        if not got:
            return False, "%s: no acknowledged save after the fault (epoch above %d)" % (
                fault, epoch_above)
        rejoin, rejoined = "", None
        if fault in ("freeze_leader", "partition_leader", "diverged_rejoin"):
            st = wait_rejoined(lead, got[0][0], deadline=10 * args.ttl + 10)
            if st is None:
                return False, "%s: the old leader %s did not rejoin as a standby at " \
                    "epoch %d" % (fault, lead.name, got[0][0])
            rejoined = st
            if fault == "diverged_rejoin" and not rewound_by_tree(st):
                return False, "%s: %s rejoined without a rewind through the tree: %s" % (
                    fault, lead.name, json.dumps(st.get("rewound")))
            rejoin = "; %s rejoined%s" % (lead.name, " (rewound %s)" % json.dumps(
                st["rewound"]) if st.get("rewound") else "")
        last = c.leader()
        for nd in c.nodes:
            nd.kill()
        report = c.check(seed, no_loss=args.sync > 0, leader=last.name if last else None)
        ok = report.ok and lost_reported(report, lead, rejoined)
        if report.lost:
            rejoin += "; %d acknowledged saves lost (async)" % len(report.lost)
        text = "%s: new acks from %s in %.2f s%s; %s" % (
            fault, got[0], got[1], rejoin, report.text().splitlines()[0])
        if not ok:
            text += "\n" + report.text()
        return ok, text
    finally:
        c.close(keep=not ok and args.keep)
        if not ok and args.keep:
            print("  kept %s" % c.tmp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("loomship")
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--ttl", type=int, default=2)
    ap.add_argument("--sync", type=int, default=1)
    ap.add_argument("--rate", type=int, default=20, help="saves a second of the leader")
    ap.add_argument("--faults", default=",".join(FAULTS),
                    help="a,b,...: of %s, dead_target and diverged_rejoin" %
                    ",".join(FAULTS))
    ap.add_argument("--keep", action="store_true", help="keep a failed episode's files")
    args = ap.parse_args()
    args.faults = args.faults.split(",")
    if not etcd.etcd_available():
        print("SKIP: etcd is not installed (etcd-server)")
        return 77
    base = args.seed if args.seed is not None else random.randrange(1 << 30)
    print("episodes: %d, first seed %d, ttl %d, sync %d" % (args.episodes, base, args.ttl,
                                                           args.sync))
    failed = []
    with etcd.EtcdCluster(3) as ec:
        for k in range(args.episodes):
            seed = base + k
            t0 = time.monotonic()
            try:
                ok, text = run_episode(args, ec, k, seed)
            except Exception as e:  # a harness failure is a failure too
                ok, text = False, "harness: %r" % e
            print("episode %d seed %d (%.1f s): %s %s" % (k, seed, time.monotonic() - t0,
                                                          "ok" if ok else "FAILED", text))
            sys.stdout.flush()
            if not ok:
                failed.append(seed)
    if failed:
        print("FAILED seeds: %s (rerun one: --seed S --episodes 1)" % failed)
        return 1
    print("all %d episodes passed" % args.episodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
