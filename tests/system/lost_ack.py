#!/usr/bin/env python3
"""lost_ack.py: a standby killed (-9) under load loses answers it never
sent; what it holds is the same history, so the primary resends from the
standby's position and never needs a base image (issue 11: "idempotence
holds across lost acks"; by hand, about one kill in four cost a base image
before merged frames that overlap were recognised).

usage: lost_ack.py LOOMSHIP [--kills N] [--seed S]
Exit 0 when, after N kills at random instants while the primary saves 200
times a second (64 values per save), the primary's status shows no base
image sent to the standby and both images are identical."""
import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402


def start_standby_on(loomship, directory, port, log):
    """Start a standby on port (the primary keeps its URL), retrying while
    the kernel still holds the port of the killed one."""
    deadline = time.monotonic() + 10
    while True:
        proc, url = systest.start_standby(loomship, directory, port, log=log)
        if url:
            return proc, url
        systest.stop(proc, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError("the standby would not start again on port %d" % port)
        time.sleep(0.1)


def wait_caught_up(purl, surl, timeout):
    """Wait until the standby has applied what the primary had committed
    when the wait began. (Not the primary's newest seq at each look: it
    saves 200 times a second, and a standby a few frames behind, as under
    ASan, would never meet a moving target.)"""
    deadline = time.monotonic() + timeout
    target = 0
    while time.monotonic() < deadline:
        if not target:
            target = ((systest.status(purl) or {}).get("applied") or {}).get("seq", 0)
        s = systest.status(surl)
        if target and s and s["applied"]["seq"] >= target:
            return True
        time.sleep(0.02)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("loomship")
    ap.add_argument("--kills", type=int, default=16)
    ap.add_argument("--seed", type=int)
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    root = tempfile.mkdtemp(prefix="loomship-lostack-")
    sdir, pdir = os.path.join(root, "standby"), os.path.join(root, "primary")
    log = os.path.join(root, "log")
    failures = []
    standby, surl = start_standby_on(a.loomship, sdir, 0, log)
    port = int(surl.rsplit(":", 1)[1])
    primary, purl, line = systest.start_primary(
        a.loomship, ["--dir", pdir, "--standby", surl, "--rate", "200",
                     "--pages", "64", "--keys", "512", "--arena-pages", "4096",
                     "--saves", "0"], log)
    if not purl:
        print("FAIL: the primary would not start: %r" % line)
        return 1
    for k in range(a.kills):
        if not wait_caught_up(purl, surl, 30):
            failures.append("kill %d: the standby did not catch up within 30 s" % k)
            break
        time.sleep(rng.uniform(0.05, 0.5))  # a random instant under load
        systest.stop(standby, signal.SIGKILL)
        standby, surl = start_standby_on(a.loomship, sdir, port, log)
    if not wait_caught_up(purl, surl, 30):
        failures.append("the standby did not catch up after the last kill")
    st = systest.status(purl) or {}
    peers = st.get("standbys") or [{}]
    bases = peers[0].get("base_images")
    print("primary at seq %s; %d kills; base images sent: %s"
          % (st.get("applied", {}).get("seq"), a.kills, bases))
    # The standby's own word, which does not depend on the primary's status.
    with open(log, errors="replace") as f:
        installed = sum(1 for l in f if "standby: base image at epoch" in l)
    print("standby installed %d base images" % installed)
    if bases != 0 or installed != 0:
        failures.append("the primary sent %s base images to a standby of its own "
                        "history, the standby installed %d (last error: %s)"
                        % (bases, installed, peers[0].get("last_error")))
    primary.send_signal(signal.SIGTERM)
    out, _ = primary.communicate(timeout=60)
    if primary.returncode != 0:
        failures.append("the primary exited %s: %s" % (primary.returncode,
                                                      out.decode(errors="replace")[-300:]))
    systest.stop(standby)
    failures += systest.compare_nodes(a.loomship, pdir, sdir)
    for f in failures:
        print("FAIL: %s" % f)
    print("lost acks: %d passed, %d failed (seed %d)" % (0 if failures else 1,
                                                          1 if failures else 0, seed))
    if failures:
        print("repeat: %s %s --kills %d --seed %d (log in %s)"
              % (sys.argv[0], a.loomship, a.kills, seed, root))
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
