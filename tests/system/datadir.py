#!/usr/bin/env python3
"""datadir.py: data directories as DESIGN section 5 says: created with
their missing parents (the README tour's first command on a fresh
machine), mode 0700, files 0600; the same for `loomship backup --out`.
usage: datadir.py LOOMSHIP"""
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

results = {"passed": 0, "failed": 0}


def check(what, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print("%s: %s%s" % ("ok" if ok else "FAIL", what, "" if ok else " (%s)" % detail))


def modes(top):
    """(path, mode) of every directory and file below top, top included."""
    out = [(top, stat.S_IMODE(os.stat(top).st_mode))]
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(d, n)
            out.append((p, stat.S_IMODE(os.lstat(p).st_mode)))
    return out


def private(top):
    bad = [(p, oct(m)) for p, m in modes(top)
           if m & 0o077 or (os.path.isdir(p) and m != 0o700)]
    return bad


def main():
    loomship = os.path.abspath(sys.argv[1])
    root = tempfile.mkdtemp(prefix="loomship-datadir-")
    sdir = os.path.join(root, "fresh", "machine", "standby")
    sproc, surl = systest.start_standby(loomship, sdir)
    check("a standby starts in a directory whose parents do not exist", surl is not None)
    pdir = os.path.join(root, "also", "new", "primary")
    r = subprocess.run([loomship, "primary", "--dir", pdir, "--standby", surl, "--saves", "5"]
                       + systest.SMALL, capture_output=True, timeout=120)
    check("a primary too, and it replicates", r.returncode == 0, r.stderr.decode()[-300:])
    out = os.path.join(root, "backups", "today")
    r = subprocess.run([loomship, "backup", "--from", surl, "--out", out],
                       capture_output=True, timeout=120)
    check("a backup into a directory whose parents do not exist", r.returncode == 0,
          r.stderr.decode()[-300:])
    systest.stop(sproc)
    for what, top in (("standby", os.path.join(root, "fresh")),
                      ("primary", os.path.join(root, "also")),
                      ("backup", os.path.join(root, "backups"))):
        bad = private(top)
        check("%s: directories 0700, files readable by the owner only" % what, not bad, bad[:4])
    print("%d passed, %d failed" % (results["passed"], results["failed"]))
    if results["failed"]:
        print("kept %s" % root)
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
