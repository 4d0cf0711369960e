#!/usr/bin/env python3
"""commit_log_size_bench.py: the commit log's size against what it buys
and costs (issue 14, docs/BENCHMARKS.md "The ring's size").

For each --commit-log-mb MB given: a `loomship primary` (the bundled
example, K values changed per save, --rate far above what it reaches)
ships to one `loomship standby`, both with that ring, every directory on
the same disk. After 2 s of warm-up the standby's applied seq is read
twice, --seconds apart (saves/s kept up); then each node's status
`commit_log`: the primary's waits, merge_peak_bytes and recent_bytes, the
standby's merge_peak_bytes.

Usage: commit_log_size_bench.py LOOMSHIP [--pages K] [--seconds S]
       [--dir DIR] MB...
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests", "system"))
import systest  # noqa: E402


def applied(url):
    return ((systest.status(url) or {}).get("applied") or {}).get("seq", 0)


def one_size(loomship, mb, pages, seconds, parent):
    root = tempfile.mkdtemp(prefix="loomship-ring-", dir=parent)
    log = os.path.join(root, "log")
    ring = ["--commit-log-mb", str(mb)]
    standby, surl = systest.start_standby(loomship, os.path.join(root, "standby"),
                                          log=log, extra=ring)
    if not surl:
        sys.exit("the standby did not start (log in %s)" % root)
    primary, purl, line = systest.start_primary(
        loomship, ["--dir", os.path.join(root, "primary"), "--standby", surl,
                   "--keys", "4096", "--pages", str(pages), "--rate", "100000",
                   "--saves", "0"] + ring, log)
    if not purl:
        systest.stop(standby)
        sys.exit("the primary did not start: %r (log in %s)" % (line, root))
    time.sleep(2)  # warm-up: start-up cancels out of the two reads below
    a0, t0 = applied(surl), time.monotonic()
    time.sleep(seconds)
    a1, t1 = applied(surl), time.monotonic()
    p = (systest.status(purl) or {}).get("commit_log", {})
    s = (systest.status(surl) or {}).get("commit_log", {})
    systest.stop(primary)
    systest.stop(standby)
    shutil.rmtree(root, ignore_errors=True)
    print("RESULT ring_mb=%d pages=%d kept_up=%.0f/s primary_waits=%d "
          "primary_merge_peak=%d primary_recent=%d standby_merge_peak=%d"
          % (mb, pages, (a1 - a0) / (t1 - t0), p.get("waits", -1),
             p.get("merge_peak_bytes", -1), p.get("recent_bytes", -1),
             s.get("merge_peak_bytes", -1)))
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("loomship")
    ap.add_argument("sizes", metavar="MB", type=int, nargs="+")
    ap.add_argument("--pages", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    for mb in a.sizes:
        one_size(a.loomship, mb, a.pages, a.seconds, a.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
