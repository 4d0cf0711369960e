#!/usr/bin/env python3
"""etcd_faults.py LOOMSHIP [--ttl T]: `loomship node` when etcd answers
wrong (issue 16, "Bad input and faults"), on a real 3-member etcd.

Each node reaches etcd through its own proxies (tests/lib/etcd.py
TcpProxy); answer(MODE) makes one node's proxies answer every request
themselves: "5xx" (503 with etcd's error JSON), "garbage" (a 200 whose
body is not JSON) or "raw" (bytes that are not HTTP). Per case:

  leader_5xx, leader_garbage, leader_raw: the leader's etcd goes wrong for
      3 ttl. It must acknowledge nothing once ttl has passed since the
      fault began (it cannot renew its lease), say etcd is unreachable in
      its status and log the error, stay up, and a member that still
      reaches etcd must lead at a higher epoch (never two leaders
      acknowledging at one epoch). When etcd answers again the old leader
      rejoins as a standby of the new one, etcd "ok".
  standby_garbage, standby_5xx: a standby's etcd goes wrong: the leader
      goes on acknowledging at its epoch (no election), the standby says
      etcd is unreachable and stays up, and is a member again once etcd
      answers.

Every case ends with history_check over the ack-logs (nothing
acknowledged lost with --sync 1). Exit 0 passed, 1 failed, 77 no etcd."""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import episodes  # noqa: E402
import etcd  # noqa: E402
from episodes import poll  # noqa: E402

FAILS = []


def check(what, ok, detail=""):
    print("  %s: %s%s" % ("ok" if ok else "FAIL", what,
                          (" (%s)" % (detail,)) if detail and not ok else ""))
    if not ok:
        FAILS.append(what)
    sys.stdout.flush()


def etcd_state(nd):
    return ((nd.status() or {}).get("cluster") or {}).get("etcd")


def etcd_error(nd):
    return ((nd.status() or {}).get("cluster") or {}).get("etcd_error")


# What etcd_error says for each kind of wrong answer (cluster_strerror).
WHY = {"5xx": "HTTP server error (5xx)", "garbage": "garbage", "raw": "garbage"}


def log_text(nd):
    with open(nd.log, errors="replace") as f:
        return f.read()


def fault(nd, mode):
    for p in nd.proxies:
        p.answer(mode)


def answered(nd):
    return sum(p.answered for p in nd.proxies)


def acks_at(nd, epoch):
    return [a for a in nd.acks() if a[0] == epoch]


def leader_case(c, lead, mode, ttl):
    epoch = lead.acks()[-1][0]
    log_before = len(log_text(lead))
    t0 = time.monotonic()
    fault(lead, mode)
    # Past ttl from the fault's start no renewal can have succeeded: the
    # lease may be gone, so nothing more may be acknowledged at its epoch.
    time.sleep(max(0.0, ttl + 0.3 - (time.monotonic() - t0)))  # the bound itself
    frozen = len(acks_at(lead, epoch))
    got = c.wait_acks(c.max_ack(), count=3, deadline=10 * ttl + 10, epoch_above=epoch)
    check("another member leads and acknowledges at an epoch above %d" % epoch,
          got is not None and got[0][0] > epoch, got)
    check("the old leader is up", lead.alive())
    check("its status says etcd is unreachable", etcd_state(lead) == "unreachable",
          etcd_state(lead))
    why = etcd_error(lead)
    check("and why (etcd_error names the %s answer)" % mode,
          why is not None and WHY[mode] in why, why)
    check("it acknowledged nothing at epoch %d once ttl passed since the fault" % epoch,
          len(acks_at(lead, epoch)) == frozen, (frozen, len(acks_at(lead, epoch))))
    check("its proxies answered requests in mode %s" % mode, answered(lead) > 0)
    since = log_text(lead)[log_before:]
    check("its log names the etcd error", "etcd" in since and
          ("lease" in since or "keep-alive" in since), since[-400:])
    wait = max(0.0, 3 * ttl - (time.monotonic() - t0))
    time.sleep(wait)  # the fault's own length: 3 ttl of a broken etcd
    check("still nothing more at epoch %d after 3 ttl" % epoch,
          len(acks_at(lead, epoch)) == frozen)
    fault(lead, None)
    new_epoch = got[0][0] if got else epoch + 1
    st = episodes.wait_rejoined(lead, new_epoch, deadline=10 * ttl + 10)
    check("etcd back: the old leader rejoins as a standby of epoch %d" % new_epoch,
          st is not None)
    check("and says etcd ok", poll(lambda: etcd_state(lead) == "ok", 5 * ttl))
    check("with etcd_error null", poll(lambda: etcd_error(lead) is None, 5 * ttl))


def standby_case(c, lead, mode, ttl):
    st_node = next(nd for nd in c.nodes if nd is not lead)
    epoch = lead.acks()[-1][0]
    t0 = time.monotonic()
    fault(st_node, mode)
    check("the standby says etcd is unreachable",
          poll(lambda: etcd_state(st_node) == "unreachable", 5 * ttl))
    check("and why (etcd_error names the %s answer)" % mode,
          WHY[mode] in (etcd_error(st_node) or ""), etcd_error(st_node))
    time.sleep(max(0.0, 2 * ttl - (time.monotonic() - t0)))  # its lease runs out
    before = c.max_ack()
    got = c.wait_acks(before, count=5, deadline=10 * ttl + 10)
    check("the leader goes on acknowledging at epoch %d" % epoch,
          got is not None and got[0][0] == epoch and c.leader() is lead, got)
    check("the standby is up", st_node.alive())
    fault(st_node, None)
    check("etcd back: the standby says etcd ok",
          poll(lambda: etcd_state(st_node) == "ok", 5 * ttl))
    members = lambda: len(((lead.status() or {}).get("cluster") or {})  # noqa: E731
                          .get("members", [])) == 3
    check("and is a member again (3 members in the leader's view)",
          poll(members, 10 * ttl))


CASES = [("leader_5xx", leader_case, "5xx"), ("leader_garbage", leader_case, "garbage"),
         ("leader_raw", leader_case, "raw"), ("standby_garbage", standby_case, "garbage"),
         ("standby_5xx", standby_case, "5xx")]


def run(loomship, ec, name, fn, mode, ttl):
    print("case %s" % name)
    c = episodes.Cluster(loomship, ec, "ef%d-%s" % (os.getpid(), name.replace("_", "-")),
                         ttl, sync=1)
    failed = len(FAILS)
    try:
        c.start()
        got = c.wait_acks((0, 0), count=5, deadline=30)
        lead = c.leader()
        check("a leader acknowledges saves", got is not None and lead is not None)
        if got is None or lead is None:
            return
        fn(c, lead, mode, ttl)
        last = c.leader()
        for nd in c.nodes:
            nd.kill()
        report = c.check(seed=0, no_loss=True, leader=last.name if last else None)
        check("history_check: %s" % report.text().splitlines()[0], report.ok,
              report.text())
    finally:
        c.close(keep=len(FAILS) > failed)
        if len(FAILS) > failed:
            print("  kept %s" % c.tmp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("loomship")
    ap.add_argument("--ttl", type=int, default=2)
    ap.add_argument("--cases", default=",".join(c[0] for c in CASES))
    args = ap.parse_args()
    if not etcd.etcd_available():
        print("SKIP: etcd is not installed (etcd-server)")
        return 77
    wanted = args.cases.split(",")
    with etcd.EtcdCluster(3) as ec:
        for name, fn, mode in CASES:
            if name in wanted:
                run(os.path.abspath(args.loomship), ec, name, fn, mode, args.ttl)
    print("FAILED: %s" % FAILS if FAILS else "all passed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
