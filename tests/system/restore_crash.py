"""restore_crash.py: kill -9 of `loomship restore` right before each I/O
operation it makes under its output directory, through the crash hook of
the store's I/O (LOOMSHIP_CRASH_AT=K, cli/faultio.h); issue 17.

usage: restore_crash.py LOOMSHIP

A primary archives 30 saves to file:///DIR (a base, then segments) and
stops. The restore of the newest is byte for byte the primary's image. A
counting run (LOOMSHIP_CRASH_COUNT) of `restore --seq N` (N in the
middle, so that a directory left at the base's seq or the newest would be
a wrong position) gives the K operations a restore makes; then, for every
K, on a fresh output directory:

  1. the restore killed right before operation K (exit -9);
  2. the directory it left either holds no store (`inspect` refuses it)
     or holds seq N with the archived checksum, and `verify` passes:
     never a store at another position;
  3. `restore` into the same directory again finishes at seq N (an
     interrupted restore is started again), or, when the kill came after
     the meta was moved in (the directory is the target), is refused as
     into any store; either way the image is then byte for byte the
     uncrashed restore's."""
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

TABLE = ["--keys", "64", "--arena-pages", "256", "--pages", "4"]


def run(loomship, *args, env=None):
    r = subprocess.run([loomship] + list(args), capture_output=True, timeout=120,
                       env=env)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def position(text):
    """(seq, checksum) of a restore's "restored DIR: ... seq S checksum C"."""
    m = re.search(r"seq (\d+) checksum ([0-9a-f]{16})", text)
    return (int(m.group(1)), m.group(2)) if m else None


def main():
    ls = sys.argv[1]
    root = tempfile.mkdtemp(prefix="loomship-restore-crash-")
    s = systest.Checks(root)
    pdir, arc = s.path("p"), s.path("arc")
    os.makedirs(arc)
    url = "file://" + arc
    with open(s.log, "ab") as log:
        rc = subprocess.run([ls, "primary", "--dir", pdir, "--archive", url,
                             "--saves", "30", "--rate", "200"] + TABLE,
                            stdout=subprocess.DEVNULL, stderr=log, timeout=120).returncode
    s.check(rc == 0, "the archiving primary exits 0 (%s)" % rc)

    newest = s.path("newest")
    rc, text = run(ls, "restore", "--from", url, "--out", newest)
    mine = systest.inspect(ls, pdir) or {}
    s.check(rc == 0 and position(text) == (mine.get("seq"), mine.get("checksum")),
            "restore newest is the primary's position: %s" % text.strip())
    s.check(filecmp.cmp(os.path.join(newest, "image"), os.path.join(pdir, "image"),
                        shallow=False),
            "its image is byte for byte the primary's")

    target = mine.get("seq", 2) // 2
    clean, count = s.path("clean"), s.path("count")
    env = dict(os.environ, LOOMSHIP_CRASH_COUNT=count)
    rc, text = run(ls, "restore", "--from", url, "--out", clean, "--seq", str(target),
                   env=env)
    want = position(text)
    at = run(ls, "inspect", pdir, "--json", "--at", str(target))[1]
    s.check(rc == 0 and want is not None and want[0] == target and want[1] in at,
            "restore --seq %d is the primary's image at that seq: %s"
            % (target, text.strip()))
    with open(count) as f:
        ops = int(f.read().split()[0])
    print("a restore makes %d operations" % ops)
    s.check(ops > 10, "the crash hook counts the restore's operations (%d)" % ops)

    stores = refused = 0
    for k in range(1, ops + 1):
        out = s.path("out-%d" % k)
        env = dict(os.environ, LOOMSHIP_CRASH_AT=str(k))
        rc, text = run(ls, "restore", "--from", url, "--out", out, "--seq", str(target),
                       env=env)
        s.check(rc == -9, "%d: killed right before operation %d (%s)" % (k, k, rc))
        got = systest.inspect(ls, out)
        if got is None:
            refused += 1
        else:
            stores += 1
            ok, vtext = systest.verify(ls, out)
            s.check((got.get("seq"), got.get("checksum")) == want and ok,
                    "%d: the directory left is the target (seq %s, %s; verify: %s)"
                    % (k, got.get("seq"), got.get("checksum"), vtext))
        rc, text = run(ls, "restore", "--from", url, "--out", out, "--seq", str(target))
        if got is None:
            s.check(rc == 0 and position(text) == want,
                    "%d: a restore into it again finishes at the target: %s"
                    % (k, text.strip()[-200:]))
        else:
            s.check(rc == 1 and "not empty" in text and systest.verify(ls, out)[0],
                    "%d: a restore into the store it left is refused, the store "
                    "kept: %s" % (k, text.strip()[-200:]))
        s.check(filecmp.cmp(os.path.join(out, "image"), os.path.join(clean, "image"),
                            shallow=False),
                "%d: then its image is the uncrashed restore's" % k)
        shutil.rmtree(out, ignore_errors=True)
    print("%d kills left no store, %d the target" % (refused, stores))
    s.check(refused > 0 and stores > 0, "kills landed before and after the meta")
    return systest.report("restore_crash", s.failures, root)


if __name__ == "__main__":
    sys.exit(main())
