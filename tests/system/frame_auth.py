"""frame_auth.py: authenticated frames (--frame-key-file; issue 13,
DESIGN section 8, docs/AUTH.md).

usage: frame_auth.py LOOMSHIP [--seed S]
Keys K1 and K2 (files 0600). Standby S (key K1) behind a TCP proxy, and
standby R (key K1, scrubbing, --repair-from S).
1. A primary with K1 ships SAVES commits to both: applied everywhere; S's
   status shows K1's id and no refusal.
2. Captured frame requests replayed to S: as sent, accepted and nothing
   moves (idempotent); one body byte flipped under its valid tag: 401
   REPLICATE_ETAG_BAD; the tag header removed: 401 REPLICATE_ETAG_MISSING.
   Status and /metrics count the refusals.
3. A primary with K2 (S holds no such key): S refuses (REPLICATE_ETAG_KEY),
   applies nothing, and the primary shows S `unauthorized` naming the tag.
4. A primary without a key: refused (REPLICATE_ETAG_MISSING).
5. Repair answers are tagged: a page flipped on R is repaired from S
   (answers under K1).
6. Rotation: S restarted with "K2, then K1": frames under K1 (the previous
   key) and then under K2 are both accepted; status shows both ids.
7. A base image (the primary's log no longer reaches back) to a standby
   with K1 carries its tag as a trailer and is accepted; a standby without
   a key takes tagged frames too."""
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultproxy  # noqa: E402
import systest  # noqa: E402

SAVES = 20
ARGS = ["--keys", "300", "--arena-pages", "512", "--pages", "16", "--rate", "1000"]


def key_file(root, name, keys):
    path = os.path.join(root, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, "".join(k.hex() + "\n" for k in keys).encode())
    os.close(fd)
    return path


def key_id(key):
    return hashlib.sha256(key).digest()[:8].hex()


def standby(loomship, d, log, extra):
    return systest.start_standby(loomship, d, log=log, extra=extra)


def primary(loomship, root, name, standbys, log, extra):
    args = [loomship, "primary", "--dir", os.path.join(root, name), "--drain-timeout", "3"]
    for s in standbys:
        args += ["--standby", s]
    r = subprocess.run(args + ARGS + extra, capture_output=True, timeout=120)
    with open(log, "ab") as f:
        f.write(r.stderr)
    return r.returncode, r.stdout.decode(errors="replace")


def auth(url):
    s = systest.status(url)
    return s["frame_auth"] if s else None


def metric(url, name):
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    m = re.search(r"^%s (\d+)$" % re.escape(name), text, re.M)
    return int(m.group(1)) if m else None


def tamper(capture, rng):
    head, body = capture.split(b"\r\n\r\n", 1)
    at = rng.randrange(len(body))
    return head + b"\r\n\r\n" + body[:at] + bytes([body[at] ^ 0x20]) + body[at + 1:]


def untag(capture):
    head, body = capture.split(b"\r\n\r\n", 1)
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"x-loomship-tag:")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def replay_case(proxy, surl, rng):
    problems = []
    caps = list(proxy.captures)
    if not caps:
        return ["the proxy captured no frame request"]
    before = systest.status(surl)["received"]["seq"]
    first = proxy.replay(caps[-1])
    bad = proxy.replay(tamper(caps[-1], rng))
    bare = proxy.replay(untag(caps[-1]))
    after = systest.status(surl)["received"]["seq"]
    print("2. replayed: %s; tampered: %s; untagged: %s" % (first, bad, bare))
    if " 200 " not in first + " " or after != before:
        problems.append("an exact replay was not answered 200 leaving S at seq %d: %s, %d"
                        % (before, first, after))
    if " 401 " not in bad + " ":
        problems.append("a tampered frame was not refused 401: %s" % bad)
    if " 401 " not in bare + " ":
        problems.append("an untagged frame was not refused 401: %s" % bare)
    a = auth(surl)
    print("   S frame_auth: %s" % a)
    if not a or a["refused"] != 2 or a["last_refusal"]["code"] != "REPLICATE_ETAG_MISSING":
        problems.append("S's status does not count the two refusals: %s" % a)
    if metric(surl, "loomship_frame_tag_refusals_total") != 2:
        problems.append("/metrics does not count the two refusals")
    return problems


def refused_primary_case(loomship, root, proxy_url, surl, log, name, extra, code):
    rc, out = primary(loomship, root, name, [proxy_url], log, ["--saves", "3"] + extra)
    a = auth(surl)
    st = systest.status(surl)
    print("   primary %s: exit %d, %s" % (name, rc, out.strip().splitlines()[-1:]))
    print("   S frame_auth: %s" % a)
    problems = []
    if rc != 4 or "unauthorized" not in out:
        problems.append("primary %s: exit %d, standby not shown unauthorized: %s"
                        % (name, rc, out))
    if not a or a["last_refusal"] is None or a["last_refusal"]["code"] != code:
        problems.append("S did not refuse %s's frames with %s: %s" % (name, code, a))
    if not st or st["applied"]["seq"] != SAVES:
        problems.append("S moved on %s's frames: %s" % (name, st and st["applied"]))
    return problems


def repair_case(loomship, rdir, rurl, surl, rng):
    pages = systest.status(rurl)["applied"]["pages"]
    victim = rng.randrange(1, pages)
    systest.flip_bit(os.path.join(rdir, "image"), victim, rng)
    print("5. flipped page %d of R" % victim)
    i = systest.wait_for(lambda: (lambda s: s["integrity"] if s and
                                  s["integrity"]["pages_repaired"] >= 1 and
                                  s["integrity"]["state"] == "ok" else None)(
                                      systest.status(rurl)), 30)
    print("   R integrity: %s" % (i or (systest.status(rurl) or {}).get("integrity")))
    if not i:
        return ["R did not repair page %d from S's tagged answers" % victim]
    r = subprocess.run([loomship, "compare", surl, rurl], capture_output=True, timeout=60)
    return [] if r.returncode == 0 else ["compare S R: exit %d" % r.returncode]


def rotation_case(loomship, root, sdir, log, proxy, k1, k2, files):
    sproc, surl = standby(loomship, sdir, log, ["--frame-key-file", files["k21"]])
    proxy.target_port = int(surl.rsplit(":", 1)[1])
    purl = "http://127.0.0.1:%d" % proxy.port
    problems = []
    a = auth(surl)
    print("6. S restarted with K2 then K1: %s" % a)
    if not a or a["key_id"] != key_id(k2) or a["previous_key_id"] != key_id(k1):
        problems.append("S's status does not show both key ids: %s" % a)
    seq = SAVES
    for name, f in (("pk1", files["k1"]), ("pk2", files["k2"])):
        rc, out = primary(loomship, root, "p", [purl], log,
                          ["--saves", "5", "--frame-key-file", f])
        seq += 5
        st, ok = systest.wait_applied(surl, seq, 10)
        print("   frames under %s: exit %d, S applied %s" % (name, rc, st and st["applied"]))
        if rc != 0 or not ok:
            problems.append("frames under %s were not accepted during the rotation" % name)
    return sproc, problems


def base_case(loomship, root, log, files):
    bdir = os.path.join(root, "b")
    bproc, burl = standby(loomship, bdir, log, ["--frame-key-file", files["k1"]])
    big = ["--log-max-mb", "1", "--frame-key-file", files["k1"]]
    primary(loomship, root, "pb", [burl], log, ["--saves", "300", "--pages", "32"] + big)
    systest.stop(bproc)
    subprocess.run(["rm", "-rf", bdir])
    bproc, burl = standby(loomship, bdir, log, ["--frame-key-file", files["k1"]])
    rc, out = primary(loomship, root, "pb", [burl], log, ["--saves", "5"] + big)
    st = systest.status(burl)
    print("7. base image to a keyed standby: exit %d, base_images %s, refused %s" % (
        rc, st and st["counters"]["base_images"], st and st["frame_auth"]["refused"]))
    problems = []
    systest.stop(bproc)
    if rc != 0 or not st or st["counters"]["base_images"] < 1 or st["frame_auth"]["refused"]:
        problems.append("the tagged base image was not accepted: exit %d %s" % (rc, out))
    else:
        problems += ["after the base image: " + p for p in
                     systest.compare_nodes(loomship, os.path.join(root, "pb"), bdir)]
    tproc, turl = standby(loomship, os.path.join(root, "t"), log, [])
    rc, _ = primary(loomship, root, "pt", [turl], log, ["--saves", "5", "--frame-key-file",
                                                         files["k1"]])
    st, ok = systest.wait_applied(turl, 5, 10) if rc == 0 else (None, False)
    print("   keyless standby, tagged frames: exit %d, applied %s" % (rc, st and st["applied"]))
    if rc != 0 or not ok:
        problems.append("a standby without a key did not take tagged frames")
    systest.stop(tproc)
    return problems


def main():
    loomship, rng = systest.loomship_and_rng()
    root = tempfile.mkdtemp(prefix="loomship-frameauth-")
    log = os.path.join(root, "log")
    k1, k2 = bytes(rng.randrange(256) for _ in range(32)), bytes(rng.randrange(256)
                                                                  for _ in range(32))
    files = {"k1": key_file(root, "k1", [k1]), "k2": key_file(root, "k2", [k2]),
             "k21": key_file(root, "k21", [k2, k1])}
    sdir, rdir = os.path.join(root, "s"), os.path.join(root, "r")
    sproc, surl = standby(loomship, sdir, log, ["--frame-key-file", files["k1"]])
    rproc, rurl = standby(loomship, rdir, log, ["--frame-key-file", files["k1"],
                                                "--scrub-interval", "1", "--repair-from",
                                                surl or "x"])
    if not surl or not rurl:
        return systest.report("frame_auth", ["the standbys would not start"], root)
    proxy = faultproxy.Proxy(int(surl.rsplit(":", 1)[1]), seed=rng.randrange(1 << 30))
    purl = "http://127.0.0.1:%d" % proxy.port
    failures = []
    rc, out = primary(loomship, root, "p", [purl, rurl], log,
                      ["--saves", str(SAVES), "--frame-key-file", files["k1"]])
    _, applied = systest.wait_applied(surl, SAVES, 10)
    a = auth(surl)
    print("1. primary with K1: exit %d; S frame_auth %s" % (rc, a))
    if rc != 0 or not applied or not a or a["key_id"] != key_id(k1) or a["refused"] != 0:
        failures.append("frames under K1 were not all accepted: exit %d %s %s" % (rc, out, a))
    failures += replay_case(proxy, surl, rng)
    print("3. primary with K2")
    failures += refused_primary_case(loomship, root, purl, surl, log, "pk2",
                                     ["--frame-key-file", files["k2"]], "REPLICATE_ETAG_KEY")
    print("4. primary without a key")
    failures += refused_primary_case(loomship, root, purl, surl, log, "pnone", [],
                                     "REPLICATE_ETAG_MISSING")
    failures += repair_case(loomship, rdir, rurl, surl, rng)
    systest.stop(rproc)
    systest.stop(sproc)
    sproc, more = rotation_case(loomship, root, sdir, log, proxy, k1, k2, files)
    failures += more
    systest.stop(sproc)
    proxy.close()
    failures += base_case(loomship, root, log, files)
    return systest.report("frame_auth", failures, root)


if __name__ == "__main__":
    sys.exit(main())
