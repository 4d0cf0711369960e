#!/usr/bin/env python3
"""scale_bench.py: loomship as separate processes, as deployed (issue 7 item 6).

One `loomship primary` (the example application, 64 pages changed per save,
100 saves/s) shipping to M `loomship standby` processes, M = 1, 2, 4, 8, all
on 127.0.0.1 with temporary directories, for --seconds per M. Measured per M:

  - primary CPU: (utime + stime) from /proc/PID/stat over the loaded part
    of the run, in cores;
  - standby CPU: the same, summed over the standbys;
  - memory: the primary's VmRSS half a second after it starts and its
    VmHWM (peak) at the end; the standbys' VmRSS before the primary starts
    (at rest) and their largest VmHWM;
  - lag: the worst standby's lag (frames and seconds) from the primary's
    GET /v1/status, sampled every 0.2 s: median and max.

Every directory shares this machine's one disk (as in lag_bench and
pg_bench.sh). Prints "RESULT name median min max unit reference ratio"
lines like the other benchmarks.

Usage: scale_bench.py LOOMSHIP [--seconds S] [--counts 1,2,4,8]
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

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def get_json(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.load(r)


def start(args, log):
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def listening_url(path, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith("listening on "):
                        return line.split()[2]
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no 'listening on' line in {path}")


def run(loomship, m, seconds, work):
    standbys, urls = [], []
    for i in range(m):
        log = open(os.path.join(work, f"s{i}.log"), "w")
        standbys.append(start([loomship, "standby", "--dir", os.path.join(work, f"s{i}"),
                               "--listen", "127.0.0.1:0"], log))
        urls.append(listening_url(log.name))
    time.sleep(0.3)
    standby_rest = max(status_kib(p.pid, "VmRSS") for p in standbys)
    args = [loomship, "primary", "--dir", os.path.join(work, "p"), "--rate", "100",
            "--pages", "64", "--saves", "0", "--listen", "127.0.0.1:0"]
    for u in urls:
        args += ["--standby", u]
    plog = open(os.path.join(work, "p.log"), "w")
    primary = start(args, plog)
    purl = listening_url(plog.name)
    time.sleep(0.5)
    primary_start_rss = status_kib(primary.pid, "VmRSS")
    c0 = cpu_seconds(primary.pid)
    s0 = sum(cpu_seconds(p.pid) for p in standbys)
    t0 = time.time()
    frames, secs = [], []
    while time.time() - t0 < seconds:
        try:
            st = get_json(purl + "/v1/status")
            sb = st.get("standbys", [])
            if len(sb) == m:
                frames.append(max(s["lag"]["frames"] for s in sb))
                secs.append(max(s["lag"]["seconds"] for s in sb))
        except OSError:
            pass
        time.sleep(0.2)
    elapsed = time.time() - t0
    primary_cpu = (cpu_seconds(primary.pid) - c0) / elapsed
    standby_cpu = (sum(cpu_seconds(p.pid) for p in standbys) - s0) / elapsed
    primary_peak = status_kib(primary.pid, "VmHWM")
    standby_peak = max(status_kib(p.pid, "VmHWM") for p in standbys)
    seq = get_json(purl + "/v1/status")["applied"]["seq"]
    primary.send_signal(signal.SIGTERM)
    primary.wait(timeout=60)
    for p in standbys:
        p.send_signal(signal.SIGTERM)
    for p in standbys:
        p.wait(timeout=60)
    return {
        "saves_per_s": seq / (elapsed + 0.5),
        "primary_cpu": primary_cpu, "standby_cpu": standby_cpu,
        "primary_start_rss": primary_start_rss / 1024, "primary_peak": primary_peak / 1024,
        "standby_rest": standby_rest / 1024, "standby_peak": standby_peak / 1024,
        "lag_frames_p50": statistics.median(frames) if frames else -1,
        "lag_frames_max": max(frames) if frames else -1,
        "lag_s_p50": statistics.median(secs) if secs else -1,
        "lag_s_max": max(secs) if secs else -1,
    }


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    loomship = os.path.abspath(sys.argv[1])
    seconds, counts = 10.0, [1, 2, 4, 8]
    argv = sys.argv[2:]
    while argv:
        if argv[0] == "--seconds":
            seconds = float(argv[1])
        elif argv[0] == "--counts":
            counts = [int(x) for x in argv[1].split(",")]
        else:
            print(__doc__, file=sys.stderr)
            return 2
        argv = argv[2:]
    print("# scale: loomship primary (100 saves/s, 64 pages each) and M loomship "
          f"standby processes, {seconds:g} s each")
    print("# M  saves/s  primary-CPU  standbys-CPU  primary-RSS(start/peak MiB)  "
          "standby-RSS(rest/peak MiB)  lag-frames(p50/max)  lag-s(p50/max)")
    for m in counts:
        work = tempfile.mkdtemp(prefix="loomship-scale-")
        try:
            r = run(loomship, m, seconds, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"# {m}  {r['saves_per_s']:.1f}  {r['primary_cpu']:.3f}  {r['standby_cpu']:.3f}  "
              f"{r['primary_start_rss']:.1f}/{r['primary_peak']:.1f}  "
              f"{r['standby_rest']:.1f}/{r['standby_peak']:.1f}  "
              f"{r['lag_frames_p50']:g}/{r['lag_frames_max']:g}  "
              f"{r['lag_s_p50']:.4f}/{r['lag_s_max']:.4f}", flush=True)
        for key, unit in [("primary_cpu", "cores"), ("standby_cpu", "cores"),
                          ("primary_peak", "MiB"), ("standby_peak", "MiB"),
                          ("standby_rest", "MiB"), ("lag_s_p50", "s"), ("lag_s_max", "s")]:
            v = r[key]
            print(f"RESULT scale_{key}_sb{m} {v:.6g} {v:.6g} {v:.6g} {unit} -=0 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
