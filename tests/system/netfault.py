#!/usr/bin/env python3
"""netfault.py: network faults between a running primary and its standby,
through a fault-injecting TCP proxy on 127.0.0.1 (faultproxy.py).

A standby, the proxy in front of it, and a primary (`--saves 0`, 50 saves
a second, shipping through the proxy, its read endpoints on --listen) run
for the whole test. Then, episode after episode (the schedule comes from
the seed):

  1. one fault for a short while, as the primary keeps saving: latency,
     a bandwidth limit, a reset after N bytes (N swept, both ways), a
     blackhole, a partition, bit flips in request bodies, duplicated
     frames (a captured request sent again at once), reordered frames (an
     older captured request sent again), kill -9 of the primary or of the
     standby while a request is half forwarded (a bandwidth limit keeps
     requests in flight), then a restart of the killed side;
  2. heal; the standby must apply the primary's position at the instant
     of healing within 10 s;
  3. every 4th episode (and after the last): the primary stops (it drains
     to the standby), the standby must hold its final position with a lag
     of 0, stop cleanly, and the two directories must agree (inspect
     documents, image files byte for byte, verify on both); both restart.

Throughout, a sampler reads both status documents every 20 ms and checks
the standby's lag against the known positions: lag.frames equals
primary_seq - applied.seq; received >= applied; applied never goes back;
the standby never knows of a seq the primary has not committed, nor
applied one; lag.seconds is 0 when lag.frames is; the primary's view of
the standby (applied_seq, lag) agrees with the standby's own.

usage: netfault.py LOOMSHIP [--episodes N] [--seed S] [--long] [--keep]
LOOMSHIP_SYSTEM_LONG=1 or --long: 2,000 episodes. Exit 0 when every check
passed; a failure prints the episode, the seed and the command to repeat.
"""
import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultproxy  # noqa: E402
import systest  # noqa: E402

RESET_SWEEP = [0, 1, 2, 4, 8, 16, 32, 64, 100, 150, 200, 300, 400, 600, 800, 1200, 2000, 4000]
KINDS = ["latency", "bandwidth", "reset", "blackhole", "partition", "bitflip",
         "duplicate", "reorder", "kill-primary", "kill-standby"]
CONVERGE_S = 10.0


class Rig:
    def __init__(self, loomship, root, seed):
        self.loomship, self.root = loomship, root
        self.sdir, self.pdir = os.path.join(root, "s"), os.path.join(root, "p")
        self.problems = []
        self.drains_given_up = 0  # stops that exited 4 (see stop_primary)
        self.episode = "setup"
        self.lock = threading.Lock()
        self.standby = self.primary = None
        self.surl = self.purl = None
        self.sport = 0
        self.last_applied = 0
        self.samples = 0
        self.proxy = None
        self.seed = seed
        self.stopping = False

    def fail(self, what):
        with self.lock:
            self.problems.append("episode %s: %s" % (self.episode, what))
        print("FAIL episode %s: %s" % (self.episode, what), flush=True)

    # -- processes --

    def start_standby(self):
        for attempt in range(40):
            proc, url = systest.start_standby(self.loomship, self.sdir, self.sport,
                                              log=os.path.join(self.root, "standby.log"))
            if url:
                self.standby, self.surl = proc, url
                self.sport = int(url.rsplit(":", 1)[1])
                return
            systest.stop(proc, signal.SIGKILL)
            time.sleep(0.05 * (attempt + 1))
        raise RuntimeError("the standby would not start")

    def start_primary(self, sync):
        self.sync = sync
        args = [self.loomship, "primary", "--dir", self.pdir,
                "--standby", "http://127.0.0.1:%d" % self.proxy.port, "--saves", "0",
                "--listen", "127.0.0.1:0", "--drain-timeout", "15", "--sync", str(sync),
                "--sync-timeout", "1", "--keys", "64", "--arena-pages", "256",
                "--pages", "3", "--rate", "50"]
        log = open(os.path.join(self.root, "primary.log"), "ab")
        self.primary = systest.spawn(args, stdout=subprocess.PIPE, stderr=log)
        log.close()
        line = self.primary.stdout.readline().decode()
        if "listening on " not in line:
            raise RuntimeError("the primary would not start: %r" % line)
        self.purl = line.split("listening on ", 1)[1].split()[0]

    def stop_primary(self):
        """SIGTERM (it drains); returns (seq, checksum) it committed."""
        self.primary.send_signal(signal.SIGTERM)
        out, _ = self.primary.communicate(timeout=60)
        text = out.decode(errors="replace")
        last = systest.committed_line(text)
        # Exit 4: the drain gave up on a standby that kept failing (four
        # attempts in a row) and it does not hold everything; the restart
        # and comparison below still check that nothing was lost.
        gave_up = self.primary.returncode == 4 and re.search(
            r"standbys: .*\b(unreachable|stalled|refused)\b", text) is not None
        if gave_up:
            self.drains_given_up += 1
        if (self.primary.returncode != 0 and not gave_up) or last is None:
            tail = out.decode(errors="replace").strip().splitlines()[-2:]
            self.fail("the primary did not stop cleanly (status %s): %s"
                      % (self.primary.returncode, " | ".join(tail)))
        self.primary = None
        return last

    # -- the lag sampler --

    def sample_loop(self):
        while not self.stopping:
            self.sample()
            time.sleep(0.02)

    def sample(self):
        with self.lock:
            surl, purl = self.surl, self.purl if self.primary else None
        s1 = systest.status(surl, timeout=1) if surl else None
        p = systest.status(purl, timeout=1) if purl else None
        s2 = systest.status(surl, timeout=1) if surl else None
        if s1 is None:
            return
        self.samples += 1
        a, r, ps, lag = s1["applied"]["seq"], s1["received"]["seq"], s1["primary_seq"], s1["lag"]
        if lag["frames"] != ps - a or ps < a:
            self.fail("standby lag.frames %d, but primary_seq %d - applied %d"
                      % (lag["frames"], ps, a))
        if r < a:
            self.fail("standby received seq %d < applied seq %d" % (r, a))
        if lag["frames"] == 0 and lag["seconds"] != 0:
            self.fail("standby lag 0 frames but %s seconds" % lag["seconds"])
        if lag["frames"] < 0 or lag["bytes"] < 0 or lag["seconds"] < 0:
            self.fail("negative lag %s" % lag)
        if a < self.last_applied:
            self.fail("standby applied seq went back from %d to %d" % (self.last_applied, a))
        self.last_applied = max(self.last_applied, a)
        if p is None:
            return
        committed = p["applied"]["seq"]
        if ps > committed:
            self.fail("the standby knows of seq %d, the primary committed only %d" % (ps, committed))
        if a > committed:
            self.fail("the standby applied seq %d, the primary committed only %d" % (a, committed))
        if s2 and p.get("standbys"):
            v = p["standbys"][0]
            if v["applied_seq"] > s2["applied"]["seq"]:
                self.fail("the primary says the standby applied %d; it has %d"
                          % (v["applied_seq"], s2["applied"]["seq"]))
            latest = v["applied_seq"] + v["lag"]["frames"]
            if v["lag"]["frames"] and not committed - 1 <= latest <= committed + 1:
                self.fail("the primary's lag for the standby: applied %d + %d frames, "
                          "committed %d" % (v["applied_seq"], v["lag"]["frames"], committed))

    # -- episodes --

    def wait_caught_up(self, t_heal):
        """The standby applies the primary's position at healing in 10 s."""
        st = None
        for _ in range(20):
            st = systest.status(self.purl) if self.primary else None
            if st:
                break
            time.sleep(0.05)
        if st is None:
            self.fail("no status from the primary after healing")
            return None
        target = st["applied"]["seq"]
        while time.monotonic() - t_heal < CONVERGE_S:
            s = systest.status(self.surl)
            if s and s["applied"]["seq"] >= target:
                return time.monotonic() - t_heal
            time.sleep(0.02)
        s = systest.status(self.surl)
        self.fail("the standby did not apply seq %d within %.0f s of healing (it has %s)"
                  % (target, CONVERGE_S, s and s["applied"]["seq"]))
        return None

    def full_check(self, sync):
        """Stop the primary (drain), compare, restart both."""
        last = self.stop_primary()
        if last:
            st, ok = systest.wait_applied(self.surl, last[0], CONVERGE_S)
            if not ok:
                self.fail("after the primary stopped, the standby holds %s, not seq %d"
                          % (st and st["applied"]["seq"], last[0]))
            elif st["lag"]["frames"] != 0 or st["primary_seq"] != last[0]:
                self.fail("caught up, yet lag %s with primary_seq %d (final seq %d)"
                          % (st["lag"], st["primary_seq"], last[0]))
        with self.lock:
            self.surl = None
        rc = systest.stop(self.standby)
        if rc != 0:
            self.fail("the standby did not stop cleanly (status %s)" % rc)
        for pr in systest.compare_nodes(self.loomship, self.pdir, self.sdir):
            self.fail(pr)
        self.start_standby()
        self.start_primary(sync)

    def kill_mid_transfer(self, who, rng):
        """kill -9 one side while a request is half forwarded, restart it."""
        self.proxy.set_fault("bandwidth", rate=rng.choice([1000, 2000, 4000]))
        deadline = time.monotonic() + 3
        while not self.proxy.in_flight() and time.monotonic() < deadline:
            time.sleep(0.002)
        mid = self.proxy.in_flight()
        time.sleep(rng.random() * 0.05)
        if who == "primary":
            with self.lock:
                proc, self.purl = self.primary, None
            systest.stop(proc, signal.SIGKILL)
            ok, out = systest.verify(self.loomship, self.pdir)
            if not ok:
                self.fail("verify of the killed primary's directory: " + out)
            self.proxy.heal()
            self.start_primary(self.sync)
        else:
            with self.lock:
                proc, self.surl = self.standby, None
            systest.stop(proc, signal.SIGKILL)
            ok, out = systest.verify(self.loomship, self.sdir)
            if not ok:
                self.fail("verify of the killed standby's directory: " + out)
            self.proxy.heal()
            self.start_standby()
        return mid

    def run_episode(self, i, kind, rng):
        self.episode = "%d (%s)" % (i, kind)
        hold = 0.15 + rng.random() * 0.35
        detail = ""
        if kind == "latency":
            d = rng.choice([0.01, 0.05, 0.1, 0.2])
            self.proxy.set_fault("latency", delay=d)
            detail = "%d ms" % (d * 1000)
        elif kind == "bandwidth":
            rate = rng.choice([500, 2000, 8000, 32000])
            self.proxy.set_fault("bandwidth", rate=rate)
            detail = "%d B/s" % rate
        elif kind == "reset":
            n = RESET_SWEEP[self.reset_index % len(RESET_SWEEP)]
            way = "up" if (self.reset_index // len(RESET_SWEEP)) % 2 == 0 else "down"
            self.reset_index += 1
            self.proxy.set_fault("reset", after=n, way=way)
            detail = "after %d bytes %s" % (n, way)
        elif kind in ("blackhole", "partition"):
            self.proxy.set_fault(kind)
        elif kind == "bitflip":
            self.proxy.set_fault("bitflip", rate=rng.choice([0.3, 1.0]))
        elif kind in ("duplicate", "reorder"):
            time.sleep(hold)
            with self.proxy.cond:
                caps = list(self.proxy.captures)
            if not caps:
                self.fail("no request was captured to replay")
            else:
                picks = [caps[-1]] * 2 if kind == "duplicate" else rng.sample(caps, min(3, len(caps)))
                answers = [self.proxy.replay(c) for c in picks]
                detail = ", ".join(a.split(" ", 1)[1] if " " in a else "no answer"
                                   for a in answers)
                for a in answers:
                    if a and a.split(" ")[1][0] not in "24":
                        self.fail("a replayed frame was answered %r" % a)
            hold = 0
        elif kind.startswith("kill-"):
            mid = self.kill_mid_transfer(kind[5:], rng)
            detail = "mid-transfer" if mid else "no request in flight within 3 s"
            hold = 0
        time.sleep(hold)
        self.proxy.heal()
        t = self.wait_caught_up(time.monotonic())
        return detail, t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("loomship")
    ap.add_argument("--episodes", type=int)
    ap.add_argument("--seed", type=int, default=int(os.environ.get("LOOMSHIP_NETFAULT_SEED", "0")) or None)
    ap.add_argument("--long", action="store_true",
                    default=os.environ.get("LOOMSHIP_SYSTEM_LONG") == "1")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    episodes = a.episodes or (2000 if a.long else 200)
    seed = a.seed or random.SystemRandom().randrange(1, 1 << 31)
    rng = random.Random(seed)
    loomship = os.path.abspath(a.loomship)
    root = tempfile.mkdtemp(prefix="loomship-netfault-")
    print("netfault: seed %d, %d episodes, in %s" % (seed, episodes, root), flush=True)
    rig = Rig(loomship, root, seed)
    rig.reset_index = 0
    t0 = time.monotonic()
    rig.start_standby()
    rig.proxy = faultproxy.Proxy(rig.sport, seed)
    sync = 0
    rig.start_primary(sync)
    sampler = threading.Thread(target=rig.sample_loop, daemon=True)
    sampler.start()
    counts = {k: 0 for k in KINDS}
    worst = 0.0
    # The schedule: cycles of every kind once plus two more resets (so that
    # the reset sweep, both ways, is covered in 200 episodes), shuffled.
    schedule = []
    while len(schedule) < episodes:
        cycle = KINDS + ["reset", "reset"]
        rng.shuffle(cycle)
        schedule += cycle
    try:
        for i in range(1, episodes + 1):
            kind = schedule[i - 1]
            detail, t = rig.run_episode(i, kind, rng)
            counts[kind] += 1
            if t is not None:
                worst = max(worst, t)
            if a.verbose:
                print("episode %d %s %s: caught up in %s s" % (i, kind, detail,
                      "%.2f" % t if t is not None else "-"), flush=True)
            if i % 4 == 0 or i == episodes:
                rig.episode = "%d (check)" % i
                sync = 1 - sync if i % 20 == 0 else sync  # --sync 1 for a while
                rig.full_check(sync)
            if i % 50 == 0:
                print("... %d episodes, %d failures, %.0f s" % (i, len(rig.problems),
                      time.monotonic() - t0), flush=True)
    finally:
        rig.stopping = True
        sampler.join(5)
        for proc in (rig.primary, rig.standby):
            if proc and proc.poll() is None:
                systest.stop(proc, signal.SIGKILL)
        rig.proxy.close()
    print("netfault: %d episodes (%s), %d bit flips, %d connections reset, %d lag samples; "
          "slowest catch-up after healing %.2f s; %d drains gave up on a failing "
          "standby (exit 4); %d failures; seed %d; %.0f s"
          % (episodes, ", ".join("%s %d" % kv for kv in counts.items()), rig.proxy.flipped(),
             rig.proxy.resets, rig.samples, worst, rig.drains_given_up, len(rig.problems),
             seed, time.monotonic() - t0))
    if rig.problems:
        print("repeat: %s %s --seed %d --episodes %d --keep" % (sys.argv[0], a.loomship, seed,
                                                               episodes))
        print("directories and logs kept in", root)
        return 1
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
