#!/usr/bin/env python3
"""fork_faults.py: the three data-loss repros of issue 11 through the
network-fault proxy (faultproxy.py) and the crash-point hook
(cli/faultio.h): a standby at seq 60 keeps its position, checksum and
history whatever an empty primary, an older copy of its primary, or a
promoted empty standby sends it, however the network mangles it, and
whenever those primaries or the standby are killed.

  1. for each fault (latency, bandwidth, resets either way, blackhole,
     partition, bit flips): an empty primary and an older copy (seq 30)
     run against the standby through the proxy for a while, then healed;
     every captured request of theirs is replayed afterwards;
  2. the older copy with LOOMSHIP_CRASH_AT=K (killed right before its K-th
     store or log operation), K over its first operations, restarted
     normally each time; and kill -9 of the standby while it is refused;
  3. an empty standby promoted with --force next to it: its epoch does
     not fence the real primary.
Every reading of the standby (every 10 ms) must show seq 60 with its
checksum and history; `loomship verify` passes at the end.

usage: fork_faults.py LOOMSHIP [--crash-points N]"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultproxy  # noqa: E402
import systest  # noqa: E402

FAULTS = [("latency", {"delay": 0.05}), ("bandwidth", {"rate": 2000}),
          ("reset", {"after": 300, "way": "up"}), ("reset", {"after": 200, "way": "down"}),
          ("blackhole", {}), ("partition", {}), ("bitflip", {"rate": 0.5})]


class Rig:
    def __init__(self, loomship, root):
        self.loomship, self.root = loomship, root
        self.passed = self.failed = 0

    def p(self, *parts):
        return os.path.join(self.root, *parts)

    def check(self, what, ok, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print("%s: %s%s" % ("ok" if ok else "FAIL", what, "" if ok else " (%s)" % detail),
              flush=True)

    def primary(self, d, url, saves=0, env=None):
        args = [self.loomship, "primary", "--dir", self.p(d), "--standby", url,
                "--saves", str(saves), "--rate", "200", "--drain-timeout", "1"] + systest.SMALL[:6]
        return systest.spawn(args, stdout=subprocess.DEVNULL,
                             stderr=open(self.p(d + ".log"), "ab"),
                             env=dict(os.environ, **(env or {})))

    def expect_held(self, what, seconds):
        """Sample the standby for seconds; every reading must be the held
        position (None while it is down is fine)."""
        deadline = time.monotonic() + seconds
        bad = None
        while time.monotonic() < deadline:
            st = systest.status(self.surl, timeout=0.5)
            if st:
                got = (st["applied"]["seq"], st["applied"]["checksum"], st.get("history"),
                       st["received"]["seq"])
                if got != self.held + (self.held[0],):
                    bad = got
                    break
            time.sleep(0.01)
        self.check("%s: the standby keeps seq %d" % (what, self.held[0]), bad is None,
                   "it showed %s" % (bad,))

    def restart_standby(self):
        systest.stop(self.sproc, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            self.sproc, url = systest.start_standby(self.loomship, self.p("s"), self.sport,
                                                    log=self.p("s.log"))
            if url or time.monotonic() > deadline:
                break
            systest.stop(self.sproc, signal.SIGKILL)
            time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("loomship")
    ap.add_argument("--crash-points", type=int, default=12)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="loomship-forkfaults-")
    r = Rig(os.path.abspath(a.loomship), root)
    r.sproc, r.surl = systest.start_standby(r.loomship, r.p("s"), log=r.p("s.log"))
    r.sport = int(r.surl.rsplit(":", 1)[1])
    for saves in (30, 30):  # the primary to 30, copied, then to 60
        proc = r.primary("p", r.surl, saves)
        proc.wait(120)
        if saves == 30 and not os.path.exists(r.p("older")):
            shutil.copytree(r.p("p"), r.p("older"), symlinks=True)
    st, ok = systest.wait_applied(r.surl, 60, 20)
    r.check("the standby applied seq 60", ok, str(st and st["applied"]))
    r.held = (60, st["applied"]["checksum"], st.get("history"))
    proxy = faultproxy.Proxy(r.sport, seed=7)
    purl = "http://127.0.0.1:%d" % proxy.port

    # 1. faults
    for kind, params in FAULTS:
        for who in ("empty", "older"):
            d = "%s-%s-%s" % (who, kind, params.get("way", ""))
            if who == "older":
                shutil.copytree(r.p("older"), r.p(d), symlinks=True)
            proxy.set_fault(kind, **params)
            proc = r.primary(d, purl)
            r.expect_held("%s primary, %s" % (who, kind), 0.8)
            proxy.heal()
            r.expect_held("%s primary, %s healed" % (who, kind), 0.5)
            for capture in list(proxy.captures):
                proxy.replay(capture)
            r.expect_held("%s primary, %s, its requests replayed" % (who, kind), 0.2)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
            r.check("%s primary (%s) exits 4" % (who, kind), rc == 4, rc)

    # 2. crash points of the older copy, and kill -9 of the standby
    for k in range(1, a.crash_points + 1):
        d = "older-crash-%d" % k
        shutil.copytree(r.p("older"), r.p(d), symlinks=True)
        proc = r.primary(d, r.surl, env={"LOOMSHIP_CRASH_AT": str(k * 3)})
        proc.wait(60)
        proc = r.primary(d, r.surl)  # restarted normally
        r.expect_held("older copy killed at operation %d, restarted" % (k * 3), 0.3)
        if k % 4 == 0:
            r.restart_standby()
            r.expect_held("standby killed -9 and restarted while refused", 0.3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

    # 3. a promoted empty standby does not fence the real primary
    s2, s2url = systest.start_standby(r.loomship, r.p("s2"))
    promote = subprocess.run([r.loomship, "promote", s2url, "--force"], capture_output=True)
    r.check("an empty standby is promoted with --force", promote.returncode == 0,
            promote.stderr.decode(errors="replace"))
    proc = r.primary("p", r.surl, saves=5)
    proc2 = r.primary("p2", s2url, saves=5)
    rc, rc2 = proc.wait(60), proc2.wait(60)
    r.check("the real primary is not fenced by another history's epoch", rc == 0, rc)
    systest.stop(s2)
    st, ok = systest.wait_applied(r.surl, 65, 10)
    r.check("the real primary's next saves reach the standby", ok, str(st and st["applied"]))

    systest.stop(r.sproc)
    proxy.close()
    ok, out = systest.verify(r.loomship, r.p("s"))
    r.check("verify passes on the standby", ok, out)
    print("%d passed, %d failed" % (r.passed, r.failed))
    if r.failed:
        print("kept %s" % root)
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
