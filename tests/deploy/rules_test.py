#!/usr/bin/env python3
"""rules_test.py: the Prometheus rules and the Grafana dashboard in deploy/.
The rules are valid and fire as their unit tests say (promtool check/test
rules), the dashboard is JSON, and every metric either of them names is one
that a real primary or standby exports. Skips (77) without promtool
(Debian's prometheus package)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

here = os.path.dirname(os.path.abspath(__file__))
src = os.path.dirname(os.path.dirname(here))
sys.path.insert(0, os.path.join(src, "tests", "system"))
import systest  # noqa: E402

RULES = os.path.join(src, "deploy", "prometheus", "loomship.rules.yml")
RULE_TESTS = os.path.join(src, "deploy", "prometheus", "loomship.rules.test.yml")
DASHBOARD = os.path.join(src, "deploy", "grafana", "loomship.json")
results = {"passed": 0, "failed": 0}


def check(what, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print("%s: %s%s" % ("ok" if ok else "FAIL", what, "" if ok or not detail else " (%s)" % detail))


def metrics(url):
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        return r.read().decode()


def scrape_nodes(loomship, root):
    """/metrics of a standby and of a primary shipping to it."""
    sproc, surl = systest.start_standby(loomship, os.path.join(root, "s"))
    primary = systest.spawn(
        [loomship, "primary", "--dir", os.path.join(root, "p"), "--standby", surl,
         "--listen", "127.0.0.1:0", "--saves", "0"] + systest.SMALL,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = primary.stdout.readline().decode()
    purl = line.split("listening on ", 1)[1].split()[0]
    systest.wait_applied(surl, 5, 10)  # something shipped, lag measured
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the skew estimate needs a frame
        if "loomship_clock_skew_seconds" in metrics(surl):
            break
        time.sleep(0.05)
    text = metrics(purl) + metrics(surl)
    primary.send_signal(signal.SIGTERM)
    primary.communicate(timeout=60)
    systest.stop(sproc)
    return text


def main():
    loomship = sys.argv[1]
    if not shutil.which("promtool"):
        print("no promtool (Debian's prometheus package): skipped")
        return 77
    for args in (["check", "rules", RULES], ["test", "rules", RULE_TESTS]):
        r = subprocess.run(["promtool"] + args, capture_output=True, text=True)
        check("promtool %s" % " ".join(args[:2]), r.returncode == 0, r.stdout + r.stderr)
    try:
        with open(DASHBOARD) as f:
            json.load(f)
        check("the dashboard is JSON", True)
    except ValueError as e:
        check("the dashboard is JSON", False, str(e))
    root = tempfile.mkdtemp(prefix="loomship-rules-")
    exported = scrape_nodes(loomship, root)
    names = set()
    for path in (RULES, DASHBOARD):
        with open(path) as f:
            names |= set(re.findall(r"\bloomship_[a-z_]+", f.read()))
    names.discard("loomship_replication")  # the dashboard's title
    for n in sorted(names):
        check("metric %s is exported" % n,
              re.search(r"^(# TYPE )?%s[ {]" % n, exported, re.M) is not None)
    shutil.rmtree(root, ignore_errors=True)
    print("%d passed, %d failed" % (results["passed"], results["failed"]))
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
