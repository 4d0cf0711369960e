"""checkpoint_status.py: the commit log in status and metrics (issue 14,
DESIGN section 9).

usage: checkpoint_status.py LOOMSHIP
A primary saving at a steady rate to one standby. On both, status carries
`checkpoint_seq` (how far the checkpoint has brought the image file: never
past the committed position `applied.seq`, and moving) and `commit_log`
(its fill and size), and metrics carry loomship_checkpoint_seq. Once the
primary has stopped, the idle standby's checkpoint reaches its applied seq
and its log holds nothing. Exit 0 when all of that holds."""
import os
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402


def metric(url, name):
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[-1])
    except OSError:
        pass
    return None


def check_node(who, url, failures):
    """checkpoint_seq present, within the committed position, moving."""
    first = systest.status(url) or {}
    if "checkpoint_seq" not in first or "commit_log" not in first:
        failures.append("%s: no checkpoint_seq/commit_log in status: %s" % (who, first))
        return
    applied = first.get("applied", {}).get("seq", 0)
    if first["checkpoint_seq"] > applied:
        failures.append("%s: checkpoint_seq %s past applied %s"
                        % (who, first["checkpoint_seq"], applied))
    log = first["commit_log"]
    if not log.get("size_bytes") or log.get("used_bytes", -1) > log["size_bytes"]:
        failures.append("%s: commit_log fill makes no sense: %s" % (who, log))

    def moved():
        st = systest.status(url) or {}
        return st if st.get("checkpoint_seq", 0) > first["checkpoint_seq"] else None

    if not systest.wait_for(moved, 20):
        failures.append("%s: checkpoint_seq never moved past %s"
                        % (who, first["checkpoint_seq"]))
    if metric(url, "loomship_checkpoint_seq") is None:
        failures.append("%s: no loomship_checkpoint_seq in metrics" % who)


def main():
    loomship = sys.argv[1]
    root = tempfile.mkdtemp(prefix="loomship-ckpt-")
    log = os.path.join(root, "log")
    failures = []
    standby, surl = systest.start_standby(loomship, os.path.join(root, "standby"), log=log)
    if not surl:
        print("FAIL: the standby would not start (log in %s)" % root)
        return 1
    primary, purl, line = systest.start_primary(
        loomship, ["--dir", os.path.join(root, "primary"), "--standby", surl,
                   "--saves", "0"] + systest.SMALL[:-2] + ["--rate", "50"], log)
    if not purl:
        print("FAIL: the primary would not start: %r" % line)
        return 1
    check_node("primary", purl, failures)
    check_node("standby", surl, failures)
    systest.stop(primary)

    def settled():
        st = systest.status(surl) or {}
        applied = st.get("applied", {}).get("seq", -1)
        ok = st.get("checkpoint_seq") == applied and \
            st.get("commit_log", {}).get("used_bytes") == 0
        return st if ok else None

    if not systest.wait_for(settled, 20):
        failures.append("the idle standby's checkpoint never reached its applied "
                        "seq with an empty log: %s" % systest.status(surl))
    systest.stop(standby)
    return systest.report("checkpoint status", failures, root)


if __name__ == "__main__":
    sys.exit(main())
