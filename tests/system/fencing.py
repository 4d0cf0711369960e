#!/usr/bin/env python3
"""fencing.py: who may fence a primary, and what a fenced primary does
(issue 11; DESIGN sections 3 and 5).
  1. A promoted standby of the primary's own history fences it: the
     primary saves nothing more and exits 3, also when the fence arrives
     after its last save and SIGTERM ends it.
  2. A node of another history with a newer epoch (an empty standby
     promoted with --force) does not fence it: the primary shows that
     standby `diverged` and exits 4, never 3.
usage: fencing.py LOOMSHIP"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

results = {"passed": 0, "failed": 0}


def check(what, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print("%s: %s%s" % ("ok" if ok else "FAIL", what, "" if ok else " (%s)" % detail))


def start_primary(loomship, d, surl, ack):
    proc = systest.spawn(
        [loomship, "primary", "--dir", d, "--standby", surl, "--listen", "127.0.0.1:0",
         "--saves", "0", "--rate", "20", "--ack-log", ack] + systest.SMALL[:6],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline().decode()
    return proc, line.split("listening on ", 1)[1].split()[0]


def promote(url, force=False):
    req = urllib.request.Request(url + "/v1/promote" + ("?force=1" if force else ""),
                                 method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_for(pred, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    return None


def own_history_fences(loomship, root):
    sproc, surl = systest.start_standby(loomship, os.path.join(root, "s1"))
    ack = os.path.join(root, "acks1")
    proc, purl = start_primary(loomship, os.path.join(root, "p1"), surl, ack)
    wait_for(lambda: (systest.status(surl) or {}).get("applied", {}).get("seq", 0) >= 5, 10)
    code, _ = promote(surl)
    check("the standby of its history is promoted", code == 200, code)
    fenced = wait_for(lambda: (systest.status(purl) or {}).get("fenced"), 15)
    check("the primary says it is fenced", fenced)
    acks_then = open(ack).read().count("\n")
    time.sleep(0.3)  # checks that nothing happens: no save is acknowledged
    check("no save is acknowledged once fenced", open(ack).read().count("\n") == acks_then)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    check("the fenced primary exits 3", proc.returncode == 3,
          "%s: %s" % (proc.returncode, err.decode(errors="replace")[-300:]))
    systest.stop(sproc)


def other_history_does_not_fence(loomship, root):
    sproc, surl = systest.start_standby(loomship, os.path.join(root, "s2"))
    code, body = promote(surl, force=True)  # an empty standby: a new history, epoch 2
    check("an empty standby is promoted with --force", code == 200, body)
    proc, purl = start_primary(loomship, os.path.join(root, "p2"), surl,
                               os.path.join(root, "acks2"))
    state = wait_for(lambda: ((systest.status(purl) or {}).get("standbys") or [{}])[0]
                     .get("state") == "diverged", 15)
    st = systest.status(purl) or {}
    check("the primary shows the other history's node diverged", state,
          json.dumps(st.get("standbys")))
    check("... and is not fenced", st.get("fenced") is False, st.get("fenced"))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    check("the primary exits 4, not 3", proc.returncode == 4,
          "%s: %s" % (proc.returncode, err.decode(errors="replace")[-300:]))
    systest.stop(sproc)


def main():
    loomship = os.path.abspath(sys.argv[1])
    root = tempfile.mkdtemp(prefix="loomship-fencing-")
    own_history_fences(loomship, root)
    other_history_does_not_fence(loomship, root)
    print("%d passed, %d failed" % (results["passed"], results["failed"]))
    if results["failed"]:
        print("kept %s" % root)
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
