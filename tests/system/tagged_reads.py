"""tagged_reads.py: `loomship compare` and `loomship backup` with
--frame-key-file check the X-Loomship-Tag of the answers they read
(issue 13, docs/AUTH.md "Who checks what").

usage: tagged_reads.py LOOMSHIP [--seed S]
A primary P (key K1, --listen) ships to standby S (key K1) and standby T
(no key). Then, P stopped (so S and T hold one seq):
1. compare S T: with K1, exit 2 (T's answers are untagged:
   REPLICATE_ETAG_MISSING); with K2, exit 2 (REPLICATE_ETAG_KEY); without
   a key, exit 0 (as before).
2. backup from S: with K1, exit 0 and the copy verifies at S's position; with
   K2, exit 1, nothing written, the message names REPLICATE_ETAG_KEY;
   without a key, exit 0.
3. backup from T (no key) with K1: exit 1, untagged (REPLICATE_ETAG_MISSING).
4. --resync-from S into a new standby with K1: done; from T with K1:
   refused (the old directory stays)."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

ARGS = ["--keys", "64", "--arena-pages", "256", "--pages", "4", "--rate", "1000"]
SAVES = 10


def write_key(path, key):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, (key.hex() + "\n").encode())
    os.close(fd)
    return path


def run(loomship, *args):
    r = subprocess.run([loomship] + list(args), capture_output=True, timeout=60)
    return r.returncode, r.stderr.decode(errors="replace")


def compare_case(c, loomship, surl, turl, k1, k2):
    for name, extra, want, text in (("K1", ["--frame-key-file", k1], 2, "REPLICATE_ETAG_MISSING"),
                                    ("K2", ["--frame-key-file", k2], 2, "REPLICATE_ETAG_KEY"),
                                    ("no key", [], 0, "")):
        rc, err = run(loomship, "compare", surl, turl, *extra)
        print("   compare S T, %s: exit %d: %s" % (name, rc, err.strip()[-200:]))
        c.check(rc == want and text in err,
                "1. compare with %s: exit %d (want %d naming %r)" % (name, rc, want, text))


def backup_case(c, loomship, surl, turl, k1, k2):
    cases = (("S", surl, "K1", ["--frame-key-file", k1], 0, ""),
             ("S", surl, "K2", ["--frame-key-file", k2], 1, "REPLICATE_ETAG_KEY"),
             ("S", surl, "none", [], 0, ""),
             ("T", turl, "K1", ["--frame-key-file", k1], 1, "REPLICATE_ETAG_MISSING"))
    for i, (node, url, name, extra, want, text) in enumerate(cases):
        out = c.path("backup%d" % i)
        rc, err = run(loomship, "backup", "--from", url, "--out", out, *extra)
        print("   backup from %s with %s: exit %d: %s" % (node, name, rc, err.strip()[-200:]))
        ok = rc == want and text in err and os.path.isdir(out) == (want == 0)
        if ok and want == 0:
            i, st = systest.inspect(loomship, out), systest.status(url)
            ok = systest.verify(loomship, out)[0] and i and st and \
                i["seq"] == SAVES and i["checksum"] == st["applied"]["checksum"]
        c.check(ok, "%d. backup from %s with %s: exit %d (want %d naming %r)"
                % (2 if node == "S" else 3, node, name, rc, want, text))


def resync_case(c, loomship, surl, turl, k1):
    for name, url, ok_want in (("S", surl, True), ("T", turl, False)):
        d = c.path("r" + name)
        proc, rurl = systest.start_standby(loomship, d, log=c.log, wait=30, extra=[
            "--resync-from", url, "--frame-key-file", k1])
        st = systest.status(rurl) if rurl else None
        systest.stop(proc)
        got = bool(st and st["applied"]["seq"] == SAVES)
        print("   --resync-from %s with K1: %s" % (name, st and st["applied"]))
        c.check(got == ok_want, "4. --resync-from %s with K1 %s" %
                (name, "done" if ok_want else "refused"))


def main():
    loomship, _ = systest.loomship_and_rng()
    c = systest.Checks(tempfile.mkdtemp(prefix="loomship-tagged-"))
    k1 = write_key(c.path("k1"), os.urandom(32))
    k2 = write_key(c.path("k2"), os.urandom(32))
    sdir = c.path("s")
    s, surl = systest.start_standby(loomship, sdir, log=c.log, extra=["--frame-key-file", k1])
    t, turl = systest.start_standby(loomship, c.path("t"), log=c.log)
    r = subprocess.run([loomship, "primary", "--dir", c.path("p"), "--standby", surl,
                        "--standby", turl, "--saves", str(SAVES), "--frame-key-file", k1]
                       + ARGS, capture_output=True, timeout=60)
    c.check(r.returncode == 0, "P shipped %d saves to S and T (exit %d)" % (SAVES, r.returncode))
    if r.returncode == 0:
        compare_case(c, loomship, surl, turl, k1, k2)
        backup_case(c, loomship, surl, turl, k1, k2)
        resync_case(c, loomship, surl, turl, k1)
    systest.stop(s)
    systest.stop(t)
    return systest.report("tagged_reads", c.failures, c.root)


if __name__ == "__main__":
    sys.exit(main())
