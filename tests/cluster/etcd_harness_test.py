#!/usr/bin/env python3
"""etcd_harness_test.py LOOMSHIP: the test harness of tests/lib/etcd.py
itself, as part B's episodes use it: a 3-member etcd comes up healthy,
loses a member (kill -9) and keeps quorum, gets it back (restart on its
data dir, the data still there), loses quorum (two stopped: writes fail)
and gets it back; the TCP proxy forwards, blackholes (a client through it
times out: `loomship cluster` exits 2 in bounded time) and forwards again;
close() leaves no etcd process behind."""
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import etcd  # noqa: E402

LOOMSHIP = sys.argv[1]
FAILS = []


def check(cond, what):
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        FAILS.append(what)


def cluster_cmd(endpoints):
    t0 = time.monotonic()
    p = subprocess.run([LOOMSHIP, "cluster", "--etcd", endpoints, "--json"],
                       capture_output=True, text=True, timeout=60)
    return p.returncode, time.monotonic() - t0, p.stderr


def main():
    if not etcd.etcd_available():
        print("SKIP: etcd is not installed")
        return 77
    c = etcd.EtcdCluster(3)
    c.put("/loomship/h/members/a", '{"name":"a","url":"http://x","role":"standby"}')
    c.kill(1)
    check(not c.running(1), "kill -9 of member 1")
    c.put("/loomship/h/k", "with two of three")
    check(c.get_prefix("/loomship/h/")["/loomship/h/k"] == "with two of three",
          "two of three members keep quorum")
    c.restart(1)
    check(c.get_prefix("/loomship/h/", i=1).get("/loomship/h/k") == "with two of three",
          "member 1 restarted on its data dir, caught up")
    c.stop(0)
    c.stop(2)
    try:
        c.put("/loomship/h/k", "no quorum", i=1)
        lost = False
    except OSError:
        lost = True
    check(lost, "two of three stopped: a write fails (no quorum)")
    c._spawn(0)
    c._spawn(2)
    c.wait_healthy()
    check(all(c.running(i) for i in range(3)), "quorum back: all three healthy again")

    with etcd.TcpProxy(c.client_url(0)) as proxy:
        rc, _, _ = cluster_cmd(proxy.url)
        check(rc == 0, "loomship cluster through the proxy")
        proxy.blackhole(True)
        try:
            urllib.request.urlopen(proxy.url + "/health", timeout=1).read()
            black = False
        except OSError:
            black = True
        check(black, "blackholed: connects, nothing answers")
        rc, took, err = cluster_cmd(proxy.url)
        check(rc == 2 and "unreachable" in err and took < 10,
              "loomship cluster through the blackhole: exit 2 after %.1f s (%s)" % (took, err.strip()))
        rc, took, _ = cluster_cmd(proxy.url + "," + c.client_url(1))
        check(rc == 0, "... and past it to the next endpoint (%.1f s)" % took)
        proxy.blackhole(False)
        rc, _, _ = cluster_cmd(proxy.url)
        check(rc == 0, "forwarding again")
    c.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists("/proc/%d" % x.pid) for x in c.procs):
        time.sleep(0.05)
    left = [p for p in [x.pid for x in c.procs] if os.path.exists("/proc/%d" % p)]
    check(not left, "close() left no etcd process (%s)" % left)
    check(not os.path.exists(c.dir), "close() removed the data dirs")
    print("%d failed" % len(FAILS))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
