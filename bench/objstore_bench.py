"""objstore_bench.py: base upload throughput through objstore.h's s3://
backend against curl's own PUT of the same bytes to the same store, in the
same run (issue 17; docs/BENCHMARKS.md section 13).

    python3 bench/objstore_bench.py BUILD/tests/replicate/objstore_tool \\
        [--mib 256] [--repeats 3] [--part-mib 64]

Starts Swift with s3api on 127.0.0.1 (tests/lib/swift.py) unless
--endpoint and --credentials name a running store (bucket "loomship").
The object is --mib MiB of random bytes, in a file (page cache warm). Per
repeat, interleaved:

  objstore multipart   objstore_put with multipart_bytes --part-mib (the
                       default 64 MiB), timed inside objstore_tool
                       (the bytes already in memory, as the archive has them)
  objstore single      the same with multipart_bytes past the object: one PUT
  curl UNSIGNED        curl --aws-sigv4 -T FILE, x-amz-content-sha256:
                       UNSIGNED-PAYLOAD (curl's own PUT: the reference)
  curl sha256          the same with the real hash (computed beforehand,
                       not timed)

Prints the median, min and max MB/s of each and the ratio of the
objstore figures to curl UNSIGNED's median. Contacts nothing but the
endpoint (127.0.0.1 when it starts Swift)."""
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


def objstore_put(tool, endpoint, credentials, key, path, part_bytes):
    p = subprocess.run([tool, "--endpoint", endpoint, "--credentials",
                        credentials, "--multipart-bytes", str(part_bytes),
                        "--timeout-ms", "300000", "s3://loomship/bench",
                        "put", key, path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       check=False)
    if p.returncode != 0:
        raise RuntimeError("objstore_tool: %s %s" % (p.stdout, p.stderr))
    for line in p.stderr.decode().splitlines():
        if line.startswith("put_ms="):
            return float(line[7:]) / 1000
    raise RuntimeError("objstore_tool printed no put_ms")


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


def run(a, endpoint, credentials, netrc, tmp):
    path = os.path.join(tmp, "object")
    size = a.mib * MIB
    with open(path, "wb") as f:
        for _ in range(a.mib):
            f.write(os.urandom(MIB))
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    times = {"objstore multipart": [], "objstore single": [],
             "curl UNSIGNED": [], "curl sha256": []}
    for r in range(a.repeats):
        times["objstore multipart"].append(objstore_put(
            a.tool, endpoint, credentials, "mp%d" % r, path, a.part_mib * MIB))
        times["curl UNSIGNED"].append(curl_put(endpoint, netrc, "cu%d" % r,
                                               path, "UNSIGNED-PAYLOAD"))
        times["objstore single"].append(objstore_put(
            a.tool, endpoint, credentials, "one%d" % r, path, size + 1))
        times["curl sha256"].append(curl_put(endpoint, netrc, "cs%d" % r,
                                             path, sha))
    ref = statistics.median(times["curl UNSIGNED"])
    print("%d MiB object, %d repeats, parts of %d MiB, store %s"
          % (a.mib, a.repeats, a.part_mib, endpoint))
    print("%-20s %9s %9s %9s %8s" % ("", "MB/s p50", "min", "max",
                                     "x curl"))
    for name, ts in times.items():
        rates = [size / t / 1e6 for t in ts]
        print("%-20s %9.1f %9.1f %9.1f %8.2f" % (
            name, statistics.median(rates), min(rates), max(rates),
            ref / statistics.median(ts)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tool", help="BUILD/tests/replicate/objstore_tool")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--part-mib", type=int, default=64)
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
