#!/usr/bin/env python3
"""archive_failover_bench.py LOOMSHIP [--episodes N] [--ttl T]
[--interval S] [--swift]: the archive's recovery point right after a
failover (issue 17; docs/BENCHMARKS.md section 13.2).

Per episode: three fresh `loomship node --archive file:///DIR` (with
--swift, s3://BUCKET/NAME in a Swift s3api started on 127.0.0.1 for the
run: archive_bench.py's targets) (--sync 1,
--rate 50, --archive-interval S) on a shared 3-member etcd; once the
leader's archive moves, kill -9 of the leader. Measured, polling every
5 ms:
  - rpo: from the first save the new leader acknowledges (its --ack-log
    line appearing) to that seq being in the archive (the new leader's
    status archive.uploaded_seq): what a commit right after the failover
    waits, which includes the new writer's start (id, epoch, writer, head,
    listing) and its first base;
  - first_upload: from the kill to that moment.
p50/p99/max over the episodes."""
import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "cluster"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "lib"))
sys.path.insert(0, HERE)
import episodes  # noqa: E402
import etcd  # noqa: E402
from archive_bench import FileTarget, SwiftTarget, swiftlib  # noqa: E402
from failover_bench import percentile  # noqa: E402


def uploaded(nd):
    return ((nd.status() or {}).get("archive") or {}).get("uploaded_seq", 0)


def first_ack_after(c, epoch):
    for nd in c.nodes:
        fresh = [a for a in nd.acks() if a[0] > epoch]
        if fresh:
            return nd, fresh[0]
    return None, None


def one(loomship, ec, target, name, ttl, interval):
    c = episodes.Cluster(loomship, ec, name, ttl, 1, rate=50)
    c.extra_args = ["--archive", target.url(name), "--archive-interval",
                    str(interval)] + target.opts
    try:
        c.start()
        if not c.wait_acks((0, 0), count=10, deadline=30):
            return None
        lead = c.leader()
        if not lead or not episodes.poll(lambda: uploaded(lead) > 0, 15):
            return None
        epoch = c.max_ack()[0]
        t_kill = time.monotonic()
        lead.kill()
        nd, ack = None, None
        while time.monotonic() - t_kill < 10 * ttl + 20 and ack is None:
            nd, ack = first_ack_after(c, epoch)
            time.sleep(0.005)
        if ack is None:
            return None
        t_ack = time.monotonic()
        while time.monotonic() - t_ack < 30:
            if uploaded(nd) >= ack[1]:
                t_up = time.monotonic()
                return t_up - t_ack, t_up - t_kill
            time.sleep(0.005)
        return None
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("loomship")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--ttl", type=int, default=3)
    ap.add_argument("--interval", type=int, default=1)
    ap.add_argument("--swift", action="store_true",
                    help="archive to Swift's s3api on 127.0.0.1 (started here)")
    a = ap.parse_args()
    rpo, total = [], []
    root = tempfile.mkdtemp(prefix="loomship-arcbench-")
    store = None
    if a.swift:
        swiftlib.stop_on_sigterm()
        store = swiftlib.Swift()
    target = SwiftTarget(store) if store else FileTarget(root)
    with etcd.EtcdCluster(3) as ec:
        for k in range(a.episodes):
            r = one(os.path.abspath(a.loomship), ec, target, "ab%d-%d" % (os.getpid(), k),
                    a.ttl, a.interval)
            print("episode %d: %s" % (k + 1, "failed" if r is None else
                                      "rpo %.3f s, kill to upload %.3f s" % r))
            sys.stdout.flush()
            if r is not None:
                rpo.append(r[0])
                total.append(r[1])
    if store:
        store.close()
    shutil.rmtree(root, ignore_errors=True)
    if not rpo:
        return 1
    for label, v in (("rpo right after failover", rpo), ("kill to first upload", total)):
        print("%s: p50 %.3f s, p99 %.3f s, max %.3f s (%d episodes, ttl %d, interval %d s, %s)"
              % (label, percentile(v, 50), percentile(v, 99), max(v), len(v), a.ttl,
                 a.interval, "swift s3api" if store else "file://"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
