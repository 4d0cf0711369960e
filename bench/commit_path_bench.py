#!/usr/bin/env python3
"""commit_path_bench.py: sustained saves kept up by one standby (issue 14).

Black-box, as deployed: `loomship primary` (the bundled example, K values
changed per save, --rate far above what it reaches) ships to one
`loomship standby`, every directory on the same disk. After a warm-up the
standby's applied seq is read twice, --seconds apart, so start-up and
drain cancel: saves/s kept up = the applied seqs between the two reads /
the time between them (the primary's own rate is printed beside it).

The limit, measured in the same run and on the same disk, alternating
with loomship's runs so that a change of load weighs on both: a
back-to-back loop of pwrite + fdatasync of the same bytes a save of K
values writes (K pages of 16 KiB: the example puts each value on a page
of its own), rewriting one file in place.

Goals (issue 14): >= 0.40x the loop for K = 64, >= 0.30x for K = 1.
Beside it, each process's CPU time (user + system, from /proc) over the
same stretch per save the primary made: a figure a shared, loaded machine
moves much less than the rates, since both processes are CPU-bound there.
Prints "RESULT name median min max unit reference ratio" lines like the
other benchmarks.

With --rate R the primary saves R times a second instead of as fast as
it can: the CPU per save is then compared at the same work per second
(at full rate the shipper merges frames for a standby that is behind and
the standby applies them in groups, which moves the CPU per save with
the load), and "kept up" only says whether the pair held R.

With --commit-log-mb M both nodes run with a commit log of M MiB (the
default is 64): the checkpoint gathers a quarter of it, so on a larger
ring it writes a page rewritten by many saves once.

Usage: commit_path_bench.py LOOMSHIP [--seconds S] [--repeats N]
       [--pages 64,1] [--dir DIR] [--rate R] [--commit-log-mb M]
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

PAGE = 16384


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def listening_url(path, proc, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"exited ({proc.returncode}) before listening: see {path}")
        with open(path) as f:
            for line in f:
                if line.startswith("listening on "):
                    return line.split()[2]
        time.sleep(0.05)
    raise RuntimeError(f"no 'listening on' line in {path}")


def applied_seq(url):
    return get_json(url + "/v1/status")["applied"]["seq"]


def cpu_ms(pid):
    """User + system CPU time of a process so far, in ms."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def loop_rate(work, k, seconds):
    """Back-to-back pwrite + fdatasync of k pages, rewriting in place."""
    return rewrite_rate(os.path.join(work, "limit"), k * PAGE, seconds)


def rewrite_rate(path, nbytes, seconds):
    """Writes a second of a loop of pwrite (nbytes of random bytes, offset
    0 of a new file at path) + fdatasync, for seconds; the file removed."""
    data = os.urandom(nbytes)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            os.pwrite(fd, data, 0)
            os.fdatasync(fd)
            n += 1
        return n / (time.monotonic() - t0)
    finally:
        os.close(fd)
        os.unlink(path)


def loomship_rate(loomship, work, k, seconds, rate=100000, warmup=2.0, node_args=()):
    """Saves/s the standby applied, the primary's saves/s, and the primary's
    and the standby's CPU ms per save the primary made, in one run."""
    procs = []
    try:
        slog = os.path.join(work, "s.log")
        with open(slog, "w") as log:
            procs.append(subprocess.Popen(
                [loomship, "standby", "--dir", os.path.join(work, "s"),
                 "--listen", "127.0.0.1:0", *node_args], stdout=log, stderr=subprocess.STDOUT))
        surl = listening_url(slog, procs[0])
        plog = os.path.join(work, "p.log")
        with open(plog, "w") as log:
            procs.append(subprocess.Popen(
                [loomship, "primary", "--dir", os.path.join(work, "p"),
                 "--rate", str(rate), "--pages", str(k),
                 "--listen", "127.0.0.1:0", "--standby", surl, *node_args],
                stdout=log, stderr=subprocess.STDOUT))
        purl = listening_url(plog, procs[1])
        time.sleep(warmup)  # the measured stretch starts after the warm-up
        s0, p0, t0 = applied_seq(surl), applied_seq(purl), time.monotonic()
        c0 = [cpu_ms(p.pid) for p in procs]
        time.sleep(seconds)  # the measured stretch itself
        s1, p1, t1 = applied_seq(surl), applied_seq(purl), time.monotonic()
        c1 = [cpu_ms(p.pid) for p in procs]
        n = max(p1 - p0, 1)
        return ((s1 - s0) / (t1 - t0), (p1 - p0) / (t1 - t0),
                (c1[1] - c0[1]) / n, (c1[0] - c0[0]) / n)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    loomship = os.path.abspath(sys.argv[1])
    seconds, repeats, ks, root, rate, node_args = 5.0, 3, [64, 1], None, 100000, []
    argv = sys.argv[2:]
    while argv:
        if argv[0] == "--seconds":
            seconds = float(argv[1])
        elif argv[0] == "--repeats":
            repeats = int(argv[1])
        elif argv[0] == "--pages":
            ks = [int(x) for x in argv[1].split(",")]
        elif argv[0] == "--dir":
            root = argv[1]
        elif argv[0] == "--rate":
            rate = int(argv[1])
        elif argv[0] == "--commit-log-mb":
            node_args = ["--commit-log-mb", str(int(argv[1]))]
        else:
            print(__doc__, file=sys.stderr)
            return 2
        argv = argv[2:]
    ring = node_args[1] if node_args else ""
    print(f"# commit path: saves/s one standby keeps up with, against a pwrite+fdatasync "
          f"loop of the same bytes; {seconds:g} s per run, {repeats} runs, alternating; "
          f"commit log {ring or 'default'}{' MiB' if ring else ''}")
    suffix = f"_log{ring}mb" if ring else ""
    for k in ks:
        kept, made, limit, cpu_p, cpu_s = [], [], [], [], []
        for r in range(repeats):
            work = tempfile.mkdtemp(prefix="loomship-commit-", dir=root)
            try:
                limit.append(loop_rate(work, k, seconds))
                a, p, cp, cs = loomship_rate(loomship, work, k, seconds, rate,
                                             node_args=node_args)
                kept.append(a)
                made.append(p)
                cpu_p.append(cp)
                cpu_s.append(cs)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(f"# K={k} run {r + 1}: standby applied {kept[-1]:.1f}/s, primary saved "
                  f"{made[-1]:.1f}/s, loop {limit[-1]:.1f}/s; CPU per save: primary "
                  f"{cpu_p[-1]:.2f} ms, standby {cpu_s[-1]:.2f} ms", flush=True)
        m, ml = statistics.median(kept), statistics.median(limit)
        print(f"# K={k}: kept up {m:.1f} saves/s (primary {statistics.median(made):.1f}); "
              f"loop {ml:.1f}/s; ratio {m / ml:.2f}x")
        print(f"RESULT commit_path_kept_up_k{k}{suffix} {m:.6g} {min(kept):.6g} {max(kept):.6g} "
              f"saves/s pwrite+fdatasync={ml:.6g} {m / ml:.4f}")
        for who, v in (("primary", cpu_p), ("standby", cpu_s)):
            print(f"RESULT commit_path_cpu_{who}_k{k}{suffix} {statistics.median(v):.4g} "
                  f"{min(v):.4g} {max(v):.4g} ms/save")
    return 0


if __name__ == "__main__":
    sys.exit(main())
