#!/usr/bin/env python3
"""delayed_standby.py LOOMSHIP: `loomship standby --apply-delay SECONDS`
(DESIGN section 7, "Delayed standby"), as processes on 127.0.0.1.

1. Trailing: a primary saving at 20 Hz ships to a standby with
   --apply-delay 2, started 2 s after it (so catching up would take merged
   frames, which a delayed standby refuses for single ones). The standby receives at once (received close to the
   primary's seq) but every position it applied was committed at least 2 s
   before (applied.at, sampled); it trails by about 2 s; status shows the
   delay; /readyz says ready and `status --check --max-lag 1` healthy (lag
   minus delay).
2. Restart: the primary stops (drained: the standby received everything);
   SIGTERM of the standby leaves the young commits unapplied (inspect)
   and in its receive log: started again with no primary, it still holds
   them (received) and applies them once they are 2 s old, ending on the
   primary's position byte for byte.
3. Promotion: a primary saving to two delayed standbys stops; promote
   without --force applies only the commits already 2 s old (the new epoch
   begins below the primary's last seq, the younger commits discarded and
   logged); promote --force applies all (the new epoch at the last seq).
Exit 0 passed, 1 failed."""
import calendar
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

DELAY = 2.0
WORKLOAD = ["--keys", "64", "--arena-pages", "256", "--pages", "2", "--rate", "20",
            "--saves", "0"]


def at_seconds(text):
    """RFC 3339 "2026-12-06T20:21:23.363935493Z" as seconds since the epoch."""
    whole, _, frac = text.rstrip("Z").partition(".")
    t = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return t + (float("0." + frac) if frac else 0.0)


def readyz(url):
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def start_delayed(loomship, root, name, port=0):
    proc, url = systest.start_standby(loomship, os.path.join(root, name), port=port,
                                      log=os.path.join(root, name + ".log"),
                                      extra=["--apply-delay", "%g" % DELAY])
    return proc, url


def primary(loomship, root, standbys):
    args = ["--dir", os.path.join(root, "p")] + WORKLOAD
    for u in standbys:
        args += ["--standby", u]
    proc, url, _ = systest.start_primary(loomship, args, os.path.join(root, "p.log"))
    return proc, url


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_trailing(loomship, root, fails):
    # The primary saves for 2 s before the standby starts: catching up, it
    # would send merged frames; the delayed standby refuses those holding
    # young commits and says single_frames, so it gets single commits.
    port = free_port()
    pp, purl = primary(loomship, root, ["http://127.0.0.1:%d" % port])
    systest.wait_for(lambda: (systest.status(purl) or {}).get("applied", {})
                     .get("seq", 0) >= 40, 20)
    sb, url = start_delayed(loomship, root, "s", port=port)
    if not url or not purl:
        fails.append("the standby or the primary did not start")
        return sb, url, pp
    worst, samples, trail = None, 0, []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 6:
        st, ps = systest.status(url), systest.status(purl)
        now = time.time()
        if st and st["applied"]["seq"] > 0 and st["applied"].get("at"):
            age = now - at_seconds(st["applied"]["at"])
            worst = age if worst is None else min(worst, age)
            samples += 1
            if ps:
                trail.append((ps["applied"]["seq"] - st["received"]["seq"],
                              st["received"]["seq"] - st["applied"]["seq"], age))
        time.sleep(0.1)
    print("  %d samples; the youngest applied commit was %.3f s old; last (primary - "
          "received, received - applied, age): %s" % (samples, worst or 0, trail[-1:]))
    if samples < 10 or worst is None or worst < DELAY - 0.02:
        fails.append("a commit younger than the delay was applied (youngest %.3f s, "
                     "%d samples)" % (worst or -1, samples))
    if not trail or max(a for a, _, _ in trail[-5:]) > 10:
        fails.append("the standby does not receive at once: %s" % trail[-5:])
    if not trail or min(b for _, b, _ in trail[-5:]) < 20 or \
            max(c for _, _, c in trail[-5:]) > DELAY + 1.5:
        fails.append("applied does not trail received by about %g s: %s" % (DELAY, trail[-5:]))
    st = systest.status(url) or {}
    if (st.get("apply_delay") or {}).get("seconds") != DELAY:
        fails.append("status does not show the delay: %s" % st.get("apply_delay"))
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
            metrics = r.read().decode()
    except OSError:
        metrics = ""
    if "\nloomship_apply_delay_seconds 2\n" not in metrics:
        fails.append("/metrics has no loomship_apply_delay_seconds 2")
    if readyz(url) != 200:
        fails.append("/readyz is not 200 on a standby within its delay")
    chk = subprocess.run([loomship, "status", url, "--check", "--max-lag", "1"],
                         capture_output=True, text=True)
    if chk.returncode != 0:
        fails.append("status --check --max-lag 1 is not healthy: %s" % chk.stdout.strip())
    return sb, url, pp


def part_restart(loomship, root, sb, url, pp, fails):
    if systest.stop(pp) != 0:
        fails.append("the primary did not stop with everything held by the standby")
    final = systest.inspect(loomship, os.path.join(root, "p"))
    st = systest.status(url) or {}
    received = st.get("received", {}).get("seq")
    if not final or received != final["seq"]:
        fails.append("the standby had not received the primary's last seq %s: %s" % (
            final and final["seq"], received))
        return
    port = int(url.rsplit(":", 1)[1])
    if systest.stop(sb) != 0:
        fails.append("the delayed standby did not exit 0 on SIGTERM")
    held = systest.inspect(loomship, os.path.join(root, "s"))
    print("  stopped: primary seq %d, standby image seq %d" % (final["seq"], held["seq"]))
    if held["seq"] >= final["seq"]:
        fails.append("SIGTERM applied commits younger than the delay (image at %d, "
                     "last %d)" % (held["seq"], final["seq"]))
    sb, url = start_delayed(loomship, root, "s", port=port)
    st = systest.status(url) or {}
    if st.get("received", {}).get("seq") != final["seq"]:
        fails.append("restarted, it does not hold the received commits: %s" % st.get("received"))
    worst, done = None, False
    deadline = time.monotonic() + DELAY + 10
    while not done and time.monotonic() < deadline:
        ap = (systest.status(url) or {}).get("applied", {})
        if ap.get("seq", 0) > held["seq"] and ap.get("at"):
            age = time.time() - at_seconds(ap["at"])
            worst = age if worst is None else min(worst, age)
        done = ap.get("seq") == final["seq"]
        time.sleep(0.05)
    if worst is not None and worst < DELAY - 0.02:
        fails.append("after the restart a commit %.3f s old was applied" % worst)
    if not done:
        fails.append("the kept commits were not applied after their delay")
    if systest.stop(sb) != 0:
        fails.append("the restarted standby did not exit 0")
    problems = systest.compare_nodes(loomship, os.path.join(root, "p"),
                                     os.path.join(root, "s"))
    fails.extend("after the restart: " + p for p in problems)


def part_promote(loomship, root, fails):
    a, ua = start_delayed(loomship, root, "a")
    b, ub = start_delayed(loomship, root, "b")
    pp, _ = primary(loomship, root, [ua, ub])
    seq0 = (systest.inspect(loomship, os.path.join(root, "p")) or {}).get("seq", 0)
    systest.wait_for(lambda: (systest.status(ua) or {}).get("applied", {}).get("seq", 0)
                     > seq0 + 10, 20)
    systest.stop(pp)
    final = systest.inspect(loomship, os.path.join(root, "p"))["seq"]
    got_a = subprocess.run([loomship, "promote", ua], capture_output=True, text=True)
    got_b = subprocess.run([loomship, "promote", ub, "--force"], capture_output=True,
                           text=True)
    sa, sb_ = systest.status(ua) or {}, systest.status(ub) or {}
    seq_a, seq_b = sa.get("applied", {}).get("seq"), sb_.get("applied", {}).get("seq")
    print("  primary's last seq %d; promoted: without --force at %s, --force at %s" % (
        final, seq_a, seq_b))
    if got_a.returncode != 0 or sa.get("role") != "primary":
        fails.append("promote without --force failed: %s %s" % (got_a.stdout, got_a.stderr))
    elif not seq_a or seq_a >= final or seq_a < final - 60:
        fails.append("promote without --force did not stop at the delay boundary: "
                     "seq %s, last %d" % (seq_a, final))
    with open(os.path.join(root, "a.log"), errors="replace") as f:
        if "younger than the apply delay and are discarded" not in f.read():
            fails.append("the discarded commits are not logged")
    if got_b.returncode != 0 or sb_.get("role") != "primary" or seq_b != final:
        fails.append("promote --force did not apply everything: seq %s, last %d (%s)" % (
            seq_b, final, got_b.stdout + got_b.stderr))
    for p in (a, b):
        systest.stop(p)


def main():
    loomship = os.path.abspath(sys.argv[1])
    root = tempfile.mkdtemp(prefix="loomship-delayed-")
    fails = []
    print("== trailing by the delay")
    sb, url, pp = part_trailing(loomship, root, fails)
    print("== SIGTERM and restart keep the young commits")
    if url:
        part_restart(loomship, root, sb, url, pp, fails)
    print("== promotion: the delay boundary, and --force")
    root2 = os.path.join(root, "promote")
    os.mkdir(root2)
    part_promote(loomship, root2, fails)
    return systest.report("delayed_standby", fails, root)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(main())
