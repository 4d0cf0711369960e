"""commit_log_size.py: --commit-log-mb through the command (issue 14,
DESIGN section 9; docs/OPERATIONS.md "The commit log's size").

usage: commit_log_size.py LOOMSHIP
1. A standby and a primary started with --commit-log-mb 2: both report
   commit_log.size_bytes = 2 MiB. Saves of 64 pages (about 1 MiB each)
   do not fit twice in the primary's ring, so commit_log.waits grows;
   the merge state stays within 1/16 of the ring and the primary reports
   its RECENT index (commit_log.recent_bytes), in status and metrics.
   Once both stop, every save the primary acknowledged (--ack-log) is
   the position both directories hold, their images are the same, and
   the primary's log file is no larger than the ring. (A standby that
   fell behind may take a merged frame larger than its ring, which
   grows the ring for it until the next record that fits: its figures
   are polled for, and its file not checked.)
2. Both restarted on the same directories without the option: the size
   follows (64 MiB, the default), saves go on from where they were, and
   again nothing acknowledged is lost.
3. 0, garbage and a size past the cap are refused with a one-line error
   naming the option (exit 2).
Exit 0 when all of that holds."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

MIB = 1 << 20
# 64 values, each on its own page: a record of about 1 MiB per save.
WORKLOAD = ["--keys", "256", "--arena-pages", "512", "--pages", "64",
            "--rate", "1000", "--saves", "0"]


def commit_log(url):
    return (systest.status(url) or {}).get("commit_log")


def last_ack(path):
    """(epoch, seq, checksum) of the ack log's last line, or None."""
    try:
        with open(path) as f:
            lines = [l.split() for l in f if l.endswith("\n")]
    except FileNotFoundError:
        return None
    return (int(lines[-1][0]), int(lines[-1][1]), lines[-1][2]) if lines else None


def check_sizes(c, who, url, size):
    log = systest.wait_for(lambda: (commit_log(url) or {}).get("size_bytes") == size
                           and commit_log(url), 10) or commit_log(url) or {}
    c.check(log.get("size_bytes") == size,
            "%s: commit_log.size_bytes is %s (want %d)" % (who, log.get("size_bytes"), size))
    for key in ("merge_bytes", "merge_peak_bytes", "recent_bytes"):
        c.check(key in log, "%s: commit_log.%s reported" % (who, key))


def run_pair(c, loomship, pdir, sdir, acks, extra, size, want_waits):
    """Start a standby and a primary with extra, check the ring's size (and,
    with want_waits, that saves waited for it), stop both; returns the
    standby's and the primary's last commit_log objects."""
    standby, surl = systest.start_standby(loomship, sdir, log=c.log, extra=extra)
    c.check(surl is not None, "standby %s started" % extra)
    if not surl:
        return None
    primary, purl, line = systest.start_primary(
        loomship, ["--dir", pdir, "--standby", surl, "--ack-log", acks] + WORKLOAD + extra,
        c.log)
    c.check(purl is not None, "primary %s started: %r" % (extra, line))
    if not purl:
        systest.stop(standby)
        return None
    check_sizes(c, "primary", purl, size)
    check_sizes(c, "standby", surl, size)
    start = (systest.status(purl) or {}).get("applied", {}).get("seq", 0)

    def progressed():
        st = systest.status(purl) or {}
        log = st.get("commit_log", {})
        moved = st.get("applied", {}).get("seq", 0) >= start + 20
        return log if moved and (log.get("waits", 0) > 0 or not want_waits) else None

    plog = systest.wait_for(progressed, 30)
    c.check(bool(plog), "primary: 20 saves%s (%s)"
            % (" and commit_log.waits > 0" if want_waits else "", commit_log(purl)))
    plog = plog or commit_log(purl) or {}
    c.check(0 < plog.get("merge_peak_bytes", 0) <= size // 16,
            "primary: merge_peak_bytes %s within 1/16 of the ring"
            % plog.get("merge_peak_bytes"))
    # RECENT's index: at least 256 pages of 64 bytes (where each version
    # is in the log; before this, a 16 KiB copy of each page).
    c.check(256 * 64 <= plog.get("recent_bytes", 0) < 256 * 16384,
            "primary: recent_bytes %s (RECENT's index)" % plog.get("recent_bytes"))
    metrics = systest.metrics(purl)
    for name in ("loomship_commit_log_merge_bytes", "loomship_commit_log_merge_peak_bytes",
                 "loomship_commit_log_recent_bytes"):
        c.check("\n%s " % name in metrics, "primary: metric %s" % name)
    line = "\nloomship_commit_log_size_bytes %d\n" % size
    c.check(systest.wait_for(lambda: line in systest.metrics(surl), 10),
            "standby: loomship_commit_log_size_bytes %d" % size)
    slog = commit_log(surl) or {}
    c.check(systest.stop(primary) == 0, "primary stopped with every save on the standby")
    c.check(systest.stop(standby) == 0, "standby stopped")
    return slog, plog


def check_nothing_lost(c, loomship, pdir, sdir, acks, phase):
    ack = last_ack(acks)
    ip = systest.inspect(loomship, pdir) or {}
    c.check(ack is not None and (ip.get("epoch"), ip.get("seq"), ip.get("checksum")) == ack,
            "%s: the last acknowledged save %s is the primary's position %s"
            % (phase, ack, (ip.get("epoch"), ip.get("seq"), ip.get("checksum"))))
    problems = systest.compare_nodes(loomship, pdir, sdir)
    c.check(not problems, "%s: primary and standby hold the same image %s" % (phase, problems))
    return ack


def refused(loomship, value):
    r = subprocess.run([loomship, "standby", "--dir", "/nonexistent/x", "--listen",
                        "127.0.0.1:0", "--commit-log-mb", value], capture_output=True)
    err = r.stderr.decode(errors="replace")
    return r.returncode == 2 and "--commit-log-mb" in err and len(err.splitlines()) == 1


def main():
    loomship = sys.argv[1]
    root = tempfile.mkdtemp(prefix="loomship-clsize-")
    c = systest.Checks(root)
    pdir, sdir = c.path("primary"), c.path("standby")
    acks = c.path("acks")

    got = run_pair(c, loomship, pdir, sdir, acks, ["--commit-log-mb", "2"], 2 * MIB, True)
    if got:
        first = check_nothing_lost(c, loomship, pdir, sdir, acks, "--commit-log-mb 2")
        size = os.path.getsize(os.path.join(pdir, "log"))
        c.check(size <= 2 * MIB, "primary: DIR/log is %d bytes, within the ring" % size)
        got = run_pair(c, loomship, pdir, sdir, acks, [], 64 * MIB, False)
        if got:
            second = check_nothing_lost(c, loomship, pdir, sdir, acks, "the default")
            c.check(first and second and second[1] > first[1],
                    "saves went on after the restart (%s -> %s)" % (first, second))

    for value in ("0", "two", "16385"):
        c.check(refused(loomship, value), "--commit-log-mb %s refused (exit 2, one line)"
                % value)
    return systest.report("commit log size", c.failures, root)


if __name__ == "__main__":
    sys.exit(main())
