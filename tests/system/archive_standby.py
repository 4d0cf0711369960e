"""archive_standby.py: a standby archiving what it receives (issue 17,
DESIGN section 7: `loomship standby --archive`).

usage: archive_standby.py LOOMSHIP

1. Two `loomship standby --archive file:///ARC` and a primary without
   --archive shipping to both: one writes, the other stops archiving
   (last_error names the other writer); the writer's status and metrics
   show the
   archive, which reaches the primary's last seq.
2. restore --seq N from the archive has the primary's checksum at N;
   restore newest is the primary's position; `archive verify` passes.
3. The standby is promoted and stopped; `loomship primary` on its
   directory with the same --archive writes the new epoch: restore newest
   is its position at epoch 2, restore --epoch 1 the standby's last one,
   and `archive list` shows both epochs.
4. Another standby of the same primary is promoted and a primary runs on
   its directory at epoch 2, shipping to the archiving standby: that one
   follows, archives epoch 2 (a new writer at the new epoch), and restore
   newest is the new primary's position.
5. kill -9 of the archiving standby while its primary saves, restarted on
   its port: the archive goes on, `archive verify` passes and restore
   newest is the primary's last position.
6. kill -9 of the archiving standby while the archive directory is away
   (frames received, not uploaded): restarted with it back, the standby
   uploads them from its receive log (the archive's hold on it, DESIGN
   section 7): the archive has no gap, and a restore to a seq inside the
   outage is the primary's image there.
7. The same with SIGTERM and --drain-timeout 1 instead of kill -9: the
   drain does not finish, the hold stays (the applies before the exit trim
   nothing the archive lacks: that window is narrow here, the unit test
   replicate_archive test_hold_after_stop pins it), and the restart
   uploads the rest: no gap.
8. Restarted after a kill -9 with its archiver's first three starts
   failing (a test build's LOOMSHIP_FAIL_ARCHIVER_STARTS=3, EAGAIN): the
   frames received meanwhile stay held in the receive log and the
   archiver that starts uploads them: no gap, no second base.
9. The same with every start failing and --archive-max-backlog-mb 1:
   past 1 MiB held, the hold is lifted (one line says so) and the receive
   log is trimmed; restarted without failures, the archive records one
   gap and takes a second base."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

TABLE = ["--keys", "16", "--arena-pages", "128", "--pages", "2"]
# Phases 6 and 7: commits of up to 32 pages (a key a page; a few KiB
# compressed) into a receive log of 16 KiB segments (a test build's
# LOOMSHIP_RECEIVE_LOG_SEGMENT_BYTES), so that the applier's trims would
# drop the frames received while the archive is away without its hold.
BIG = ["--keys", "1024", "--arena-pages", "2048", "--pages", "32"]
SMALL_SEGMENTS = dict(os.environ, LOOMSHIP_RECEIVE_LOG_SEGMENT_BYTES="16384")


def run(loomship, *args):
    r = subprocess.run([loomship] + list(args), capture_output=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def promote(url):
    req = urllib.request.Request(url + "/v1/promote", method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def requests(url):
    """loomship_archive_requests_total by kind, from the metrics."""
    out = {}
    for line in systest.metrics(url).splitlines():
        if line.startswith("loomship_archive_requests_total{"):
            out[line.split('"')[1]] = int(line.split()[-1])
    return out


def applied(url):
    return ((systest.status(url) or {}).get("applied") or {}).get("seq", 0)


def uploaded(url):
    return ((systest.status(url) or {}).get("archive") or {}).get("uploaded_seq", -1)


class Suite(systest.Checks):
    def __init__(self, loomship, root):
        super().__init__(root)
        self.ls = loomship
        self.arc = self.path("arc")
        os.makedirs(self.arc)

    def restore(self, name, *extra):
        out = self.path(name)
        rc, text = run(self.ls, "restore", "--from", "file://" + self.arc, "--out", out,
                       *extra)
        return rc, text, systest.inspect(self.ls, out) or {}

    # 1 ------------------------------------------------------------------
    def archiving_standby(self, pdir, sdir):
        """Two standbys of one primary on one archive: one writes, the
        other stops archiving (one writer per archive). The writer's
        process, URL and directory."""
        extra = ["--archive", "file://" + self.arc]
        nodes = [systest.start_standby(self.ls, d, log=self.log, extra=extra)
                 for d in (sdir, sdir + "-b")]
        self.check(all(url for _, url in nodes), "the archiving standbys listen")
        proc, purl, _ = systest.start_primary(
            self.ls, ["--dir", pdir, "--saves", "60", "--rate", "40"] + TABLE +
            [x for _, url in nodes for x in ("--standby", url)], self.log)
        proc.communicate(timeout=60)
        self.check(proc.returncode == 0, "the primary exits 0 (%s)" % proc.returncode)

        def archive_of(url):
            return (systest.status(url) or {}).get("archive") or {}
        stopped = systest.wait_for(
            lambda: [i for i, (_, url) in enumerate(nodes) if archive_of(url).get("stopped")],
            20) or []
        self.check(len(stopped) == 1 and "another node" in
                   (archive_of(nodes[stopped[0]][1]).get("last_error") or ""),
                   "one of the two stops archiving, naming the other writer: %s"
                   % [archive_of(url) for _, url in nodes])
        w = 1 if stopped == [0] else 0
        systest.stop(nodes[1 - w][0])
        sproc, surl = nodes[w]
        sdir = sdir if w == 0 else sdir + "-b"
        got = systest.wait_for(lambda: uploaded(surl) == 60, 20)
        st = systest.status(surl) or {}
        self.check(got, "the standby's archive reaches seq 60: %s" % st.get("archive"))
        self.check((st.get("archive") or {}).get("url") == "file://" + self.arc and
                   st.get("role") == "standby", "the standby's status shows archive.url")
        self.check("loomship_archive_uploaded_seq 60" in systest.metrics(surl),
                   "the standby's metrics show loomship_archive_uploaded_seq 60")
        before = requests(surl)
        time.sleep(3)  # checks that nothing happens: three idle intervals
        after = requests(surl)
        self.check(before and before == after, "idle: no request to the store in 3 s "
                   "(%s then %s)" % (before, after))
        return sproc, surl, sdir

    # 2 ------------------------------------------------------------------
    def restores(self, pdir):
        # The archive starts at a base at the position the standby had applied
        # when its first frame came (seq 1 to a few): 30 is past it.
        rc, text, got = self.restore("seq30", "--seq", "30")
        want = run(self.ls, "inspect", pdir, "--json", "--at", "30")[1]
        self.check(rc == 0 and got.get("seq") == 30 and got.get("checksum", "?") in want,
                   "restore --seq 30 has the primary's checksum at 30 (%s / %s)"
                   % (got.get("checksum"), want.strip()))
        rc, text, got = self.restore("newest")
        p = systest.inspect(self.ls, pdir) or {}
        keys = ("epoch", "seq", "checksum", "history")
        self.check(rc == 0 and all(got.get(k) == p.get(k) for k in keys),
                   "restore newest is the primary's position: %s" % text.strip())
        self.check(systest.verify(self.ls, self.path("newest"))[0],
                   "verify passes on the restore")
        rc, text = run(self.ls, "archive", "verify", "file://" + self.arc)
        self.check(rc == 0, "archive verify passes: %s" % text.strip()[-200:])

    # 3 ------------------------------------------------------------------
    def promoted(self, sproc, surl, sdir):
        self.check(promote(surl) == 200, "the archiving standby is promoted")
        self.check(systest.stop(sproc) == 0, "the promoted standby stops with 0")
        proc, _, _ = systest.start_primary(
            self.ls, ["--dir", sdir, "--archive", "file://" + self.arc, "--saves", "20",
                      "--rate", "40"] + TABLE, self.log)
        out, _ = proc.communicate(timeout=60)
        self.check(proc.returncode == 0, "the new primary exits 0 (%s)" % proc.returncode)
        mine = systest.inspect(self.ls, sdir) or {}
        rc, text, got = self.restore("epoch2")
        self.check(rc == 0 and mine.get("epoch") == 2 and got.get("epoch") == 2 and
                   got.get("seq") == mine.get("seq") and
                   got.get("checksum") == mine.get("checksum"),
                   "restore newest follows epoch 2, the new primary's position (%s / %s)"
                   % (got, mine))
        rc, text, got = self.restore("epoch1", "--epoch", "1")
        self.check(rc == 0 and got.get("epoch") == 1 and got.get("seq") == 60,
                   "restore --epoch 1 gives the standby's last seq 60: %s" % text.strip())
        rc, text = run(self.ls, "archive", "list", "file://" + self.arc)
        epochs = sorted({int(w[2]) for w in (line.split() for line in text.splitlines())
                         if len(w) > 2 and w[1] == "epoch"})
        self.check(rc == 0 and epochs == [1, 2], "archive list shows epochs 1 and 2: %s"
                   % epochs)


    # 4 ------------------------------------------------------------------
    def follows_new_epoch(self):
        """The archiving standby follows a new primary at epoch 2 (another
        standby promoted): it archives epoch 2 from there."""
        self.arc = self.path("arc4")
        os.makedirs(self.arc)
        pdir, sdir, tdir = self.path("p4"), self.path("s4"), self.path("t4")
        sproc, surl = systest.start_standby(
            self.ls, sdir, log=self.log, extra=["--archive", "file://" + self.arc])
        tproc, turl = systest.start_standby(self.ls, tdir, log=self.log)
        proc, _, _ = systest.start_primary(
            self.ls, ["--dir", pdir, "--standby", surl, "--standby", turl, "--saves", "30",
                      "--rate", "40"] + TABLE, self.log)
        proc.communicate(timeout=60)
        self.check(proc.returncode == 0 and systest.wait_for(lambda: uploaded(surl) == 30, 20),
                   "phase 4: the standby archives epoch 1 up to seq 30")
        self.check(promote(turl) == 200 and systest.stop(tproc) == 0,
                   "phase 4: the other standby is promoted and stopped")
        proc, _, _ = systest.start_primary(
            self.ls, ["--dir", tdir, "--standby", surl, "--saves", "20", "--rate", "40"]
            + TABLE, self.log)
        proc.communicate(timeout=60)
        self.check(proc.returncode == 0, "phase 4: the new primary at epoch 2 exits 0")
        st = systest.wait_for(lambda: ((systest.status(surl) or {}).get("archive") or {})
                              .get("uploaded_seq") == 50 and systest.status(surl), 20)
        self.check(st and st.get("epoch") == 2, "phase 4: the standby archives epoch 2 up "
                   "to seq 50: %s" % (st or {}).get("archive"))
        self.check(systest.stop(sproc) == 0, "phase 4: the standby stops with 0")
        rc, text, got = self.restore("p4-newest")
        mine = systest.inspect(self.ls, tdir) or {}
        self.check(rc == 0 and got.get("epoch") == 2 and got.get("seq") == 50 and
                   got.get("checksum") == mine.get("checksum"),
                   "phase 4: restore newest is the new primary's position: %s" % text.strip())
        rc, epochs = 0, None
        rc, text = run(self.ls, "archive", "list", "file://" + self.arc)
        epochs = sorted({int(w[2]) for w in (line.split() for line in text.splitlines())
                         if len(w) > 2 and w[1] == "epoch"})
        self.check(epochs == [1, 2], "phase 4: archive list shows epochs 1 and 2: %s" % epochs)


    # 5 ------------------------------------------------------------------
    def killed_and_restarted(self):
        """kill -9 of the archiving standby while its primary saves, then a
        restart on the same port: the archive goes on and ends at the
        primary's position."""
        self.arc = self.path("arc5")
        os.makedirs(self.arc)
        pdir, sdir = self.path("p5"), self.path("s5")
        extra = ["--archive", "file://" + self.arc]
        sproc, surl = systest.start_standby(self.ls, sdir, log=self.log, extra=extra)
        port = int(surl.rsplit(":", 1)[1])
        proc, _, _ = systest.start_primary(
            self.ls, ["--dir", pdir, "--standby", surl, "--saves", "0", "--rate", "40"]
            + TABLE, self.log)
        self.check(systest.wait_for(lambda: uploaded(surl) >= 20, 20),
                   "phase 5: the standby archives")
        systest.stop(sproc, signal.SIGKILL)
        sproc, surl2 = systest.start_standby(self.ls, sdir, port=port, log=self.log,
                                             extra=extra)
        self.check(surl2 == surl, "phase 5: restarted on its port")
        far = uploaded(surl) + 20 if surl2 else 0
        self.check(surl2 and systest.wait_for(lambda: uploaded(surl) >= far, 20),
                   "phase 5: the restarted standby archives on: %s"
                   % ((systest.status(surl) or {}).get("archive")))
        self.check(systest.stop(proc) == 0, "phase 5: the primary stops with 0")
        mine = systest.inspect(self.ls, pdir) or {}
        self.check(systest.wait_for(lambda: uploaded(surl) == mine.get("seq"), 20),
                   "phase 5: the archive reaches the primary's last seq %s" % mine.get("seq"))
        self.check(systest.stop(sproc) == 0, "phase 5: the standby stops with 0")
        rc, text = run(self.ls, "archive", "verify", "file://" + self.arc, "--scratch",
                       self.root)
        self.check(rc == 0, "phase 5: archive verify passes: %s" % text.strip()[-200:])
        rc, text, got = self.restore("p5-newest")
        self.check(rc == 0 and got.get("seq") == mine.get("seq") and
                   got.get("checksum") == mine.get("checksum"),
                   "phase 5: restore newest is the primary's position: %s" % text.strip())

    # 6-9 ----------------------------------------------------------------
    def archiving_pair(self, phase, extra, log):
        """A standby archiving to a new archive (its options: extra) with a
        receive log of small segments, fed by a primary at 40 saves/s of
        BIG, once it archived 10 commits: (primary, standby, url, port,
        archive dir, primary dir, standby dir)."""
        arc, pdir, sdir = (self.path("%s%d" % (x, phase)) for x in ("arc", "p", "s"))
        os.makedirs(arc)
        extra = ["--archive", "file://" + arc] + extra
        sproc, surl = systest.start_standby(self.ls, sdir, log=log, extra=extra,
                                            env=SMALL_SEGMENTS)
        port = int(surl.rsplit(":", 1)[1])
        proc, _, _ = systest.start_primary(
            self.ls, ["--dir", pdir, "--standby", surl, "--saves", "0", "--rate", "40"]
            + BIG, self.log)
        self.check(systest.wait_for(lambda: uploaded(surl) >= 10, 20),
                   "phase %d: the standby archives" % phase)
        return proc, sproc, surl, port, arc, pdir, sdir

    def killed_while_away(self, phase=6, sig=signal.SIGKILL):
        """kill -9 (or a stop whose drain cannot finish) of the archiving
        standby while its archive is away: the frames it received meanwhile
        are held in its receive log and uploaded after the restart, no
        gap."""
        p = "phase %d: " % phase
        proc, sproc, surl, port, arc, pdir, sdir = self.archiving_pair(
            phase, ["--drain-timeout", "1"], self.log)
        extra = ["--archive", "file://" + arc, "--drain-timeout", "1"]
        os.rename(arc, arc + ".away")
        seq0 = applied(surl)
        moved = systest.wait_for(lambda: applied(surl) > seq0 + 60, 20)
        code = systest.stop(sproc, sig)
        os.rename(arc + ".away", arc)
        stopped_at = (systest.inspect(self.ls, sdir) or {}).get("seq", 0)
        self.check(moved and stopped_at > seq0 + 60 and code in (0, -signal.SIGKILL),
                   p + "60 commits applied while the archive was away (%s to %s; "
                   "stopped with %s)" % (seq0, stopped_at, code))
        segs = len(os.listdir(os.path.join(sdir, "replog")))
        sproc, surl2 = systest.start_standby(self.ls, sdir, port=port, log=self.log,
                                             extra=extra, env=SMALL_SEGMENTS)
        self.check(surl2 == surl and segs > 4,
                   p + "restarted on its port (its receive log: %d files)" % segs)
        caught = surl2 and systest.wait_for(lambda: uploaded(surl) >= stopped_at + 20, 20)
        self.check(caught, p + "the restarted standby archives past seq %d: %s"
                   % (stopped_at, (systest.status(surl) or {}).get("archive")))
        self.check(systest.stop(proc) == 0, p + "the primary stops with 0")
        mine = systest.inspect(self.ls, pdir) or {}
        self.check(systest.wait_for(lambda: uploaded(surl) == mine.get("seq"), 20),
                   p + "the archive reaches the primary's last seq %s" % mine.get("seq"))
        self.check(systest.stop(sproc) == 0, p + "the standby stops with 0")
        rc, text = run(self.ls, "archive", "list", "--from", "file://" + arc, "--json")
        objs = json.loads(text).get("objects", []) if rc == 0 else []
        gaps = [(o["first_seq"], o["last_seq"]) for o in objs if o.get("kind") == "gap"]
        self.check(rc == 0 and objs and not gaps,
                   p + "the archive has no gap (gaps %s; %s)" % (gaps, text[-200:]))
        mid = (seq0 + stopped_at) // 2
        rc, text = run(self.ls, "restore", "--from", "file://" + arc, "--out",
                       self.path("p%d-mid" % phase), "--seq", str(mid))
        got = systest.inspect(self.ls, self.path("p%d-mid" % phase)) or {}
        at = run(self.ls, "inspect", pdir, "--json", "--at", str(mid))[1]
        self.check(rc == 0 and got.get("seq") == mid and got.get("checksum", "?") in at,
                   p + "a restore to seq %d, inside the outage, is the primary's image "
                   "there (%s)" % (mid, text.strip()[-160:]))

    # 8, 9 ---------------------------------------------------------------
    def archiving_then_killed(self, phase, failing_starts, extra_after=()):
        """An archiving standby fed by a primary (40 saves/s of BIG), killed
        with -9 once it archived, restarted on its port with its archiver's
        first failing_starts starts failing. (primary, standby, url,
        archive dir, primary dir, standby dir, the standby's log)."""
        log = self.path("log%d" % phase)
        proc, sproc, surl, port, arc, pdir, sdir = self.archiving_pair(phase, [], log)
        systest.stop(sproc, signal.SIGKILL)
        extra = ["--archive", "file://" + arc]
        failing = dict(SMALL_SEGMENTS, LOOMSHIP_FAIL_ARCHIVER_STARTS=str(failing_starts))
        sproc, surl2 = systest.start_standby(self.ls, sdir, port=port, log=log,
                                             extra=extra + list(extra_after), env=failing)
        self.check(surl2 == surl, "phase %d: restarted on its port" % phase)
        return proc, sproc, surl, arc, pdir, sdir, log

    def gaps_and_bases(self, arc):
        rc, text = run(self.ls, "archive", "list", "--from", "file://" + arc, "--json")
        objs = json.loads(text).get("objects", []) if rc == 0 else []
        return (rc == 0 and bool(objs),
                [(o["first_seq"], o["last_seq"]) for o in objs if o.get("kind") == "gap"],
                [o["last_seq"] for o in objs if o.get("kind") == "base"])

    def failed_starts(self):
        """Starts that fail keep the receive log's hold: the archiver that
        starts a few seconds later uploads every frame received meanwhile."""
        p = "phase 8: "
        proc, sproc, surl, arc, pdir, sdir, log = self.archiving_then_killed(8, 3)

        def said(what):
            with open(log, errors="replace") as f:
                return what in f.read()
        seq0 = applied(surl)
        self.check(systest.wait_for(lambda: said("retried each second"), 10),
                   p + "a failed start is said in the log")
        moved = systest.wait_for(lambda: applied(surl) > seq0 + 60, 20)
        self.check(moved, p + "60 commits applied meanwhile (from seq %d)" % seq0)
        self.check(systest.stop(proc) == 0, p + "the primary stops with 0")
        mine = systest.inspect(self.ls, pdir) or {}
        self.check(systest.wait_for(lambda: uploaded(surl) == mine.get("seq"), 30),
                   p + "the archive reaches the primary's last seq %s: %s"
                   % (mine.get("seq"), (systest.status(surl) or {}).get("archive")))
        self.check(systest.stop(sproc) == 0, p + "the standby stops with 0")
        listed, gaps, bases = self.gaps_and_bases(arc)
        self.check(listed and not gaps and len(bases) == 1,
                   p + "the archive has no gap and one base (gaps %s, bases %s)"
                   % (gaps, bases))
        self.check(not said("no longer keeps frames"), p + "the hold was never lifted")

    def failing_past_backlog(self):
        """Starts that keep failing hold the receive log only up to
        --archive-max-backlog-mb: then the hold is lifted (said once) and
        the log trimmed; the archiver that starts later records the gap
        and takes a base."""
        p = "phase 9: "
        proc, sproc, surl, arc, pdir, sdir, log = self.archiving_then_killed(
            9, 1000000, ["--archive-max-backlog-mb", "1"])
        replog = os.path.join(sdir, "replog")

        def said(what):
            with open(log, errors="replace") as f:
                return what in f.read()

        def log_bytes():
            total = 0
            for f in os.listdir(replog):
                try:
                    total += os.path.getsize(os.path.join(replog, f))
                except FileNotFoundError:  # trimmed since the listing
                    pass
            return total
        self.check(systest.wait_for(lambda: said("no longer keeps frames"), 40),
                   p + "past 1 MiB held, the hold is lifted and said")
        self.check(systest.wait_for(lambda: log_bytes() < 512 << 10, 20),
                   p + "the receive log is trimmed (%d bytes)" % log_bytes())
        systest.stop(sproc, signal.SIGKILL)
        sproc, _ = systest.start_standby(
            self.ls, sdir, port=int(surl.rsplit(":", 1)[1]), log=log,
            extra=["--archive", "file://" + arc], env=SMALL_SEGMENTS)
        self.check(systest.stop(proc) == 0, p + "the primary stops with 0")
        mine = systest.inspect(self.ls, pdir) or {}
        self.check(systest.wait_for(lambda: uploaded(surl) == mine.get("seq"), 30),
                   p + "restarted without failing starts, the archive reaches the "
                   "primary's last seq %s" % mine.get("seq"))
        self.check(systest.stop(sproc) == 0, p + "the standby stops with 0")
        listed, gaps, bases = self.gaps_and_bases(arc)
        self.check(listed and len(gaps) == 1 and len(bases) == 2,
                   p + "the archive records one gap and a second base (gaps %s, "
                   "bases %s)" % (gaps, bases))


def main():
    loomship = sys.argv[1]
    root = tempfile.mkdtemp(prefix="loomship-archive-standby-")
    s = Suite(loomship, root)
    pdir, sdir = s.path("primary"), s.path("standby")
    sproc, surl, sdir = s.archiving_standby(pdir, sdir)
    s.restores(pdir)
    s.promoted(sproc, surl, sdir)
    s.follows_new_epoch()
    s.killed_and_restarted()
    s.killed_while_away()
    s.killed_while_away(7, signal.SIGTERM)
    s.failed_starts()
    s.failing_past_backlog()
    return systest.report("archive_standby", s.failures, root)


if __name__ == "__main__":
    sys.exit(main())
