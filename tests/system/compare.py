"""compare.py: `loomship compare URL URL` (issue 13, DESIGN sections 5 and 8).

Two standbys of one primary, and a third of another primary (another
seed, so other values in some pages) at the same seq. Exit 0 when compare
says the first two are identical (exit 0, --json identical with no
ranges), the first and the third different (exit 1, the ranges printed
are exactly the pages whose bytes differ, found with cmp-like reading of
the image files), and a node that is not there is an error (exit 2)."""
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

PS = 16384
SAVES = 40
# An image of more than 1024 pages, so that compare descends the tree (it
# fetches whole only a level of at most 1024 nodes).
ARGS = ["--keys", "3000", "--arena-pages", "4096", "--pages", "64", "--rate", "1000"]


def run_primary(loomship, root, name, urls, seed, log):
    args = ["--dir", os.path.join(root, name), "--saves", str(SAVES), "--seed", str(seed)]
    for u in urls:
        args += ["--standby", u]
    proc, url, line = systest.start_primary(loomship, args + ARGS, log)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, line + out.decode(errors="replace")


def differing_pages(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        x, y = fa.read(), fb.read()
    n = max(len(x), len(y)) // PS
    return [p for p in range(n) if x[p * PS:(p + 1) * PS] != y[p * PS:(p + 1) * PS]]


def compare(loomship, a, b, *extra):
    r = subprocess.run([loomship, "compare", a, b] + list(extra), capture_output=True,
                       timeout=60)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def http_status(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_checks(loomship, root, url, log):
    """Malformed tree and pages requests are a 400 naming REPLICATE_EREQUEST;
    a seq that is not pinned a 409; with a token configured, none is 401."""
    problems = []
    for q in ("/v1/tree?level=9&first=0&count=1", "/v1/tree?level=0&first=x&count=1",
              "/v1/tree?level=0&first=0", "/v1/tree?level=0&first=999999999&count=1",
              "/v1/tree?level=0&first=0&count=70000", "/v1/pages",
              "/v1/tree?seq=-1&level=0&first=0&count=1"):
        code, body = http_status(url + q)
        if code != 400 or b"REPLICATE_EREQUEST" not in body:
            problems.append("%s: %s %r" % (q, code, body[:120]))
    code, body = http_status(url + "/v1/tree?level=0&first=0&count=1")  # pins
    pinned = json.loads(http_status(url + "/v1/status")[1])["applied"]["seq"]
    for q in ("/v1/pages?seq=%d&pages=2-1" % pinned, "/v1/pages?seq=%d&pages=0-300" % pinned,
              "/v1/pages?seq=%d&pages=99999999" % pinned, "/v1/pages?seq=%d" % pinned):
        code, body = http_status(url + q)
        if code != 400:
            problems.append("%s: %s %r" % (q, code, body[:120]))
    code, body = http_status(url + "/v1/pages?seq=%d&pages=0" % (pinned + 1000))
    if code != 409 or b"REPLICATE_EUNPINNED" not in body:
        problems.append("an unpinned seq: %s %r" % (code, body[:160]))
    code, body = http_status(url + "/v1/pages?seq=%d&pages=0-1" % pinned)
    if code != 200 or len(body) != 72 + 2 * (16 + PS) + 8:
        problems.append("two pages: %s, %d bytes" % (code, len(body)))
    tokfile = os.path.join(root, "token")
    with open(tokfile, "w") as f:
        f.write("s3cret-token-for-the-compare-test\n")
    os.chmod(tokfile, 0o600)
    proc = systest.spawn([loomship, "standby", "--dir", os.path.join(root, "tok"),
                          "--listen", "127.0.0.1:0", "--token-file", tokfile],
                         stdout=subprocess.PIPE, stderr=open(log, "ab"))
    line = proc.stdout.readline().decode()
    turl = line.split("listening on ", 1)[1].split()[0] if "listening on " in line else None
    q = "/v1/tree?level=0&first=0&count=0"
    if not turl or http_status(turl + q)[0] != 401 or http_status(
            turl + q, {"Authorization": "Bearer s3cret-token-for-the-compare-test"})[0] != 200:
        problems.append("the token is not required for /v1/tree")
    systest.stop(proc)
    return problems


def main():
    loomship = sys.argv[1]
    root = tempfile.mkdtemp(prefix="loomship-compare-")
    log = os.path.join(root, "log")
    failures = []
    nodes = {}
    for name in ("s1", "s2", "s3"):
        nodes[name] = systest.start_standby(loomship, os.path.join(root, name), log=log)
        if not nodes[name][1]:
            print("FAIL: standby %s would not start (log in %s)" % (name, root))
            return 1
    url = {k: v[1] for k, v in nodes.items()}
    for name, urls, seed in (("p1", [url["s1"], url["s2"]], 1), ("p2", [url["s3"]], 2)):
        rc, out = run_primary(loomship, root, name, urls, seed, log)
        if rc != 0:
            failures.append("primary %s exited %s: %s" % (name, rc, out[-300:]))
    for name in url:
        _, ok = systest.wait_applied(url[name], SAVES, 30)
        if not ok:
            failures.append("%s did not apply seq %d" % (name, SAVES))

    rc, out, err = compare(loomship, url["s1"], url["s2"])
    if rc != 0 or out:
        failures.append("s1 vs s2: exit %d, %r %r" % (rc, out, err))
    rc, out, err = compare(loomship, url["s1"], url["s2"], "--json")
    doc = json.loads(out) if rc == 0 else {}
    if doc != {"seq": SAVES, "identical": True, "ranges": []}:
        failures.append("s1 vs s2 --json: exit %d, %r" % (rc, out))

    rc, out, err = compare(loomship, url["s1"], url["s3"])
    want = differing_pages(os.path.join(root, "s1", "image"), os.path.join(root, "s3", "image"))
    got = []
    for line in out.split():
        lo, _, hi = line.partition("-")
        got += list(range(int(lo), int(hi or lo) + 1))
    print("s1 vs s3: exit %d, %d pages differ by their bytes, compare printed %r"
          % (rc, len(want), out.split()))
    if rc != 1 or not want or got != want:
        failures.append("s1 vs s3: exit %d, ranges %r, differing pages %r" % (rc, out, want))
    rc, out, err = compare(loomship, url["s1"], url["s3"], "--json")
    doc = json.loads(out) if rc == 1 else {}
    if not doc or doc["identical"] or doc["seq"] != SAVES:
        failures.append("s1 vs s3 --json: exit %d, %r" % (rc, out))

    failures += http_checks(loomship, root, url["s1"], log)

    rc, out, err = compare(loomship, url["s1"], "http://127.0.0.1:9")
    if rc != 2:
        failures.append("an unreachable node: exit %d (%r)" % (rc, err))

    for proc, _ in nodes.values():
        systest.stop(proc)
    return systest.report("compare", failures, root)


if __name__ == "__main__":
    sys.exit(main())
