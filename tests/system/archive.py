"""archive.py: a primary archiving to file:///DIR, then restores from the
archive (issue 17, DESIGN section 7).

usage: archive.py LOOMSHIP [--seed S]

1. `loomship primary --archive file:///ARC` saves and stops at the end of
   --saves (a graceful stop uploads everything); status shows "archive".
2. restore newest, --seq N and --time T: each `loomship verify`s, and its
   position equals the primary's at that seq (inspect, inspect --at); a
   --time restore is at the highest seq committed at or before T.
3. `loomship archive list` and `archive verify` pass.
4. Copies of the archive with a tampered, a truncated and a duplicated
   object: restore refuses each, naming the object, and writes nothing.
5. With --archive-key-file: restore needs the key; an unusable key file
   stops the primary before anything is uploaded.
6. The archive directory taken away while the primary saves: saves go on,
   status shows the error and the lag; put back, the archive catches up
   and restores the newest position.
8. `standby --bootstrap ARCHIVE` on an empty directory starts at the
   archive's newest position; the primary, restarted with it as --standby,
   sends the tail as frames and the two end identical.
7. kill -9 of the archiving primary at random moments (mid-upload, seeded),
   restarted on the same directory each time: after each kill the archive
   restores to the seq its head claims, with the primary's checksum there.
9. kill -9 while the archive directory is away (frames committed, not
   uploaded): restarted with it back, the primary uploads them from its
   replication log (the archive's hold on it, DESIGN section 7): no gap
   before the killed primary's last commit (whose frame the kill may take
   before its log append), and a restore to a seq inside the outage is the
   primary's image there.
10. An image over 64 MiB: its base goes through a scratch file in the
   primary's directory, restores to the primary's position and leaves no
   file behind."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"
KEY2 = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n"
TABLE = ["--keys", "16", "--arena-pages", "128", "--pages", "2"]


def run(loomship, *args):
    r = subprocess.run([loomship] + list(args), capture_output=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def restore(loomship, arc, out, *extra):
    return run(loomship, "restore", "--from", "file://" + arc, "--out", out, *extra)


def same_position(a, b):
    keys = ("epoch", "seq", "checksum", "pages", "history")
    return a is not None and b is not None and all(a[k] == b[k] for k in keys)


def objects(arc, sub):
    d = os.path.join(arc, "e", "%016x" % 1, sub)
    return sorted(os.path.join(d, n) for n in os.listdir(d)) if os.path.isdir(d) else []


class Suite(systest.Checks):
    def __init__(self, loomship, root):
        super().__init__(root)
        self.loomship = loomship

    # 1 ------------------------------------------------------------------
    def archive_run(self, pdir, arc, extra=(), saves=60):
        os.makedirs(arc, exist_ok=True)
        args = ["--dir", pdir, "--archive", "file://" + arc, "--saves", str(saves),
                "--rate", "40"] + TABLE + list(extra)
        proc, url, _ = systest.start_primary(self.loomship, args, self.log)
        self.check(url is not None, "the primary listens")
        st = systest.wait_for(lambda: (systest.status(url) or {}).get("archive") and
                              systest.status(url), 10) if url else None
        self.check(st and st["archive"]["url"] == "file://" + arc,
                   "status shows archive.url: %s" % (st or {}).get("archive"))
        # A time between commits: the applied seq passed 20.
        systest.wait_for(lambda: (systest.status(url) or {}).get("applied", {})
                         .get("seq", 0) >= min(20, saves // 2), 20)
        t = time.time()
        out, _ = proc.communicate(timeout=60)
        self.check(proc.returncode == 0, "the primary exits 0 after --saves (%s)"
                   % proc.returncode)
        committed = systest.committed_line(out.decode(errors="replace"))
        self.check(committed and committed[0] == saves, "committed seq %d: %s"
                   % (saves, committed))
        return t

    # 2 ------------------------------------------------------------------
    def restores(self, pdir, arc, t):
        ls = self.loomship
        out = self.path("newest")
        rc, text = restore(ls, arc, out)
        self.check(rc == 0 and "seq 60" in text, "restore newest: %s" % text.strip())
        self.check(same_position(systest.inspect(ls, out), systest.inspect(ls, pdir)),
                   "the newest restore is the primary's position")
        self.check(systest.verify(ls, out)[0], "verify passes on the newest restore")
        out = self.path("seq17")
        rc, text = restore(ls, arc, out, "--seq", "17")
        want = run(ls, "inspect", pdir, "--json", "--at", "17")[1]
        got = systest.inspect(ls, out) or {}
        self.check(rc == 0 and got.get("seq") == 17 and got.get("checksum", "?") in want,
                   "restore --seq 17 has the primary's checksum at 17 (%s / %s)"
                   % (got.get("checksum"), want.strip()))
        self.check(systest.verify(ls, out)[0], "verify passes on the --seq restore")
        out = self.path("time")
        rc, text = restore(ls, arc, out, "--time", "%.6f" % t)
        got = systest.inspect(ls, out) or {}
        s = got.get("seq", 0)
        ok = rc == 0 and got.get("commit_time_ns", 1 << 62) <= int(t * 1e9)
        rc2, _ = restore(ls, arc, self.path("time_next"), "--seq", str(s + 1))
        nxt = systest.inspect(ls, self.path("time_next")) or {}
        ok = ok and rc2 == 0 and nxt.get("commit_time_ns", 0) > int(t * 1e9)
        self.check(ok, "restore --time is the last seq committed by T (seq %s)" % s)
        rc, text = restore(ls, arc, self.path("far"), "--seq", "1000")
        self.check(rc == 1 and "REPLICATE_EARCHIVE_NOPOS" in text and
                   not os.path.exists(self.path("far")),
                   "restore --seq past the archive is refused: %s" % text.strip())

    # 3 ------------------------------------------------------------------
    def list_and_verify(self, arc):
        rc, text = run(self.loomship, "archive", "list", "file://" + arc)
        self.check(rc == 0 and "base" in text and "segment" in text,
                   "archive list shows bases and segments")
        rc, text = run(self.loomship, "archive", "verify", "file://" + arc,
                       "--scratch", self.root)
        self.check(rc == 0 and "matches" in text, "archive verify: %s" % text.strip())
        # --json (DESIGN section 5): the same, as one document each.
        rc, text = run(self.loomship, "archive", "list", "--from", "file://" + arc, "--json")
        try:
            objs = json.loads(text)["objects"]
        except (ValueError, KeyError):
            objs = []
        kinds = {o.get("kind") for o in objs}
        self.check(rc == 0 and {"base", "segment"} <= kinds and
                   all(o["first_seq"] <= o["last_seq"] and o["epoch"] >= 1 for o in objs),
                   "archive list --json: %d objects, kinds %s" % (len(objs), sorted(kinds)))
        rc, text = run(self.loomship, "archive", "verify", "file://" + arc,
                       "--scratch", self.root, "--json")
        try:
            doc = json.loads(text)
        except ValueError:
            doc = {}
        self.check(rc == 0 and doc.get("ok") is True and doc.get("objects") == len(objs) and
                   doc.get("newest", {}).get("seq", 0) >= 1,
                   "archive verify --json: %s" % text.strip()[:200])
        rc, text = run(self.loomship, "archive", "list",
                       "file://" + self.path("no-such-archive"), "--json")
        self.check(rc == 1 and '"ok": false' in text and "REPLICATE_EARCHIVE_NOPOS" in text,
                   "archive list where there is no archive exits 1: %s" % text.strip()[:200])
        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cred = self.path("cred")
        with open(cred, "w") as f:
            f.write("AKID\nSECRET\n")
        rc, text = run(self.loomship, "archive", "verify", "s3://bucket/arc", "--json",
                       "--archive-endpoint", "http://127.0.0.1:%d" % port,
                       "--archive-credentials", cred)
        self.check(rc == 2 and '"ok": false' in text and "REPLICATE_ESTORE" in text,
                   "archive verify of an unreachable store exits 2: %s" % text.strip()[:200])

    # 4 ------------------------------------------------------------------
    def damaged(self, arc):
        def attempt(name, damage):
            copy = self.path("arc-" + name)
            shutil.copytree(arc, copy)
            key = damage(copy)
            out = self.path("out-" + name)
            rc, text = restore(self.loomship, copy, out)
            self.check(rc == 1 and key in text and not os.path.exists(out),
                       "a %s object is refused by name: %s" % (name, text.strip()))

        def tamper(copy):
            seg = objects(copy, "s")[-1]
            with open(seg, "r+b") as f:
                f.seek(-7, os.SEEK_END)
                b = f.read(1)
                f.seek(-7, os.SEEK_END)
                f.write(bytes([b[0] ^ 1]))
            return os.path.basename(seg)

        def truncate(copy):
            seg = objects(copy, "s")[-1]
            os.truncate(seg, os.path.getsize(seg) // 2)
            return os.path.basename(seg)

        def duplicate(copy):
            seg = objects(copy, "s")[-1]
            head, _, key_id = seg.rsplit(".", 2)
            shutil.copy(seg, head + ".0000000000000001." + key_id)
            return os.path.basename(seg)

        def foreign(copy):
            other = self.path("other-arc")
            if not os.path.isdir(other):
                self.archive_run(self.path("other-primary"), other, saves=5)
            base = objects(copy, "b")[-1]
            shutil.copy(objects(other, "b")[-1], base)
            return os.path.basename(base)

        for name, damage in (("tampered", tamper), ("truncated", truncate),
                             ("duplicated", duplicate), ("foreign", foreign)):
            attempt(name, damage)

    # 5 ------------------------------------------------------------------
    def encrypted(self):
        kf = self.path("archive.key")
        with open(kf, "w") as f:
            f.write(KEY)
        arc = self.path("arc-enc")
        self.archive_run(self.path("primary-enc"), arc,
                         ["--archive-key-file", kf], saves=10)
        rc, text = restore(self.loomship, arc, self.path("enc-nokey"))
        self.check(rc == 1 and "REPLICATE_EARCHIVE_KEY" in text,
                   "an encrypted archive is refused without the key")
        rc, text = restore(self.loomship, arc, self.path("enc"), "--archive-key-file", kf)
        self.check(rc == 0 and "seq 10" in text, "restored with the key: %s" % text.strip())
        bad = self.path("bad.key")
        with open(bad, "w") as f:
            f.write("0011\n")
        arc2 = self.path("arc-badkey")
        os.makedirs(arc2)
        r = subprocess.run([self.loomship, "primary", "--dir", self.path("primary-bad"),
                            "--archive", "file://" + arc2, "--archive-key-file", bad,
                            "--saves", "3"] + TABLE, capture_output=True, timeout=30)
        text = r.stderr.decode(errors="replace")
        self.check(r.returncode == 1 and "bad.key" in text and not os.listdir(arc2),
                   "an unusable key file stops the primary, nothing uploaded: %s"
                   % text.strip()[-200:])

    # 5b -----------------------------------------------------------------
    def key_rotation(self):
        """SIGHUP re-reads --archive-key-file: after a rotation (the new key
        first, the old one second) new objects are under the new key; a
        file that became malformed keeps the old keys, archiving goes on."""
        kf = self.path("rot.key")
        with open(kf, "w") as f:
            f.write(KEY)
        arc, pdir = self.path("arc-rot"), self.path("primary-rot")
        os.makedirs(arc)
        args = ["--dir", pdir, "--archive", "file://" + arc, "--archive-key-file", kf,
                "--rate", "50"] + TABLE
        proc, url, _ = systest.start_primary(self.loomship, args, self.log)

        def key_ids():
            rc, text = run(self.loomship, "archive", "list", "--from", "file://" + arc,
                           "--json", "--archive-key-file", kf)
            try:
                return [o["key_id"] for o in json.loads(text)["objects"]] if rc == 0 else []
            except (ValueError, KeyError):
                return []

        first = systest.wait_for(key_ids, 15) or []
        self.check(len(set(first)) == 1, "objects under the first key: %s" % set(first))
        with open(kf, "w") as f:
            f.write(KEY2 + KEY)
        proc.send_signal(signal.SIGHUP)
        new = systest.wait_for(lambda: set(key_ids()) - set(first), 15)
        self.check(bool(new), "after SIGHUP new objects are under the new key: %s" % new)
        with open(kf, "w") as f:
            f.write("0011\n")
        proc.send_signal(signal.SIGHUP)
        said = systest.wait_for(lambda: "--archive-key-file not used" in
                                open(self.log, errors="replace").read(), 10)
        self.check(bool(said), "a malformed key file on SIGHUP is refused in the log")
        seq0 = ((systest.status(url) or {}).get("archive") or {}).get("uploaded_seq", 0)
        on = systest.wait_for(lambda: ((systest.status(url) or {}).get("archive") or {})
                              .get("uploaded_seq", 0) > seq0 + 20, 15)
        self.check(bool(on), "archiving goes on under the keys it had")
        with open(kf, "w") as f:
            f.write(KEY2 + KEY)
        self.check(systest.stop(proc, signal.SIGTERM) == 0, "the primary stops cleanly")
        rc, text = restore(self.loomship, arc, self.path("rot-out"), "--archive-key-file", kf)
        self.check(rc == 0 and same_position(systest.inspect(self.loomship,
                                                             self.path("rot-out")),
                                             systest.inspect(self.loomship, pdir)),
                   "the rotated archive restores to the primary's last commit: %s"
                   % text.strip()[-160:])

    # 6 ------------------------------------------------------------------
    def store_away(self):
        arc, pdir = self.path("arc-away"), self.path("primary-away")
        os.makedirs(arc)
        args = ["--dir", pdir, "--archive", "file://" + arc, "--rate", "50"] + TABLE
        proc, url, _ = systest.start_primary(self.loomship, args, self.log)
        up = systest.wait_for(lambda: ((systest.status(url) or {}).get("archive") or {})
                              .get("uploaded_seq", 0) > 0, 10)
        self.check(up, "uploads start")
        os.rename(arc, arc + ".away")
        seq0 = (systest.status(url) or {}).get("applied", {}).get("seq", 0)
        st = systest.wait_for(lambda: (lambda s: s if s and s["archive"]["last_error"] and
                                       s["applied"]["seq"] > seq0 + 50 else None)
                              (systest.status(url)), 20)
        self.check(st is not None and st["archive"]["lag"]["frames"] > 0,
                   "saves go on while the archive is away; status says why: %s"
                   % ((st or {}).get("archive")))
        os.rename(arc + ".away", arc)
        caught = systest.wait_for(lambda: (lambda s: s and s["archive"]["uploaded_seq"] >=
                                           s["applied"]["seq"] - 60)(systest.status(url)), 20)
        self.check(bool(caught), "the archive catches up once it is back")
        code = systest.stop(proc, signal.SIGTERM)
        self.check(code == 0, "SIGTERM: the primary drains the archive and exits 0 (%s)"
                   % code)
        rc, text = restore(self.loomship, arc, self.path("away-out"))
        self.check(rc == 0 and same_position(systest.inspect(self.loomship,
                                                             self.path("away-out")),
                                             systest.inspect(self.loomship, pdir)),
                   "after SIGTERM the newest restore is the primary's last commit")


    # 8 ------------------------------------------------------------------
    def bootstrap(self, pdir, arc):
        sdir = self.path("standby-boot")
        proc = systest.spawn([self.loomship, "standby", "--dir", sdir, "--listen",
                              "127.0.0.1:0", "--bootstrap", "file://" + arc],
                             stdout=subprocess.PIPE, stderr=open(self.log, "ab"))
        line = proc.stdout.readline().decode()
        surl = line.split("listening on ", 1)[1].split()[0] if "listening on " in line else None
        st = systest.status(surl) if surl else None
        self.check(st and st["applied"]["seq"] == 60,
                   "the bootstrapped standby starts at the archive's seq 60: %s"
                   % ((st or {}).get("applied")))
        if not surl:
            return
        args = ["--dir", pdir, "--archive", "file://" + arc, "--standby", surl,
                "--saves", "20", "--rate", "100"] + TABLE
        r = subprocess.run([self.loomship, "primary"] + args, capture_output=True, timeout=60)
        self.check(r.returncode == 0, "the primary ships the tail and exits 0 (%s)"
                   % r.returncode)
        st, _ = systest.wait_applied(surl, 80, 10)
        st = st or {}
        counters = st.get("counters", {})
        # The primary's replication log starts empty at this restart (it
        # had no standby before): a race between its first commits and the
        # standby's first answer can still cost one base image of the
        # tail's first seqs (the shipper's policy); the rest comes as frames.
        self.check(st.get("applied", {}).get("seq") == 80 and
                   counters.get("frames_received", 0) >= 15 and
                   counters.get("base_images", 9) <= 1,
                   "the standby got seqs 61-80, as frames: %s, %s"
                   % (st.get("applied"), counters))
        systest.stop(proc, signal.SIGTERM)
        problems = systest.compare_nodes(self.loomship, pdir, sdir)
        self.check(not problems, "primary and bootstrapped standby identical: %s" % problems)
        rc, text = restore(self.loomship, arc, self.path("after-boot"))
        self.check(rc == 0 and "seq 80" in text, "the archive went on to seq 80")

    # 7 ------------------------------------------------------------------
    def kills(self, rng, rounds=4):
        arc, pdir = self.path("arc-kill"), self.path("primary-kill")
        os.makedirs(arc)
        args = ["--dir", pdir, "--archive", "file://" + arc, "--rate", "200"] + TABLE
        for i in range(rounds):
            proc, url, _ = systest.start_primary(self.loomship, args, self.log)
            systest.wait_for(lambda: ((systest.status(url) or {}).get("archive") or {})
                             .get("uploaded_seq", 0) > 0, 10)
            time.sleep(rng.uniform(0.0, 1.5))  # where the kill lands: seeded
            systest.stop(proc, signal.SIGKILL)
            out = self.path("kill-%d" % i)
            rc, text = restore(self.loomship, arc, out)
            got = systest.inspect(self.loomship, out) or {}
            at = run(self.loomship, "inspect", pdir, "--json", "--at", str(got.get("seq", 0)))[1]
            self.check(rc == 0 and systest.verify(self.loomship, out)[0] and
                       got.get("checksum", "?") in at,
                       "kill -9 #%d: the archive restores to seq %s, the primary's image "
                       "there (%s)" % (i + 1, got.get("seq"), text.strip()[-160:]))


    # 9 ------------------------------------------------------------------
    def kill_while_away(self, standby=False):
        """With standby, a standby follows: the shipper writes the log and
        trims it behind the standby's acknowledgements, the archive's hold
        keeps what it has not uploaded."""
        tag = "held-sb" if standby else "held"
        arc, pdir = self.path("arc-" + tag), self.path("primary-" + tag)
        os.makedirs(arc)
        args = ["--dir", pdir, "--archive", "file://" + arc, "--rate", "100"] + TABLE
        sproc = None
        if standby:
            sproc, surl = systest.start_standby(self.loomship, self.path("standby-" + tag),
                                                log=self.log)
            args += ["--standby", surl]
        proc, url, _ = systest.start_primary(self.loomship, args, self.log)
        up = systest.wait_for(lambda: ((systest.status(url) or {}).get("archive") or {})
                              .get("uploaded_seq", 0) > 0, 10)
        self.check(up, "%s: uploads start" % tag)
        os.rename(arc, arc + ".away")
        seq0 = ((systest.status(url) or {}).get("applied") or {}).get("seq", 0)
        moved = systest.wait_for(lambda: ((systest.status(url) or {}).get("applied") or {})
                                 .get("seq", 0) > seq0 + 60, 20)
        systest.stop(proc, signal.SIGKILL)
        os.rename(arc + ".away", arc)
        killed_at = (systest.inspect(self.loomship, pdir) or {}).get("seq", 0)
        self.check(moved and killed_at > seq0 + 60,
                   "%s: 60 saves committed while the archive was away (%s to %s)"
                   % (tag, seq0, killed_at))
        proc, url, _ = systest.start_primary(self.loomship, args, self.log)
        caught = systest.wait_for(lambda: ((systest.status(url) or {}).get("archive") or {})
                                  .get("uploaded_seq", 0) >= killed_at, 20)
        code = systest.stop(proc, signal.SIGTERM)
        self.check(caught and code == 0, "%s: restarted, the archive passes seq %d (exit %s)"
                   % (tag, killed_at, code))
        rc, text = run(self.loomship, "archive", "list", "--from", "file://" + arc, "--json")
        objs = json.loads(text).get("objects", []) if rc == 0 else []
        gaps = [(o["first_seq"], o["last_seq"]) for o in objs if o.get("kind") == "gap"]
        # The kill may land between the last commit point and its log
        # append: that one commit's frame is nowhere, a gap from it on.
        self.check(rc == 0 and all(first >= killed_at for first, _ in gaps),
                   "%s: no gap before the last commit of the killed primary (seq %d; "
                   "gaps %s)" % (tag, killed_at, gaps))
        mid = (seq0 + killed_at) // 2
        out = self.path(tag + "-out")
        rc, text = restore(self.loomship, arc, out, "--seq", str(mid))
        got = systest.inspect(self.loomship, out) or {}
        at = run(self.loomship, "inspect", pdir, "--json", "--at", str(mid))[1]
        self.check(rc == 0 and got.get("seq") == mid and got.get("checksum", "?") in at,
                   "%s: a restore to seq %d, inside the outage, is the primary's image "
                   "there (%s)" % (tag, mid, text.strip()[-160:]))
        if sproc:
            systest.stop(sproc, signal.SIGTERM)


    # 10 -----------------------------------------------------------------
    def large_base(self):
        """An image over 64 MiB: its base is sealed into an unlinked file in
        the primary's directory and sent from there (docs/ARCHIVE.md W2);
        it restores to the primary's position and leaves no file behind.
        (That the bases go through the scratch file, and a full scratch
        disk, are asserted by test_archive.c; here, the commands as typed,
        with --dir as the scratch directory: its stale scratch file is
        swept.)"""
        ls = self.loomship
        pdir, arc = self.path("large"), self.path("large-arc")
        os.makedirs(arc)
        table = ["--keys", "8192", "--arena-pages", "10496", "--rate", "100000"]
        rc, text = run(ls, "primary", "--dir", pdir, "--saves", "1024", *table,
                       "--pages", "64")
        size = os.path.getsize(os.path.join(pdir, "image")) if rc == 0 else 0
        self.check(size > 64 << 20, "a %d MiB image made (%s)" % (size >> 20, rc))
        names = sorted(os.listdir(pdir))
        # A named scratch file as a crash would leave it: the archiver's
        # start sweeps it from its scratch directory, which is --dir.
        stale = os.path.join(pdir, ".archive-base-Ab12Cd")
        open(stale, "w").close()
        rc, text = run(ls, "primary", "--dir", pdir, "--saves", "5", *table,
                       "--pages", "16", "--archive", "file://" + arc)
        self.check(rc == 0 and "base at seq" in text,
                   "the large image's base is uploaded: %s" % text.strip()[-300:])
        self.check(sorted(os.listdir(pdir)) == names,
                   "nothing is left in the directory, the stale scratch file "
                   "swept: %s" % sorted(os.listdir(pdir)))
        out = self.path("large-restored")
        rc, text = restore(ls, arc, out)
        self.check(rc == 0 and same_position(systest.inspect(ls, out),
                                              systest.inspect(ls, pdir)),
                   "the large image restores to the primary's position: %s"
                   % text.strip())
        self.check(systest.verify(ls, out)[0], "verify passes on it")
        for d in (pdir, arc, out):
            shutil.rmtree(d, ignore_errors=True)


def main():
    loomship, rng = systest.loomship_and_rng()
    root = tempfile.mkdtemp(prefix="loomship-archive-")
    s = Suite(loomship, root)
    pdir, arc = s.path("primary"), s.path("arc")
    t = s.archive_run(pdir, arc)
    s.restores(pdir, arc, t)
    s.list_and_verify(arc)
    s.damaged(arc)
    s.bootstrap(pdir, arc)
    s.encrypted()
    s.key_rotation()
    s.store_away()
    s.kills(rng)
    s.kill_while_away()
    s.kill_while_away(standby=True)
    s.large_base()
    return systest.report("archive", s.failures, root)


if __name__ == "__main__":
    sys.exit(main())
