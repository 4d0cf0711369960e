#!/usr/bin/env python3
"""crash_points.py: kill -9 the primary and, separately, the standby right
before each I/O operation of save, frame append, ship, receive and apply;
restart; check that nothing acknowledged is lost and that the standby
converges to the primary byte for byte.

The loomship binary carries the hook (cli/faultio.h): LOOMSHIP_CRASH_AT=K
raises SIGKILL right before its K-th store or log operation;
LOOMSHIP_CRASH_COUNT=F reports how many a run performs; LOOMSHIP_ACK_LOG=F
lists the saves the primary saw succeed.

For every scenario (below) and side (primary or standby), a counting run
gives N, the operations that side performs over the whole run (start,
saves, shipping, receiving, applying, stop); then K = 1..N, each point on
fresh directories:

  1. the standby and the primary run the scenario's saves, the chosen side
     with LOOMSHIP_CRASH_AT=K; whichever dies is checked at once (verify
     on its directory; every save the primary noted as done is in the
     primary's image; in --sync 1 mode also in the standby's receive log)
     and restarted normally (the standby on the same port, while the
     primary keeps going);
  2. a normal primary run (one more save) drains to the standby; the
     standby must apply the primary's last position within 10 s, stop
     cleanly on SIGTERM, and then both directories must agree: inspect
     documents equal, image files equal byte for byte, verify passes on
     both.

Scenarios:
  fresh-sync    empty directories, --sync 1
  fresh-async   empty directories, asynchronous shipping
  behind-sync   primary at seq 6 with its replication log, standby at seq 2
                (catch-up reads frames back from the log), --sync 1
  behind-async  the same, asynchronous
  new-standby   primary at seq 6, empty standby (catch-up from scratch)

usage: crash_points.py LOOMSHIP [--long] [--jobs N] [--only SCEN:SIDE:K]
                       [--keep] [--scenarios a,b]
LOOMSHIP_SYSTEM_LONG=1 is the same as --long (more saves per run, three
rounds, since thread interleavings make each round a little different).
Exit 0 when every point passed, 1 otherwise (each failure printed with the
command that repeats it).
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

SCENARIOS = {
    # name: (sync count, saves in the crashed run, starting state)
    "fresh-sync": (1, 6, None),
    "fresh-async": (0, 6, None),
    "behind-sync": (1, 4, "behind"),
    "behind-async": (0, 4, "behind"),
    "new-standby": (1, 4, "new-standby"),
}
SIDES = ("primary", "standby")


class Point:
    def __init__(self, loomship, root, scenario, side, k, saves, keep):
        self.loomship, self.scenario, self.side, self.k = loomship, scenario, side, k
        self.sync, _, self.start = SCENARIOS[scenario]
        self.saves = saves
        self.dir = os.path.join(root, "%s-%s-%d" % (scenario, side, k))
        self.keep = keep
        self.problems = []
        self.killed = 0
        self.interrupted_creation = 0
        self.standby = None
        self.url = None
        self.port = 0

    def env(self, crash):
        e = dict(os.environ)
        for v in ("LOOMSHIP_CRASH_AT", "LOOMSHIP_CRASH_OP", "LOOMSHIP_CRASH_COUNT",
                  "LOOMSHIP_CRASH_TRACE", "LOOMSHIP_ACK_LOG"):
            e.pop(v, None)
        if crash == "count":
            e["LOOMSHIP_CRASH_COUNT"] = os.path.join(self.dir, "count")
        elif crash:
            e["LOOMSHIP_CRASH_AT"] = str(self.k)
            e["LOOMSHIP_CRASH_TRACE"] = os.path.join(self.dir, "trace-" + self.side)
        return e

    def p(self, what):
        return os.path.join(self.dir, what)

    def prepare(self, templates):
        os.makedirs(self.dir)
        if self.start == "behind":
            shutil.copytree(templates["primary"], self.p("p"))
            shutil.copytree(templates["standby"], self.p("s"))
        elif self.start == "new-standby":
            shutil.copytree(templates["primary"], self.p("p"))

    # -- the standby: started, and restarted on its port whenever it died --

    def start_standby(self, crash):
        for attempt in range(50):
            proc, url = systest.start_standby(self.loomship, self.p("s"), self.port,
                                              env=self.env(crash), log=self.p("standby.log"))
            if url:
                self.standby, self.url = proc, url
                self.port = int(url.rsplit(":", 1)[1])
                return True
            died = proc.poll()
            systest.stop(proc, signal.SIGKILL)
            if died == -signal.SIGKILL and crash:
                self.after_standby_kill()
                crash = False
                continue
            time.sleep(0.05 * (attempt + 1))  # the port may still be held
        self.problems.append("the standby would not start (see %s)" % self.p("standby.log"))
        return False

    def after_standby_kill(self):
        """The crash-enabled standby died: check its directory (if it had
        made one), then restart it normally on the same port."""
        self.killed += 1
        self.check_killed_dir(self.p("s"), "standby")

    def check_standby_alive(self):
        """If the standby died, check and restart it; False if it cannot be."""
        if self.standby.poll() is None:
            return True
        rc = self.standby.returncode
        systest.stop(self.standby)
        if rc != -signal.SIGKILL or self.side != "standby" or self.killed:
            self.problems.append("the standby exited with status %s" % rc)
            return False
        self.after_standby_kill()
        if not self.start_standby(False):
            return False
        self.check_acks_received()
        return True

    def check_acks_received(self):
        """In --sync mode every save the primary noted was acknowledged by
        the standby, so it is in its receive log (received >= it)."""
        if not self.sync:
            return
        acks = systest.read_acks(self.p("acks"))
        if not acks:
            return
        st = systest.status(self.url)
        if st is None:
            self.problems.append("no status from the standby")
        elif st["received"]["seq"] < acks[-1][0]:
            self.problems.append("LOST: the primary noted seq %d as acknowledged, the "
                                 "standby has received only seq %d"
                                 % (acks[-1][0], st["received"]["seq"]))

    def primary(self, crash, saves, drain, extra=()):
        env = self.env(crash)
        env["LOOMSHIP_ACK_LOG"] = self.p("acks")
        args = [self.loomship, "primary", "--dir", self.p("p"), "--standby", self.url,
                "--saves", str(saves), "--sync", str(self.sync), "--sync-timeout", "3",
                "--drain-timeout", str(drain)] + systest.SMALL + list(extra)
        with open(self.p("primary.log"), "ab") as log:
            return systest.spawn(args, stdout=subprocess.PIPE, stderr=log, env=env)

    def wait_primary(self, proc, purl=None):
        """Wait for the primary to exit, restarting the standby whenever it
        was killed meanwhile: (exit status, stdout), or (None, ""). With
        the primary's URL, both status documents are saved (status.json)
        should it still be draining after 4 s, for the diagnosis."""
        start = time.monotonic()
        deadline, noted = start + 60, False
        while proc.poll() is None and time.monotonic() < deadline:
            if not self.check_standby_alive():
                break
            if purl and not noted and time.monotonic() - start > 4:
                noted = True
                with open(self.p("status.json"), "w") as f:
                    json.dump({"primary": systest.status(purl),
                               "standby": systest.status(self.url)}, f, indent=1)
            time.sleep(0.01)
        if proc.poll() is None:
            self.problems.append("the primary did not finish its run")
            systest.stop(proc, signal.SIGKILL)
            return None, ""
        out = proc.stdout.read().decode(errors="replace")
        proc.stdout.close()
        return proc.returncode, out

    def run(self, templates):
        self.prepare(templates)
        crash_standby = self.side == "standby"
        if not self.start_standby(crash_standby):
            return self.finish()
        # 1. The crashed run.
        proc = self.primary(self.side == "primary", self.saves, 3)
        rc, out = self.wait_primary(proc)
        if rc is None:
            return self.finish()
        if rc == -signal.SIGKILL and self.side == "primary":
            self.killed += 1
            self.check_killed_primary()
        elif rc != 0:
            self.problems.append("the primary exited with status %s: %s" % (rc, out.strip()))
        if not self.check_standby_alive():
            return self.finish()
        # 2. Restart normally, converge, stop, compare. The save changes
        # more values than the crashed run did: it commits even in the same
        # second (see make_templates). A primary drains to the standbys it
        # can reach: should the standby die during this run (its kill point
        # came late), the primary may stop before the standby is back, so
        # it runs once more.
        for attempt in (1, 2):
            killed_before = self.killed
            proc = self.primary(False, 1, 10, ["--pages", str(2 * self.saves + attempt),
                                               "--listen", "127.0.0.1:0"])
            first = proc.stdout.readline().decode(errors="replace")
            purl = (first.split("listening on ", 1)[1].split()[0]
                    if "listening on " in first else None)
            rc, out = self.wait_primary(proc, purl)
            if rc is None or not self.check_standby_alive():
                return self.finish()
            if self.killed == killed_before:
                break
        last = systest.committed_line(out)
        if rc != 0 or last is None:
            self.problems.append("the restarted primary failed (status %s): %s"
                                 % (rc, out.strip()))
            return self.finish()
        if not self.check_standby_alive():
            return self.finish()
        # The standby may still die here (applying what it received).
        deadline, st, ok = time.monotonic() + 10, None, False
        while not ok and time.monotonic() < deadline:
            if not self.check_standby_alive():
                return self.finish()
            st = systest.status(self.url) or st
            ok = bool(st) and st["applied"]["seq"] == last[0]
            if not ok:
                time.sleep(0.02)
        if not ok:
            self.problems.append("the standby did not apply seq %d within 10 s (status: %s)"
                                 % (last[0], st and st["applied"]))
        elif st["applied"]["checksum"] != last[1]:
            self.problems.append("the standby applied seq %d with checksum %s, the primary "
                                 "committed %s" % (last[0], st["applied"]["checksum"], last[1]))
        rc = systest.stop(self.standby)
        if rc == -signal.SIGKILL and self.side == "standby" and not self.killed:
            self.after_standby_kill()  # killed while stopping: start, stop again
            if self.start_standby(False):
                rc = systest.stop(self.standby)
        if rc != 0:
            self.problems.append("the standby did not stop cleanly on SIGTERM (status %s)" % rc)
        self.problems += systest.compare_nodes(self.loomship, self.p("p"), self.p("s"))
        return self.finish()

    def check_killed_dir(self, d, who):
        """verify passes on a killed node's directory. A kill while the
        directory was being created (no save noted yet) may leave it
        without an image: verify says so, and the next open creates it."""
        if not os.path.exists(d):
            return
        ok, out = systest.verify(self.loomship, d)
        if ok:
            return
        if out.endswith("no image in that directory") and not systest.read_acks(self.p("acks")):
            self.interrupted_creation += 1
            return
        self.problems.append("verify of the killed %s's directory: %s" % (who, out))

    def check_killed_primary(self):
        """Right after the kill: the directory verifies, holds every save the
        primary noted (and, in --sync mode, so does the standby)."""
        self.check_killed_dir(self.p("p"), "primary")
        acks = systest.read_acks(self.p("acks"))
        if acks:
            pos = systest.inspect(self.loomship, self.p("p"))
            seq, checksum = acks[-1]
            if pos is None:
                self.problems.append("inspect of the killed primary's directory failed")
            elif pos["seq"] < seq or (pos["seq"] == seq and pos["checksum"] != checksum):
                self.problems.append("LOST: the primary noted seq %d (%s) as saved; its "
                                     "directory holds seq %d (%s)"
                                     % (seq, checksum, pos["seq"], pos["checksum"]))
        self.check_acks_received()

    def finish(self):
        if self.standby and self.standby.poll() is None:
            systest.stop(self.standby, signal.SIGKILL)
        if not self.problems and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        return self


def count_ops(loomship, root, scenario, side, saves, templates):
    """Operations the side performs over one uncrashed run of the scenario."""
    pt = Point(loomship, root, scenario, side, 0, saves, True)
    pt.prepare(templates)
    env = pt.env("count")
    count_file = pt.p("count")
    if side == "standby":
        proc, pt.url = systest.start_standby(loomship, pt.p("s"), env=env, log=pt.p("standby.log"))
        proc_p = pt.primary(False, saves, 3)
    else:
        proc, pt.url = systest.start_standby(loomship, pt.p("s"), log=pt.p("standby.log"))
        proc_p = pt.primary("count", saves, 3)
    proc_p.communicate(timeout=60)
    systest.stop(proc)
    with open(count_file) as f:
        n = int(f.read())
    shutil.rmtree(pt.dir, ignore_errors=True)
    return n


def make_templates(loomship, root):
    """A primary at seq 6 with its replication log, and a standby that
    stopped at seq 2."""
    t = os.path.join(root, "template")
    os.makedirs(t)
    proc, url = systest.start_standby(loomship, os.path.join(t, "standby"))
    common = ["--dir", os.path.join(t, "primary")] + systest.SMALL
    subprocess.run([loomship, "primary", "--standby", url, "--saves", "2", "--sync", "1"]
                   + common, check=True, capture_output=True)
    systest.stop(proc)
    # The standby is gone: 4 more saves go to the log only. (The workload
    # seeds its generator with the time in seconds: in the same second, the
    # first saves would repeat the first run's changes and commit nothing,
    # unless each changes more values than the first run did in all.)
    # Exit 4: it stopped with a standby that does not hold everything.
    run = subprocess.run([loomship, "primary", "--standby", url, "--saves", "4",
                          "--drain-timeout", "0"] + common + ["--pages", "5"],
                         capture_output=True)
    assert run.returncode == 4, (run.returncode, run.stderr)
    p = systest.inspect(loomship, os.path.join(t, "primary"))
    s = systest.inspect(loomship, os.path.join(t, "standby"))
    assert p["seq"] == 6 and s["seq"] == 2, (p, s)
    # Runs from these copies must not start in the same second as the saves
    # above: they would repeat them and commit nothing.
    time.sleep(1.05 - time.time() % 1)
    return {"primary": os.path.join(t, "primary"), "standby": os.path.join(t, "standby")}


def check_hook(loomship, root):
    """The hook itself: LOOMSHIP_CRASH_OP=fsync with LOOMSHIP_CRASH_AT=2
    kills a standby before its second fsync, and the trace says so."""
    trace = os.path.join(root, "hook-trace")
    env = dict(os.environ, LOOMSHIP_CRASH_OP="fsync", LOOMSHIP_CRASH_AT="2",
               LOOMSHIP_CRASH_TRACE=trace)
    proc, url = systest.start_standby(loomship, os.path.join(root, "hook"), env=env)
    rc = systest.stop(proc, signal.SIGKILL)
    with open(trace) as f:
        lines = f.read().split("\n")
    ok = (url is None and rc == -signal.SIGKILL and len(lines) == 3 and lines[2] == ""
          and lines[0].startswith("1 fsync ") and lines[1].startswith("2 fsync ")
          and lines[1].endswith(" KILLED-BEFORE"))
    print("hook: LOOMSHIP_CRASH_OP=fsync LOOMSHIP_CRASH_AT=2: %s (status %s, trace %r)"
          % ("ok" if ok else "FAILED", rc, lines))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("loomship")
    ap.add_argument("--long", action="store_true",
                    default=os.environ.get("LOOMSHIP_SYSTEM_LONG") == "1")
    ap.add_argument("--jobs", type=int, default=min(4, (os.cpu_count() or 2) + 1))
    ap.add_argument("--only", help="SCENARIO:SIDE:K, one point")
    ap.add_argument("--scenarios", help="comma-separated subset")
    ap.add_argument("--keep", action="store_true", help="keep the directories")
    a = ap.parse_args()
    loomship = os.path.abspath(a.loomship)
    root = tempfile.mkdtemp(prefix="loomship-crash-")
    t0 = time.monotonic()
    if not check_hook(loomship, root):
        return 1
    templates = make_templates(loomship, root)
    rounds, scale = (3, 3) if a.long else (1, 1)
    me = "%s %s" % (sys.argv[0], a.loomship)

    if a.only:
        scen, side, k = a.only.split(":")
        saves = SCENARIOS[scen][1] * scale
        pt = Point(loomship, root, scen, side, int(k), saves, True).run(templates)
        print("%s:%s:%s killed %d time(s); %s" % (scen, side, k, pt.killed,
              "ok" if not pt.problems else "FAILED"))
        for pr in pt.problems:
            print("  " + pr)
        print("directories and logs kept in", pt.dir)
        return 1 if pt.problems else 0

    names = a.scenarios.split(",") if a.scenarios else list(SCENARIOS)
    jobs = []
    for scen in names:
        saves = SCENARIOS[scen][1] * scale
        for side in SIDES:
            # The larger of two counts: a run's count varies a little (how
            # the standby's receives and applies interleave).
            n = max(count_ops(loomship, root, scen, side, saves, templates) for _ in range(2))
            print("%-13s %-8s %4d operations (%d saves)" % (scen, side, n, saves), flush=True)
            # A few past the count: thread interleavings vary a little.
            jobs += [(scen, side, k, saves) for _ in range(rounds) for k in range(1, n + 3)]

    failures, killed, done, interrupted = [], 0, 0, 0
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(lambda j: Point(loomship, root, j[0], j[1], j[2], j[3],
                                               a.keep).run(templates), j) for j in jobs]
        for f in concurrent.futures.as_completed(futures):
            pt = f.result()
            done += 1
            killed += pt.killed
            interrupted += pt.interrupted_creation
            if pt.problems:
                failures.append(pt)
                print("FAIL %s:%s:%d (kept in %s)" % (pt.scenario, pt.side, pt.k, pt.dir))
                for pr in pt.problems:
                    print("  " + pr)
                print("  repeat: %s%s --only %s:%s:%d" % (me, " --long" if a.long else "",
                                                         pt.scenario, pt.side, pt.k), flush=True)
            if done % 200 == 0:
                print("... %d/%d points, %d kills, %d failures, %.0f s"
                      % (done, len(jobs), killed, len(failures), time.monotonic() - t0),
                      flush=True)
    print("crash points: %d runs, %d kills (primary and standby; %d while creating the "
          "directory), %d failed, %.0f s%s"
          % (len(jobs), killed, interrupted, len(failures), time.monotonic() - t0,
             " (long form)" if a.long else ""))
    if not failures:
        shutil.rmtree(root, ignore_errors=True)
    if killed < 1000 and not a.scenarios:
        print("FAIL: fewer than 1000 crash points were reached")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
