#!/usr/bin/env python3
"""failover_bench.py LOOMSHIP [--episodes N] [--ttl T ...] [--sync N]
[--rest SECONDS]: how long a loomship cluster takes to fail over, and what
membership costs at rest (issue 16; docs/BENCHMARKS.md).

Failover: per episode, three fresh `loomship node`s (--sync 1 by default,
--rate 50) on a shared 3-member etcd (tests/lib/etcd.py); once the leader
acknowledges saves, kill -9 of the leader; the time from the kill to the
first save acknowledged at a higher epoch (its --ack-log line, polled every
2 ms). p50/p99/max per ttl, and the acknowledged saves the new history
lacks (history_check; must be 0 with --sync).

At rest (--rest S, 0: skip): three nodes at --rate 1 for S seconds: etcd
requests per second per node (from etcd's grpc_server_handled_total,
summed over its members) and each node's CPU (utime + stime from /proc)."""
import argparse
import os
import re
import signal
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "cluster"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "lib"))
import episodes  # noqa: E402
import etcd  # noqa: E402


def percentile(values, p):
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


def one_failover(loomship, ec, name, ttl, sync):
    c = episodes.Cluster(loomship, ec, name, ttl, sync, rate=50)
    try:
        c.start()
        if not c.wait_acks((0, 0), count=10, deadline=30):
            return None, None
        lead = c.leader()
        epoch = c.max_ack()[0]
        t0 = time.monotonic()
        lead.kill()
        took = None
        while time.monotonic() - t0 < 10 * ttl + 20:
            if any(a[0] > epoch for nd in c.nodes for a in nd.acks()[-3:]):
                took = time.monotonic() - t0
                break
            time.sleep(0.002)
        last = c.leader()
        for nd in c.nodes:
            nd.kill()
        report = c.check(None, no_loss=False, leader=last.name if last else None)
        return took, len(report.lost)
    finally:
        c.close()


def grpc_requests(ec):
    """Requests etcd's members handled so far (all methods)."""
    total = 0
    for i in range(ec.n):
        with urllib.request.urlopen(ec.client_url(i) + "/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("grpc_server_handled_total{"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def at_rest(loomship, ec, ttl, seconds):
    c = episodes.Cluster(loomship, ec, "rest%d" % os.getpid(), ttl, 1, rate=1)
    try:
        c.start()
        c.wait_acks((0, 0), count=2, deadline=30)
        time.sleep(2 * ttl)  # settled
        r0, c0, t0 = grpc_requests(ec), [cpu_seconds(nd.proc.pid) for nd in c.nodes], \
            time.monotonic()
        time.sleep(seconds)
        r1, c1, t1 = grpc_requests(ec), [cpu_seconds(nd.proc.pid) for nd in c.nodes], \
            time.monotonic()
        per_node = (r1 - r0) / (t1 - t0) / len(c.nodes)
        cpu = [(b - a) / (t1 - t0) * 100 for a, b in zip(c0, c1)]
        print("at rest, ttl %d, --rate 1, %.0f s: %.2f etcd requests/s per node; CPU %s "
              "(%% of one core, per node)" % (ttl, t1 - t0, per_node,
                                              ", ".join("%.2f" % x for x in cpu)))
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("loomship")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--ttl", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--sync", type=int, default=1)
    ap.add_argument("--rest", type=float, default=30)
    args = ap.parse_args()
    if not etcd.etcd_available():
        print("SKIP: etcd is not installed")
        return 77
    with etcd.EtcdCluster(3) as ec:
        for ttl in args.ttl:
            times, lost, failed = [], 0, 0
            for k in range(args.episodes):
                took, n_lost = one_failover(args.loomship, ec, "fo%d-%d-%d" % (
                    os.getpid(), ttl, k), ttl, args.sync)
                if took is None:
                    failed += 1
                    continue
                times.append(took)
                lost += n_lost or 0
            if times:
                print("ttl %d s, --sync %d, kill -9 of the leader, %d episodes: failover "
                      "p50 %.2f s, p99 %.2f s, max %.2f s; acknowledged saves lost: %d; "
                      "episodes without a new leader: %d" % (
                          ttl, args.sync, len(times), percentile(times, 50),
                          percentile(times, 99), max(times), lost, failed))
            sys.stdout.flush()
        if args.rest > 0:
            at_rest(args.loomship, ec, max(args.ttl), args.rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
