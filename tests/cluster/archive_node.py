#!/usr/bin/env python3
"""archive_node.py LOOMSHIP: `loomship node --archive` (issue 17, DESIGN
section 7: in a cluster the leader archives, standby members upload
nothing), three nodes on a real etcd (tests/lib/etcd.py).

1. The leader's status shows the archive moving; the standby members'
   status has no archive writer running (archive null or nothing
   uploaded).
2. kill -9 of the leader: the new leader archives its own epoch, from
   its branch point; `loomship archive list` shows both epochs, restore
   of the newest is at the new epoch with the new leader's checksum at
   that seq, and `archive verify` passes.
Exit 0 passed, 1 failed, 77 etcd missing."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import episodes  # noqa: E402
import etcd  # noqa: E402
from checks import FAILS, check  # noqa: E402,F401


def run(loomship, *args):
    r = subprocess.run([loomship] + list(args), capture_output=True, timeout=120)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def uploaded(nd):
    return ((nd.status() or {}).get("archive") or {}).get("uploaded_seq", 0)


def epochs_listed(loomship, arc):
    rc, text = run(loomship, "archive", "list", "file://" + arc)
    return rc, sorted({int(w[2]) for w in (line.split() for line in text.splitlines())
                       if len(w) > 2 and w[1] == "epoch"})


def part_leader(c):
    got = c.wait_acks((0, 0), count=10, deadline=30)
    check("a leader acknowledges saves", got is not None)
    lead = c.leader()
    check("the leader's archive moves", lead is not None and
          episodes.poll(lambda: uploaded(lead) >= 5, 15), lead and lead.status())
    for nd in c.nodes:
        if nd is not lead:
            check("standby member %s uploads nothing" % nd.name, uploaded(nd) == 0,
                  (nd.status() or {}).get("archive"))
    return lead


def part_failover(c, lead, arc, work):
    before = c.max_ack()
    lead.kill()
    got = c.wait_acks(before, count=10, deadline=30, epoch_above=before[0])
    check("after kill -9 of the leader another member acknowledges at a higher epoch",
          got is not None, got)
    new = c.leader()
    epoch = (new.status() or {}).get("epoch", 0) if new else 0
    moved = new and episodes.poll(lambda: uploaded(new) > got[0][1], 15)
    check("the new leader archives its epoch %d" % epoch, moved,
          new and (new.status() or {}).get("archive"))
    for nd in c.nodes:
        nd.kill()
    rc, epochs = epochs_listed(c.loomship, arc)
    check("archive list shows both epochs", rc == 0 and epochs == [before[0], epoch],
          epochs)
    out = os.path.join(work, "restored")
    rc, text = run(c.loomship, "restore", "--from", "file://" + arc, "--out", out)
    doc = json.loads(run(c.loomship, "inspect", out, "--json")[1] or "{}") if rc == 0 else {}
    at = run(c.loomship, "inspect", new.dir, "--json", "--at", str(doc.get("seq", 0)))[1]
    check("restore newest is at the new epoch with the new leader's checksum there",
          rc == 0 and doc.get("epoch") == epoch and doc.get("checksum", "?") in at,
          "%s / %s" % (text.strip(), at.strip()))
    rc, text = run(c.loomship, "archive", "verify", "file://" + arc, "--scratch", work)
    check("archive verify passes", rc == 0, text.strip()[-300:])


def main():
    loomship = os.path.abspath(sys.argv[1])
    if not etcd.etcd_available():
        print("SKIP: etcd-server missing")
        return 77
    work = tempfile.mkdtemp(prefix="loomship-archive-node-")
    arc = os.path.join(work, "arc")
    os.makedirs(arc)
    with etcd.EtcdCluster(3) as ec:
        c = episodes.Cluster(loomship, ec, "arc%d" % os.getpid(), ttl=2, sync=1)
        c.extra_args = ["--archive", "file://" + arc]
        try:
            c.start()
            lead = part_leader(c)
            if lead:
                part_failover(c, lead, arc, work)
        finally:
            c.close(keep=bool(FAILS))
            if FAILS:
                print("kept %s and %s" % (c.tmp, work))
    if not FAILS:
        shutil.rmtree(work, ignore_errors=True)
    print("FAILED: %d checks" % len(FAILS) if FAILS else "all passed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
