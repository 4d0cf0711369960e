#!/usr/bin/env python3
"""node_commit_log.py LOOMSHIP: `loomship node --commit-log-mb` (issue
14, docs/OPERATIONS.md section 6a): two members on a real etcd
(tests/lib/etcd.py), both with --commit-log-mb 2. The leader and the
standby member report commit_log.size_bytes = 2 MiB (the leader's loom
and the standby side's receiver both take it), the leader its RECENT
pool; after kill -9 of the leader the other member leads with the same
ring. Exit 0 passed, 1 failed, 77 etcd missing."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import episodes  # noqa: E402
from checks import FAILS, check  # noqa: E402

RING = 2 << 20

def ring_of(nd):
    return ((nd.status() or {}).get("commit_log") or {}).get("size_bytes")


def check_members(c, when):
    lead = c.leader()
    check("%s: a leader" % when, lead is not None)
    if lead is None:
        return None
    for nd in c.nodes:
        if not nd.alive():
            continue
        ok = episodes.poll(lambda: ring_of(nd) == RING, 10)
        check("%s: %s (%s) has a 2 MiB ring" % (when, nd.name,
                                                 "leader" if nd is lead else "standby"),
              ok, (nd.status() or {}).get("commit_log"))
    recent = ((lead.status() or {}).get("commit_log") or {}).get("recent_bytes", 0)
    check("%s: the leader reports RECENT's index" % when, recent > 0, recent)
    return lead


def run(c):
    got = c.wait_acks((0, 0), count=10, deadline=30)
    check("a leader acknowledges saves", got is not None)
    lead = check_members(c, "first epoch") if got else None
    if lead:
        before = c.max_ack()
        lead.kill()
        got = c.wait_acks(before, count=5, deadline=30, epoch_above=before[0])
        check("after kill -9 the other member acknowledges", got is not None, got)
        if got:
            check_members(c, "second epoch")


def main():
    return episodes.run_checks(os.path.abspath(sys.argv[1]), "clog", run,
                               extra_args=["--commit-log-mb", "2"], ttl=2, sync=0, n=2)


if __name__ == "__main__":
    sys.exit(main())
