"""archive_crash.py: kill -9 of the archiving primary right before each
request of an upload (issue 17: crash of the archiving node at every step),
through the fault hook of the archive's object store
(LOOMSHIP_CRASH_STORE_AT=K, cli/faultio.h).

usage: archive_crash.py LOOMSHIP [--all]

A counting run (LOOMSHIP_CRASH_STORE_TRACE) lists the requests a primary
makes while archiving 50 saves with a base every second and one base
kept: start-up (id, epoch, writer, head, listing), bases, segments, gaps,
heads, retention deletes. Then, for the first request of each kind of
step (and the first three heads and segments; every request of the
counting run with --all), on fresh directories: the primary runs with
LOOMSHIP_CRASH_STORE_MATCH=STEP LOOMSHIP_CRASH_STORE_AT=N and dies right
before the N-th request of that step; then

  1. what the archive claims holds: when it has a head, `archive verify`
     passes and restore newest is at the head's seq with the primary's
     checksum at that seq (`inspect --at`);
  2. it resumes: the primary started again on its directory saves 10 more
     and exits 0 (its graceful stop uploads everything), `archive verify`
     passes and restore newest is the primary's position.

Every kind of step must have been hit: segment, head, base, delete.
The kill lands on the n-th request of one kind of step
(LOOMSHIP_CRASH_STORE_MATCH), so that timing does not move it."""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

TABLE = ["--keys", "16", "--arena-pages", "128", "--pages", "2"]


def run(loomship, *args):
    r = subprocess.run([loomship] + list(args), capture_output=True, timeout=120)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def pattern(op, key):
    """The fnmatch pattern of a request's step (LOOMSHIP_CRASH_STORE_MATCH):
    "put e/*/s/*" a segment, "put e/*/head" a head, "delete e/*/b/*"..."""
    parts = key.split("/")
    if key == "id":
        return "%s id" % op
    if parts[0] == "epochs":
        return "%s epochs/*" % op
    if op == "list":
        return "list *"
    if len(parts) == 3 and parts[0] == "e":
        return "%s e/*/%s" % (op, parts[2])
    if len(parts) > 3 and parts[0] == "e":
        return "%s e/*/%s/*" % (op, parts[2])
    return "%s %s" % (op, key)


def read_trace(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                w = line.split()
                if len(w) >= 3:
                    out.append((int(w[0]), pattern(w[1], w[2]), "KILLED-BEFORE" in w))
    except FileNotFoundError:
        pass
    return out


class Suite(systest.Checks):
    def __init__(self, loomship, root):
        super().__init__(root)
        self.ls = loomship
        self.seen = []

    def primary(self, pdir, arc, saves, env_extra):
        env = dict(os.environ, **env_extra)
        args = [self.ls, "primary", "--dir", pdir, "--archive", "file://" + arc,
                "--archive-base-interval", "1", "--archive-keep-bases", "1",
                "--saves", str(saves), "--rate", "20"] + TABLE
        with open(self.log, "ab") as log:
            return subprocess.run(args, stdout=subprocess.DEVNULL, stderr=log, env=env,
                                  timeout=120).returncode

    def counting_run(self):
        pdir, arc, trace = self.path("count"), self.path("count-arc"), self.path("trace")
        os.makedirs(arc)
        rc = self.primary(pdir, arc, 50, {"LOOMSHIP_CRASH_STORE_TRACE": trace})
        self.check(rc == 0, "the counting run exits 0 (%s)" % rc)
        return read_trace(trace)

    def claims_hold(self, pdir, arc, k):
        """1: the archive restores to the seq its head claims."""
        if not os.path.exists(os.path.join(arc, "e", "%016x" % 1, "head")):
            return  # it claims nothing yet
        rc, text = run(self.ls, "archive", "verify", "file://" + arc, "--scratch", self.root)
        self.check(rc == 0, "%s: archive verify after the kill: %s" % (k, text.strip()[-200:]))
        out = self.path("restore")
        rc, text = run(self.ls, "restore", "--from", "file://" + arc, "--out", out)
        got = systest.inspect(self.ls, out) or {}
        at = run(self.ls, "inspect", pdir, "--json", "--at", str(got.get("seq", 0)))[1]
        self.check(rc == 0 and got.get("checksum", "?") in at,
                   "%s: restore newest (seq %s) is the primary's image there: %s"
                   % (k, got.get("seq"), text.strip()[-160:]))
        shutil.rmtree(out, ignore_errors=True)

    def resumes(self, pdir, arc, k):
        """2: restarted, it archives on; a graceful stop uploads all."""
        rc = self.primary(pdir, arc, 10, {})
        self.check(rc == 0, "%s: the restarted primary exits 0 (%s)" % (k, rc))
        rc, text = run(self.ls, "archive", "verify", "file://" + arc, "--scratch", self.root)
        self.check(rc == 0, "%s: archive verify after the restart: %s"
                   % (k, text.strip()[-200:]))
        out = self.path("resumed")
        rc, text = run(self.ls, "restore", "--from", "file://" + arc, "--out", out)
        got, mine = systest.inspect(self.ls, out) or {}, systest.inspect(self.ls, pdir) or {}
        self.check(rc == 0 and all(got.get(x) == mine.get(x) and x in got
                                   for x in ("epoch", "seq", "checksum")),
                   "%s: restore newest after the restart is the primary's position "
                   "(%s / %s)" % (k, got.get("seq"), mine.get("seq")))
        shutil.rmtree(out, ignore_errors=True)

    def crash_at(self, pat, n):
        """Killed right before the n-th request matching pat."""
        k = "%s#%d" % (pat, n)
        tag = "%d-%d" % (len(self.seen), n)
        self.seen.append(k)
        pdir, arc, trace = (self.path("p-" + tag), self.path("arc-" + tag),
                            self.path("trace-" + tag))
        os.makedirs(arc)
        rc = self.primary(pdir, arc, 50, {"LOOMSHIP_CRASH_STORE_AT": str(n),
                                          "LOOMSHIP_CRASH_STORE_MATCH": pat,
                                          "LOOMSHIP_CRASH_STORE_TRACE": trace})
        killed = [t[1] for t in read_trace(trace) if t[2]]
        if rc == 0 and not killed:  # this run made fewer of them
            print("note: %s not reached (the run made fewer)" % k)
            return None
        self.check(rc == -9 and killed == [pat], "%s: killed right before it (%s)"
                   % (k, killed[0] if killed else rc))
        self.claims_hold(pdir, arc, k)
        self.resumes(pdir, arc, k)
        shutil.rmtree(pdir, ignore_errors=True)
        shutil.rmtree(arc, ignore_errors=True)
        return pat if killed == [pat] else None


def main():
    loomship = sys.argv[1]
    every = "--all" in sys.argv[2:]
    root = tempfile.mkdtemp(prefix="loomship-archive-crash-")
    s = Suite(loomship, root)
    trace = s.counting_run()
    counts, points = {}, []
    for _, pat, _ in trace:
        counts[pat] = counts.get(pat, 0) + 1
        # Plain: the first request of each step, and the heads and segments
        # of the first cycles (a head after a segment, after a base).
        if every or counts[pat] == 1 or (pat in ("put e/*/head", "put e/*/s/*") and
                                         counts[pat] <= 3):
            points.append((pat, counts[pat]))
    print("%d requests in the counting run; crash points %s" % (len(trace), points))
    hit = {s.crash_at(pat, n) for pat, n in points}
    for need in ("put e/*/s/*", "put e/*/head", "put e/*/b/*", "delete e/*/b/*",
                 "delete e/*/s/*"):
        s.check(need in hit, "a kill right before a '%s' request was tested" % need)
    return systest.report("archive_crash", s.failures, root)


if __name__ == "__main__":
    sys.exit(main())
