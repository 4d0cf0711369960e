"""archive_bench.py: the archive's figures (issue 17, docs/BENCHMARKS.md
section 13) against the file:// backend on the local disk, or with --swift
against a real S3 store (OpenStack Swift's s3api on 127.0.0.1, started by
tests/lib/swift.py for the run).

usage: archive_bench.py LOOMSHIP [--seconds S] [--rates 10,100]
                        [--restore-keys K] [--restore-saves N] [--swift]
                        [--compare LOOMSHIP2] [--repeats R]

rpo      a primary saving at each rate with --archive file:///TMP
         --archive-interval 1; GET /v1/status polled every 5 ms: a commit's
         time is when applied.seq first reached it, its upload when
         archive.uploaded_seq did; RPO p50/p99 over every seq, and the
         store requests per hour (status/metrics counters).
restore  a primary with K keys (an image of about K*64 bytes) and N saves
         archived, stopped; then `loomship restore` of the newest position
         timed against `cat` of the same objects into one file plus fsync
         (the bytes a restore must at least read and write), same run;
         with --swift, curl GETs of the same objects appended to one file
         plus fsync (one curl process per object). --compare LOOMSHIP2
         times LOOMSHIP2's restore of the same archive too, alternating
         with LOOMSHIP, for --repeats rounds (medians reported)."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "tests", "system"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "tests", "lib"))
import systest  # noqa: E402
import swift as swiftlib  # noqa: E402


class FileTarget:
    """Archives as file:///ROOT/NAME."""

    def __init__(self, root):
        self.root = root

    def url(self, name):
        os.makedirs(os.path.join(self.root, name))
        return "file://" + os.path.join(self.root, name)

    opts = []

    def copy_objects(self, name, dst):
        """Every object of archive name appended to the open file dst: how
        many and their bytes."""
        files = []
        for d, _, names in os.walk(os.path.join(self.root, name)):
            files += [os.path.join(d, n) for n in names]
        for f in sorted(files):
            with open(f, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
        return len(files), sum(os.path.getsize(f) for f in files)


class SwiftTarget:
    """Archives as s3://BUCKET/NAME in a Swift started for the run."""

    def __init__(self, store):
        self.store = store
        self.opts = ["--archive-endpoint", store.endpoint,
                     "--archive-credentials", store.credentials]

    def url(self, name):
        return "s3://%s/%s" % (self.store.bucket, name)

    def copy_objects(self, name, dst):
        status, body = self.store.s3("GET", "/" + self.store.bucket,
                                     query="list-type=2&max-keys=1000&prefix=" + name + "%2F")
        keys = [e.text for e in ET.fromstring(body).iter() if e.tag.endswith("Key")] \
            if status == 200 else []
        size = 0
        for k in keys:
            _, data = self.store.s3("GET", "/%s/%s" % (self.store.bucket, k))
            dst.write(data)
            size += len(data)
        return len(keys), size


def metrics(url):
    with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("loomship_archive_requests_total"):
            out[line.split('kind="')[1].split('"')[0]] = int(line.split()[-1])
        elif line.startswith("loomship_archive_errors_total "):
            out["errors"] = int(line.split()[-1])
    return out


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p))] if v else float("nan")


def rpo(loomship, root, target, rate, seconds):
    args = ["--dir", os.path.join(root, "p-%d" % rate), "--archive",
            target.url("arc-%d" % rate), "--rate", str(rate), "--keys", "1024",
            "--pages", "4"] + target.opts
    proc, url, _ = systest.start_primary(loomship, args, os.path.join(root, "log"))
    committed, uploaded = {}, {}
    last_c = last_u = 0
    # Past the start (its reads, listing and first base), then steady state.
    systest.wait_for(lambda: ((systest.status(url) or {}).get("archive") or {})
                     .get("uploaded_seq", 0) > 0, 10)
    time.sleep(1.5)
    m0 = metrics(url)
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        st = systest.status(url)
        now = time.monotonic()
        if st and st.get("archive"):
            c, u = st["applied"]["seq"], st["archive"]["uploaded_seq"]
            for s in range(last_c + 1, c + 1):
                committed[s] = now
            for s in range(last_u + 1, u + 1):
                uploaded[s] = now
            last_c, last_u = max(last_c, c), max(last_u, u)
        time.sleep(0.005)
    m1 = metrics(url)
    systest.stop(proc, signal.SIGTERM)
    lags = [uploaded[s] - committed[s] for s in committed if s in uploaded and s > 5]
    reqs = {k: (m1[k] - m0.get(k, 0)) * 3600.0 / seconds for k in m1}
    print("rpo rate %d/s: %d commits, p50 %.3f s, p99 %.3f s, max %.3f s; requests/hour "
          "put %.0f get %.0f list %.0f delete %.0f (failed %.0f)"
          % (rate, len(lags), pct(lags, 0.5), pct(lags, 0.99), max(lags or [0]),
             reqs.get("put", 0), reqs.get("get", 0), reqs.get("list", 0),
             reqs.get("delete", 0), reqs.get("errors", 0)))


def restore_bench(loomship, root, target, keys, saves, compare=None,
                  repeats=1):
    arc = target.url("arc-restore")
    pdir = os.path.join(root, "p-restore")
    table = ["--keys", str(keys), "--arena-pages", str(keys + keys // 4 + 256),
             "--pages", "64", "--rate", "100000"]
    # First the image grows (no archive), then the archive gets one base of
    # it and `saves` commits after.
    t0 = time.monotonic()
    r = subprocess.run([loomship, "primary", "--dir", pdir, "--saves",
                        str(keys // 8)] + table, capture_output=True)
    print("image grown in %.1f s (exit %d)" % (time.monotonic() - t0, r.returncode))
    t0 = time.monotonic()
    r = subprocess.run([loomship, "primary", "--dir", pdir, "--archive", arc,
                        "--saves", str(saves), "--archive-base-interval", "86400"]
                       + table[:-2] + ["--pages", "16", "--rate", "100000"] + target.opts,
                       capture_output=True)
    print("archived %d saves in %.1f s (exit %d)" % (saves, time.monotonic() - t0,
                                                      r.returncode))
    image = os.path.getsize(os.path.join(pdir, "image"))
    binaries = [("restore", loomship)] + ([("compare", compare)] if compare else [])
    times = {name: [] for name, _ in binaries}
    rss = {name: [] for name, _ in binaries}  # peak RSS, MiB (time -v's)
    floors = {"read": [], "image": [], "direct": []}
    for rnd in range(repeats):
        # Alternating which binary goes first, each restore into a new
        # directory, the page cache flushed before each.
        order = binaries if rnd % 2 == 0 else binaries[::-1]
        for name, binary in order:
            out = os.path.join(root, "restored")
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(["sync"])
            t0 = time.monotonic()
            r = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb %M", binary,
                                "restore", "--from", arc, "--out", out]
                               + target.opts, capture_output=True)
            times[name].append(time.monotonic() - t0)
            kb = [ln for ln in r.stderr.decode().splitlines()
                  if ln.startswith("maxrss_kb ")]
            rss[name].append(int(kb[-1].split()[1]) / 1024.0 if kb else 0.0)
            v = subprocess.run([binary, "verify", out], capture_output=True)
            print("round %d %s (%s): %.2f s, peak RSS %.1f MiB (exit %d); verify: %s"
                  % (rnd + 1, name, binary, times[name][-1], rss[name][-1],
                     r.returncode,
                     v.stdout.decode().strip() or v.stderr.decode().strip()))
        copy = os.path.join(root, "copy")
        subprocess.run(["sync"])
        t0 = time.monotonic()
        with open(copy, "wb") as dst:
            nobj, size = target.copy_objects("arc-restore", dst)
            dst.flush()
            os.fsync(dst.fileno())
        floors["read"].append(time.monotonic() - t0)
        # The other floor: the image's bytes written and fsynced (what a
        # restore must write, however small the objects compress).
        subprocess.run(["sync"])
        t0 = time.monotonic()
        with open(os.path.join(pdir, "image"), "rb") as src, \
                open(os.path.join(root, "image-copy"), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        floors["image"].append(time.monotonic() - t0)
        os.unlink(os.path.join(root, "image-copy"))
        # The same bytes written around the page cache (what restore does
        # where the file system allows: O_DIRECT), by dd.
        subprocess.run(["sync"])
        t0 = time.monotonic()
        subprocess.run(["dd", "if=" + os.path.join(pdir, "image"),
                        "of=" + os.path.join(root, "image-copy"), "bs=4M",
                        "oflag=direct", "conv=fsync", "status=none"], check=True)
        floors["direct"].append(time.monotonic() - t0)
        os.unlink(copy)
        os.unlink(os.path.join(root, "image-copy"))
        print("round %d: reading the %d objects (%.1f MiB) into one file + fsync "
              "%.2f s; copy+fsync of the image (%.1f MiB) %.2f s; the same with "
              "O_DIRECT (dd) %.2f s"
              % (rnd + 1, nobj, size / 2**20, floors["read"][-1], image / 2**20,
                 floors["image"][-1], floors["direct"][-1]))
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    t_read, t_image = med(floors["read"]), med(floors["image"])
    t_direct = med(floors["direct"])
    for name, binary in binaries:
        t = med(times[name])
        print("restore (%s, median of %d): %.2f s, peak RSS %.1f MiB; x objects "
              "read+fsync %.2f (%.2f s); x image copy+fsync %.2f (%.2f s); x "
              "O_DIRECT copy %.2f (%.2f s)"
              % (binary, repeats, t, med(rss[name]), t / t_read, t_read,
                 t / t_image, t_image, t / t_direct, t_direct))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("loomship")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rates", default="10,100")
    ap.add_argument("--restore-keys", type=int, default=16384)
    ap.add_argument("--restore-saves", type=int, default=10000)
    ap.add_argument("--compare", metavar="LOOMSHIP2",
                    help="restore mode: also time this binary's restore of "
                    "the same archive, alternating with LOOMSHIP")
    ap.add_argument("--repeats", type=int, default=1,
                    help="restore mode: rounds (medians reported)")
    ap.add_argument("--swift", action="store_true",
                    help="against Swift's s3api on 127.0.0.1 (started here)")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="loomship-archive-bench-")
    store = None
    try:
        if a.swift:
            swiftlib.stop_on_sigterm()
            store = swiftlib.Swift()
        target = SwiftTarget(store) if store else FileTarget(root)
        for rate in (int(x) for x in a.rates.split(",") if x):
            rpo(a.loomship, root, target, rate, a.seconds)
        if a.restore_saves:
            restore_bench(a.loomship, root, target, a.restore_keys, a.restore_saves,
                          a.compare, a.repeats)
    finally:
        if store:
            store.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
