"""objstore_s3.py: the s3:// backend of objstore.h (replicate/objstore_s3.c)
against a real S3 store: OpenStack Swift with s3api on 127.0.0.1, started
once for all the cases (tests/lib/swift.py), and a fault proxy in front of
it for 503 SlowDown and a store that vanishes mid-upload.

    python3 objstore_s3.py OBJSTORE_TOOL [CASE...]

Each case runs objstore_tool (one objstore.h call per run) and checks what
came back: the data, the error code, last_error's words, the request
counts, the time taken. Exit 77 (skipped) when Swift is not installed."""
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))
import swift as swiftlib  # noqa: E402

TOOL = None
SWIFT = None
TMP = None
MIB = 1 << 20


def tool(url, *args, endpoint=None, credentials=None, opts=(), bg=False):
    """Runs objstore_tool; returns (result dict, stdout lines) or the
    Popen when bg."""
    cmd = [TOOL, "--endpoint", endpoint or SWIFT.endpoint,
           "--credentials", credentials or SWIFT.credentials,
           "--retry-base-ms", "50"] + list(opts) + [url] + list(args)
    if bg:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=120, check=False)
    return parse(p.stdout, p.stderr)


def parse(stdout, stderr):
    if b"Sanitizer" in stderr or b"runtime error:" in stderr:
        raise AssertionError("sanitizer: %s" % stderr.decode()[-2000:])
    lines = stdout.decode().splitlines()
    if not lines or not lines[-1].startswith("result="):
        raise AssertionError("objstore_tool said nothing: %r %r"
                             % (stdout[-500:], stderr[-500:]))
    last = lines[-1]
    head, _, error = last.partition(" error=")
    r = dict(kv.split("=", 1) for kv in head.split())
    r["error"] = error
    for k in ("puts", "gets", "lists", "deletes", "bytes_up", "bytes_down",
              "errors", "retries"):
        r[k] = int(r[k])
    r["ms"] = float(r["ms"])
    return r, lines[:-1]


def expect(r, result, *words):
    if r["result"] != result:
        raise AssertionError("expected %s, got %s" % (result, r))
    for w in words:
        if w not in r["error"]:
            raise AssertionError("last_error lacks %r: %r" % (w, r["error"]))


def blob(name, size):
    path = os.path.join(TMP, name)
    with open(path, "wb") as f:
        f.write(random.Random(size).randbytes(size))
    return path


def same(a, b):
    with open(a, "rb") as f, open(b, "rb") as g:
        return f.read() == g.read()


URL = "s3://loomship/t1"


# ---- cases ----
def case_round_trip():
    src = blob("rt", 300 * 1024 + 7)
    r, _ = tool(URL, "put", "a/b/rt.bin", src)
    expect(r, "ok")
    # Requests that were not retries: one (a busy Swift may answer 503).
    assert r["puts"] - r["retries"] == 1, r
    assert r["bytes_up"] == 300 * 1024 + 7, r
    out = os.path.join(TMP, "rt.out")
    r, _ = tool(URL, "get", "a/b/rt.bin", out)
    expect(r, "ok")
    assert same(src, out) and r["bytes_down"] == 300 * 1024 + 7, r
    r, _ = tool(URL, "get", "a/b/rt.bin", out, "1000")
    expect(r, "REPLICATE_ESTORE", "larger than 1000 bytes")
    # The object is where path-style says: /BUCKET/PREFIX/KEY.
    status, body = SWIFT.s3("GET", "/loomship/t1/a/b/rt.bin")
    with open(src, "rb") as f:
        assert status == 200 and body == f.read(), status


def case_zero_bytes():
    src = blob("zero", 0)
    r, _ = tool(URL, "put", "zero", src)
    expect(r, "ok")
    out = os.path.join(TMP, "zero.out")
    r, _ = tool(URL, "get", "zero", out)
    expect(r, "ok")
    assert os.path.getsize(out) == 0


def case_list_pages():
    r, _ = tool(URL, "putmany", "list/k", "60")
    expect(r, "ok")
    tool(URL, "put", "listx", blob("lx", 3))  # beside the prefix: not listed
    r, lines = tool(URL, "list", "list/", opts=("--max-keys", "7"))
    expect(r, "ok")
    want = ["list/k%05d %d" % (i, i) for i in range(60)]
    assert lines == want, lines[:5]
    assert r["lists"] - r["retries"] == 9, r  # 8 full pages of 7, then 4
    r, lines = tool(URL, "list", "", opts=("--max-keys", "1000"))
    expect(r, "ok")
    assert r["lists"] - r["retries"] == 1, r
    assert "listx 3" in lines and len(lines) > 60
    assert lines == sorted(lines), "not ascending"
    r, lines = tool("s3://loomship/t1/list", "list", "k0001")
    assert [l.split()[0] for l in lines] == ["k%05d" % i for i in range(10, 20)]


def case_if_absent():
    src = blob("ia", 1000)
    r, _ = tool(URL, "put", "once", src, "if-absent")
    expect(r, "ok")
    r, _ = tool(URL, "put", "once", src, "if-absent")
    expect(r, "REPLICATE_ESTORE_EXISTS", "once")
    big = blob("ia-big", 6 * MIB)
    r, _ = tool(URL, "put", "once", big, "if-absent",
                opts=("--multipart-bytes", str(5 * MIB)))
    expect(r, "REPLICATE_ESTORE_EXISTS")
    assert r["puts"] == 0, r  # refused before any upload (by HEAD)
    r, _ = tool(URL, "put", "once", src)  # without the flag: replaced
    expect(r, "ok")


def case_delete():
    src = blob("del", 10)
    expect(tool(URL, "put", "gone", src)[0], "ok")
    r, _ = tool(URL, "delete", "gone")
    expect(r, "ok")
    assert r["deletes"] - r["retries"] == 1
    r, _ = tool(URL, "get", "gone", os.path.join(TMP, "gone.out"))
    expect(r, "REPLICATE_ESTORE_MISSING", "NoSuchKey", "GET s3://loomship/t1/gone")
    r, _ = tool(URL, "delete", "never-there")
    expect(r, "ok")


def case_multipart():
    src = blob("mp", 20 * MIB + 123)
    r, _ = tool(URL, "put", "big/mp", src, opts=("--multipart-bytes", str(5 * MIB)))
    expect(r, "ok")
    assert r["puts"] - r["retries"] == 1 + 5 + 1, r  # initiate, parts, complete
    assert r["bytes_up"] == 20 * MIB + 123, r
    out = os.path.join(TMP, "mp.out")
    r, _ = tool(URL, "get", "big/mp", out)
    expect(r, "ok")
    assert same(src, out)
    r, lines = tool(URL, "list", "big/")
    assert lines == ["big/mp %d" % (20 * MIB + 123)], lines


def case_wrong_secret():
    bad = os.path.join(TMP, "bad-credentials")
    with open(bad, "w") as f:
        f.write("%s\nnot-the-secret\n" % swiftlib.KEY_ID)
    r, _ = tool(URL, "put", "x", blob("ws", 10), credentials=bad)
    expect(r, "REPLICATE_ESTORE_AUTH", "403", "SignatureDoesNotMatch",
           "PUT s3://loomship/t1/x")
    assert r["puts"] - r["retries"] == 1, r  # 403 is never retried


def case_bad_credentials_file():
    bad = os.path.join(TMP, "one-line")
    with open(bad, "w") as f:
        f.write("only-a-key-id\n")
    r, _ = tool(URL, "put", "x", blob("bc", 10), credentials=bad)
    expect(r, "REPLICATE_EINVAL", bad, "two lines")
    r, _ = tool(URL, "put", "x", blob("bc", 10),
                credentials=os.path.join(TMP, "absent"))
    expect(r, "REPLICATE_EINVAL", "absent")
    r, _ = tool(URL, "put", "x", blob("bc", 10), endpoint="127.0.0.1:9")
    expect(r, "REPLICATE_EINVAL", "http(s)://HOST:PORT")


def case_missing_bucket():
    r, _ = tool("s3://no-such-bucket/p", "put", "x", blob("mb", 10))
    expect(r, "REPLICATE_ESTORE_MISSING", "404", "NoSuchBucket")
    r, _ = tool("s3://no-such-bucket/p", "list", "")
    expect(r, "REPLICATE_ESTORE_MISSING", "NoSuchBucket")
    r, _ = tool("s3://no-such-bucket/p", "delete", "x")
    expect(r, "REPLICATE_ESTORE_MISSING", "NoSuchBucket")


def case_store_down():
    port = swiftlib.free_port()  # nothing listens there
    t0 = time.monotonic()
    r, _ = tool(URL, "put", "x", blob("sd", 10),
                endpoint="http://127.0.0.1:%d" % port, opts=("--retries", "4"))
    took = time.monotonic() - t0
    expect(r, "REPLICATE_ESTORE", "4 tries", "127.0.0.1:%d" % port)
    assert r["puts"] == 4 and r["retries"] == 3, r
    assert took < 5, took  # 50 + 100 + 200 ms of waits, bounded


def case_slowdown():
    with swiftlib.FaultProxy(SWIFT.endpoint) as proxy:
        proxy.slowdown(2, retry_after=1)
        src = blob("slow", 2000)
        r, _ = tool(URL, "put", "slow", src, endpoint=proxy.url)
        expect(r, "ok")
        assert proxy.answered_503 == 2, proxy.answered_503
        assert r["retries"] >= 2 and r["puts"] - r["retries"] == 1, r
        # Retry-After: 1 was honoured (the backoff alone is 50 + 100 ms).
        assert r["ms"] >= 1900, r
        proxy.slowdown(10, retry_after=1)
        r, _ = tool(URL, "get", "slow", os.path.join(TMP, "slow.out"),
                    endpoint=proxy.url, opts=("--retries", "2"))
        expect(r, "REPLICATE_ESTORE", "503 SlowDown", "2 tries")


def case_killed_mid_multipart():
    src = blob("kill", 30 * MIB)
    with swiftlib.FaultProxy(SWIFT.endpoint) as proxy:
        p = tool(URL, "put", "killed", src, endpoint=proxy.url, bg=True,
                 opts=("--multipart-bytes", str(5 * MIB), "--retries", "3",
                       "--timeout-ms", "5000"))
        deadline = time.monotonic() + 60
        while proxy.bytes_up < 12 * MIB and p.poll() is None:
            assert time.monotonic() < deadline, "upload did not progress"
            time.sleep(0.005)
        assert p.poll() is None, "the upload finished before the cut"
        t0 = time.monotonic()
        proxy.down()
        out, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
        r, _ = parse(out, err)
        expect(r, "REPLICATE_ESTORE", "3 tries", "killed")
        assert took < 10, took
        proxy.up()
    # No half object: nothing under the key, not in a listing.
    r, _ = tool(URL, "get", "killed", os.path.join(TMP, "killed.out"))
    expect(r, "REPLICATE_ESTORE_MISSING", "NoSuchKey")
    r, lines = tool(URL, "list", "killed")
    expect(r, "ok")
    assert lines == [], lines
    # The abort could not reach the store either: the upload stays open
    # (invisible, its parts kept) until a lifecycle rule or an operator
    # removes it. (This also shows multipart_aborted's check can see one.)
    status, body = SWIFT.s3("GET", "/loomship", query="uploads=")
    assert status == 200 and b"<Key>t1/killed</Key>" in body, body


def case_damaged_on_the_way():
    """The body's SHA-256 is signed (http://): a byte flipped between here
    and the store is refused, nothing is stored."""
    src = blob("dmg", 300 * 1024)
    with swiftlib.FaultProxy(SWIFT.endpoint) as proxy:
        proxy.corrupt_at(200 * 1024)
        r, _ = tool(URL, "put", "damaged", src, endpoint=proxy.url)
        expect(r, "REPLICATE_ESTORE", "400 BadDigest", "PUT s3://loomship/t1/damaged")
    r, _ = tool(URL, "get", "damaged", os.path.join(TMP, "dmg.out"))
    expect(r, "REPLICATE_ESTORE_MISSING")


def case_multipart_aborted():
    """A part refused for good (a byte flipped on the way: 400 BadDigest)
    fails the put at once and aborts the upload: no object, and no upload
    left open with its parts."""
    src = blob("abort", 12 * MIB)
    with swiftlib.FaultProxy(SWIFT.endpoint) as proxy:
        # The next connection: the initiate's, which the first part to go
        # out reuses (the others, in flight at once, open their own).
        proxy.corrupt_at(3 * MIB)
        r, _ = tool(URL, "put", "aborted", src, endpoint=proxy.url,
                    opts=("--multipart-bytes", str(5 * MIB)))
    expect(r, "REPLICATE_ESTORE", "400 BadDigest", "partNumber=")
    assert r["deletes"] >= 1, r  # the abort
    status, body = SWIFT.s3("GET", "/loomship", query="uploads=")
    assert status == 200, (status, body)
    assert b"t1/aborted" not in body, body
    r, _ = tool(URL, "get", "aborted", os.path.join(TMP, "aborted.out"))
    expect(r, "REPLICATE_ESTORE_MISSING")


def case_cancelled():
    """objstore_cancel() from another thread ends a request that hangs, and
    the wait before a retry, at once (a stopping archiver's way out)."""
    with swiftlib.HangingStore() as hang:
        for name, size, extra in (("single", 1000, ()),
                                  ("multipart", 12 * MIB,
                                   ("--multipart-bytes", str(5 * MIB)))):
            r, _ = tool(URL, "put", "hang-" + name, blob("hang" + name, size),
                        endpoint=hang.url,
                        opts=("--timeout-ms", "30000", "--cancel-after-ms", "300")
                        + extra)
            expect(r, "REPLICATE_ESTORE", "cancelled")
            assert r["ms"] < 3000, (name, r)  # not the 30 s timeout
    port = swiftlib.free_port()  # nothing listens: tries, then backoff
    r, _ = tool(URL, "get", "x", os.path.join(TMP, "x.out"),
                endpoint="http://127.0.0.1:%d" % port,
                opts=("--retry-base-ms", "5000", "--cancel-after-ms", "300"))
    expect(r, "REPLICATE_ESTORE", "cancelled")
    assert r["ms"] < 3000 and r["gets"] == 1, r  # the 5 s wait was cut


CASES = [case_round_trip, case_zero_bytes, case_list_pages, case_if_absent,
         case_delete, case_multipart, case_wrong_secret,
         case_bad_credentials_file, case_missing_bucket, case_store_down,
         case_slowdown, case_killed_mid_multipart, case_damaged_on_the_way,
         case_multipart_aborted, case_cancelled]


def main():
    global TOOL, SWIFT, TMP  # pylint: disable=global-statement
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    TOOL = os.path.abspath(sys.argv[1])
    swiftlib.stop_on_sigterm()
    wanted = sys.argv[2:]
    if not swiftlib.swift_available():
        print("SKIP: Swift is not installed (tools/setup.sh installs %s)"
              % " ".join(swiftlib.PACKAGES))
        return 77
    failed = []
    with tempfile.TemporaryDirectory(prefix="loomship-objstore-") as tmp:
        TMP = tmp
        t0 = time.monotonic()
        with swiftlib.Swift() as swift:
            SWIFT = swift
            print("swift up in %.1f s at %s" % (time.monotonic() - t0,
                                                swift.endpoint), flush=True)
            for case in CASES:
                if wanted and case.__name__[5:] not in wanted:
                    continue
                t1 = time.monotonic()
                try:
                    case()
                    print("ok   %-28s %.1f s" % (case.__name__[5:],
                                                 time.monotonic() - t1), flush=True)
                except Exception as e:  # pylint: disable=broad-except
                    failed.append(case.__name__)
                    print("FAIL %s: %r" % (case.__name__[5:], e), flush=True)
    print("%d failed: %s" % (len(failed), failed) if failed else "all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
