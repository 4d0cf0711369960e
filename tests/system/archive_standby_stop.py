"""archive_standby_stop.py: an archiving standby's graceful stop within
--drain-timeout (issue 17, DESIGN section 7: "A graceful stop uploads
everything committed before it exits, within --drain-timeout").

usage: archive_standby_stop.py LOOMSHIP

1. The store hangs (an endpoint that takes connections and requests and
   never answers): `standby --archive s3://... --drain-timeout 1` receives
   20 commits, uploads none, and on SIGTERM exits 0 within a few seconds
   (not after the 30 s request timeout and its retries), with a log line
   naming the seqs not uploaded and that a request had no answer yet.
2. The store is down (nothing listens), --drain-timeout 3: the same, the
   line naming the connection error (the tries failed within the 3 s).
3. A live store (file://) and --archive-interval 600, so that nothing but
   the drain uploads the commits: after SIGTERM the archive holds every
   commit received, and restore newest equals the standby's image
   (epoch, seq, checksum, history) and passes verify.

Runs on 127.0.0.1 only; no S3 store is needed (phases 1 and 2 stand in
for one that fails, phase 3 uses file://)."""
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import systest  # noqa: E402
import swift as swiftlib  # noqa: E402

TABLE = ["--keys", "16", "--arena-pages", "128", "--pages", "2"]
SAVES = 20


def archive_of(url):
    return (systest.status(url) or {}).get("archive") or {}


class Suite(systest.Checks):
    def __init__(self, loomship, root):
        super().__init__(root)
        self.ls = loomship
        self.credentials = self.path("credentials")
        with open(self.credentials, "w") as f:
            f.write("test:tester\ntesting\n")
        os.chmod(self.credentials, 0o600)

    def run(self, *args):
        r = subprocess.run([self.ls] + list(args), capture_output=True, timeout=60)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")

    def fed_standby(self, name, archive_opts):
        """A standby with archive_opts that received SAVES commits from a
        primary that stopped: (process, url, log path, its directory)."""
        sdir, log = self.path(name), self.path(name + ".log")
        proc, url = systest.start_standby(self.ls, sdir, log=log, extra=archive_opts)
        self.check(url is not None, "%s: the standby listens" % name)
        if url is None:
            return proc, None, log, sdir
        pproc, _, _ = systest.start_primary(
            self.ls, ["--dir", self.path(name + "-primary"), "--standby", url,
                      "--saves", str(SAVES), "--rate", "40"] + TABLE, self.log)
        pproc.communicate(timeout=60)
        self.check(pproc.returncode == 0, "%s: the primary exits 0" % name)
        _, got = systest.wait_applied(url, SAVES, 20)
        self.check(got, "%s: the standby applied seq %d" % (name, SAVES))
        return proc, url, log, sdir

    def stop_timed(self, proc):
        t0 = time.monotonic()
        code = systest.stop(proc, signal.SIGTERM, timeout=60)
        return code, time.monotonic() - t0

    def stuck(self, name, endpoint, why, drain, store=None):
        """Phases 1 and 2: the archive cannot upload; SIGTERM with
        --drain-timeout DRAIN ends the standby within a few seconds."""
        opts = ["--archive", "s3://loomship/" + name, "--archive-endpoint", endpoint,
                "--archive-credentials", self.credentials, "--drain-timeout", str(drain)]
        proc, url, log, _ = self.fed_standby(name, opts)
        if url is None:
            return
        arc = archive_of(url)
        self.check(arc.get("uploaded_seq", -1) == 0,
                   "%s: nothing uploaded before the stop: %s" % (name, arc))
        if store is not None:
            self.check(systest.wait_for(lambda: store.accepted > 0, 10),
                       "%s: the archiver's request reached the store (and hangs)" % name)
        code, took = self.stop_timed(proc)
        self.check(code == 0, "%s: SIGTERM: exit 0 (%s)" % (name, code))
        self.check(took < drain + 5, "%s: stopped in %.1f s (--drain-timeout %d; a "
                   "request waits up to 30 s, 5 tries)" % (name, took, drain))
        with open(log, errors="replace") as f:
            lines = [line for line in f if "not uploaded to the archive" in line]
        want = "seqs 1-%d" % SAVES
        self.check(len(lines) == 1 and want in lines[0] and why in lines[0],
                   "%s: one log line names %s and '%s': %s"
                   % (name, want, why, lines))

    def live(self):
        """Phase 3: the drain uploads everything received."""
        arc_dir = self.path("arc")
        os.makedirs(arc_dir)
        url_arc = "file://" + arc_dir
        proc, url, log, sdir = self.fed_standby(
            "live", ["--archive", url_arc, "--archive-interval", "600",
                     "--drain-timeout", "30"])
        if url is None:
            return
        before = archive_of(url).get("uploaded_seq", -1)
        self.check(0 <= before < SAVES, "live: the interval held the uploads back "
                   "before the stop (uploaded_seq %s)" % before)
        code, took = self.stop_timed(proc)
        self.check(code == 0, "live: SIGTERM: exit 0 (%s, %.1f s)" % (code, took))
        with open(log, errors="replace") as f:
            text = f.read()
        self.check("not uploaded" not in text, "live: no line about frames not uploaded")
        mine = systest.inspect(self.ls, sdir) or {}
        out = self.path("restored")
        rc, text = self.run("restore", "--from", url_arc, "--out", out)
        got = systest.inspect(self.ls, out) or {}
        keys = ("epoch", "seq", "checksum", "history")
        self.check(rc == 0 and mine.get("seq") == SAVES and
                   all(got.get(k) == mine.get(k) for k in keys),
                   "live: restore newest is the standby's image at seq %d: %s / %s (%s)"
                   % (SAVES, got, mine, text.strip()[-200:]))
        self.check(systest.verify(self.ls, out)[0], "live: verify passes on the restore")


def main():
    loomship = sys.argv[1]
    root = tempfile.mkdtemp(prefix="loomship-archive-standby-stop-")
    s = Suite(loomship, root)
    with swiftlib.HangingStore() as store:
        s.stuck("hang", store.url, "no answer yet", 1, store)
    # 3 s: time for the 5 tries (1.5 s of backoff) to fail and name why.
    s.stuck("down", "http://127.0.0.1:%d" % swiftlib.free_port(), "connect", 3)
    s.live()
    return systest.report("archive_standby_stop", s.failures, root)


if __name__ == "__main__":
    sys.exit(main())
