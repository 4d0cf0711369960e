"""objstore_bench.py: base upload throughput through objstore.h's s3://
backend against curl's own PUT of the same bytes to the same store, in the
same run (issue 17; docs/BENCHMARKS.md section 14).

    python3 bench/objstore_bench.py BUILD/tests/replicate/objstore_tool \\
        [--mib 256] [--repeats 7] [--part-mib 64] [--parallel 4] \\
        [--old-tool OTHER_BUILD/tests/replicate/objstore_tool]

Starts Swift with s3api on 127.0.0.1 (tests/lib/swift.py) unless
--endpoint and --credentials name a running store (bucket "loomship").
The object is --mib MiB of random bytes, in a file (page cache warm). Per
repeat, interleaved:

  objstore multipart   objstore_put with multipart_bytes --part-mib and
                       --parallel parts in flight (the defaults: 64 MiB,
                       4), timed inside objstore_tool (the bytes already in
                       memory, as the archive has them)
  objstore 1 at a time the same, one part in flight
  objstore single      the same with multipart_bytes past the object: one PUT
  old multipart        --old-tool (another build, e.g. main's) with
                       multipart_bytes --old-part-mib (64, main's
                       default) and its own defaults:
                       old and new binaries alternate in the same run
  curl UNSIGNED        curl --aws-sigv4 -T FILE, x-amz-content-sha256:
                       UNSIGNED-PAYLOAD (curl's own PUT: the reference)
  curl sha256          the same with the real hash (computed beforehand,
                       not timed)

Prints the median, min and max MB/s of each, the ratio of its median time
to curl UNSIGNED's, and the median of the per-repeat ratios (each against
curl UNSIGNED of the same repeat: on a busy machine the load moves both
alike). Contacts nothing but the endpoint (127.0.0.1 when it starts
Swift)."""
import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests", "lib"))
import swift as swiftlib  # noqa: E402

MIB = 1 << 20


def objstore_put(tool, endpoint, credentials, key, path, part_bytes,
                 parallel=0):
    extra = ["--parallel-parts", str(parallel)] if parallel else []
    p = subprocess.run([tool, "--endpoint", endpoint, "--credentials",
                        credentials, "--multipart-bytes", str(part_bytes),
                        "--timeout-ms", "300000"] + extra +
                       ["s3://loomship/bench", "put", key, path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       check=False)
    if p.returncode != 0:
        raise RuntimeError("objstore_tool: %s %s" % (p.stdout, p.stderr))
    for line in p.stderr.decode().splitlines():
        if line.startswith("put_ms="):
            return float(line[7:]) / 1000
    raise RuntimeError("objstore_tool printed no put_ms")


def objstore_delete(tool, endpoint, credentials, key):
    """Not timed: keeps the store small (an overwritten multipart object
    would leave its parts behind; a DELETE removes them too)."""
    subprocess.run([tool, "--endpoint", endpoint, "--credentials",
                    credentials, "s3://loomship/bench", "delete", key],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)


def curl_put(endpoint, netrc, key, path, sha):
    p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w",
                        "%{http_code} %{time_total}", "--netrc-file", netrc,
                        "--aws-sigv4", "aws:amz:%s:s3" % swiftlib.REGION,
                        "-H", "x-amz-content-sha256: " + sha, "-T", path,
                        "%s/loomship/bench/%s" % (endpoint, key)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       check=False)
    code, seconds = p.stdout.decode().split()
    if code != "200":
        raise RuntimeError("curl PUT: %s %s" % (code, p.stderr))
    return float(seconds)


def puts(a, endpoint, credentials, netrc, path, sha):
    """One repeat's uploads, in order: (name, a call that times one)."""
    part, size = a.part_mib * MIB, a.mib * MIB
    new = lambda p, par: lambda: objstore_put(a.tool, endpoint, credentials,
                                              "o", path, p, par)
    out = [("objstore multipart", new(part, a.parallel)),
           ("curl UNSIGNED", lambda: curl_put(endpoint, netrc, "o", path,
                                              "UNSIGNED-PAYLOAD"))]
    if a.old_tool:
        out.append(("old multipart", lambda: objstore_put(
            a.old_tool, endpoint, credentials, "o", path,
            a.old_part_mib * MIB)))
    return out + [("objstore 1 at a time", new(part, 1)),
                  ("objstore single", new(size + 1, 0)),
                  ("curl sha256", lambda: curl_put(endpoint, netrc, "o", path,
                                                   sha))]


def run(a, endpoint, credentials, netrc, tmp):
    path = os.path.join(tmp, "object")
    size = a.mib * MIB
    with open(path, "wb") as f:
        for _ in range(a.mib):
            f.write(os.urandom(MIB))
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    times = {"objstore multipart": [], "objstore 1 at a time": [],
             "objstore single": [], "curl UNSIGNED": [], "curl sha256": []}
    if a.old_tool:
        times["old multipart"] = []
    for _ in range(a.repeats):
        for name, put in puts(a, endpoint, credentials, netrc, path, sha):
            times[name].append(put())
            objstore_delete(a.tool, endpoint, credentials, "o")
    ref = statistics.median(times["curl UNSIGNED"])
    print("%d MiB object, %d repeats, parts of %d MiB, %s in flight, store %s"
          % (a.mib, a.repeats, a.part_mib, a.parallel or "the default",
             endpoint))
    print("%-22s %9s %9s %9s %8s %10s" % ("", "MB/s p50", "min", "max",
                                          "x curl", "per-repeat"))
    for name, ts in times.items():
        rates = [size / t / 1e6 for t in ts]
        per = [c / t for c, t in zip(times["curl UNSIGNED"], ts)]
        print("%-22s %9.1f %9.1f %9.1f %8.2f %10.2f" % (
            name, statistics.median(rates), min(rates), max(rates),
            ref / statistics.median(ts), statistics.median(per)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tool", help="BUILD/tests/replicate/objstore_tool")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--part-mib", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=0,
                    help="parts in flight (0: objstore's default)")
    ap.add_argument("--old-tool", help="another build's objstore_tool, "
                    "run alternately as 'old multipart'")
    ap.add_argument("--old-part-mib", type=int, default=64,
                    help="--old-tool's parts (64: main's default before "
                    "parallel parts)")
    ap.add_argument("--endpoint")
    ap.add_argument("--credentials")
    a = ap.parse_args()
    swiftlib.stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="loomship-objbench-") as tmp:
        if a.endpoint:
            with open(a.credentials) as f:
                key_id, secret = f.read().split("\n")[:2]
            netrc = os.path.join(tmp, "netrc")
            host = a.endpoint.split("://", 1)[1].rsplit(":", 1)[0]
            with open(netrc, "w") as f:
                f.write("machine %s login %s password %s\n"
                        % (host, key_id, secret))
            run(a, a.endpoint, a.credentials, netrc, tmp)
        else:
            with swiftlib.Swift() as s:
                run(a, s.endpoint, s.credentials, s.netrc, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
