"""frame_key_reload.py: SIGHUP re-reads --frame-key-file (issue 13, DESIGN
section 3, docs/AUTH.md "A rotation").

usage: frame_key_reload.py LOOMSHIP [--seed S]
Standby S (key file F) and a running primary P (key file G, --listen),
keys K1 and K2, no restart of either:
1. F = K1, G = K1: P's saves reach S.
2. F = "K2, K1", SIGHUP S: S shows both ids and still takes P's frames
   (under K1, now its previous key).
3. G = K2, SIGHUP P: P's status shows K2; S takes its frames.
4. F malformed, SIGHUP S; G readable by others, SIGHUP P: each logs why
   and keeps its keys (never none): S still shows K2 and K1, P still tags
   under K2 and S still takes its frames.
5. F = K2 alone, SIGHUP S: the previous key is gone.
6. G = K1, SIGHUP P: S refuses P's frames (REPLICATE_ETAG_KEY) and applies
   nothing more; P shows S `unauthorized`."""
import hashlib
import os
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

ARGS = ["--keys", "64", "--arena-pages", "256", "--pages", "4", "--rate", "50"]


def write_keys(path, text, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    os.chmod(path, mode)


def key_id(key):
    return hashlib.sha256(key).digest()[:8].hex()


def auth(url):
    s = systest.status(url)
    return s["frame_auth"] if s else None


def applied(url):
    s = systest.status(url)
    return s["applied"]["seq"] if s else -1


def grows(url, timeout=10):
    """S's applied seq moves past where it is now within timeout."""
    start = applied(url)
    return systest.wait_for(lambda: applied(url) > start + 2, timeout)


def ids_become(url, cur, prev, timeout=5):
    return systest.wait_for(lambda: (lambda a: a and a["key_id"] == cur and
                                     a["previous_key_id"] == prev)(auth(url)), timeout)


def log_has(path, text, timeout=5):
    def found():
        with open(path, errors="replace") as f:
            return text in f.read()
    return systest.wait_for(found, timeout)


def rotate(c, s, surl, p, purl, files, k1, k2):
    f, g = files
    write_keys(f, k2.hex() + "\n" + k1.hex() + "\n")
    s.send_signal(signal.SIGHUP)
    c.check(ids_become(surl, key_id(k2), key_id(k1)), "2. S shows K2 and K1 after SIGHUP")
    c.check(grows(surl), "2. S takes frames under K1, its previous key")
    write_keys(g, k2.hex() + "\n")
    p.send_signal(signal.SIGHUP)
    c.check(ids_become(purl, key_id(k2), None), "3. P shows K2 after SIGHUP")
    c.check(grows(surl), "3. S takes P's frames under K2")


def bad_files(c, s, surl, p, purl, files, k1, k2):
    f, g = files
    write_keys(f, "not a key\n")
    s.send_signal(signal.SIGHUP)
    write_keys(g, k1.hex() + "\n", 0o644)
    p.send_signal(signal.SIGHUP)
    c.check(log_has(c.log, "line 1 is not 64 hex digits); the old keys stay"),
            "4. S logs the malformed key file and keeps its keys")
    c.check(log_has(c.log, "readable by group or others (chmod 600 it)); the old keys stay"),
            "4. P logs the key file readable by others and keeps its keys")
    c.check(ids_become(surl, key_id(k2), key_id(k1), 1), "4. S still holds K2 and K1")
    c.check(ids_become(purl, key_id(k2), None, 1), "4. P still holds K2")
    c.check(grows(surl), "4. S still takes P's frames under K2")


def retire(c, s, surl, p, purl, files, k1, k2):
    f, g = files
    write_keys(f, k2.hex() + "\n")
    s.send_signal(signal.SIGHUP)
    c.check(ids_become(surl, key_id(k2), None), "5. S holds K2 alone after SIGHUP")
    write_keys(g, k1.hex() + "\n")
    p.send_signal(signal.SIGHUP)
    c.check(ids_become(purl, key_id(k1), None), "6. P tags under K1 again")
    refused = systest.wait_for(lambda: (lambda a: a and a["last_refusal"] and
                                        a["last_refusal"]["code"] == "REPLICATE_ETAG_KEY")(
                                            auth(surl)), 10)
    c.check(refused, "6. S refuses frames under the retired K1: %s" % auth(surl))
    state = systest.wait_for(lambda: (lambda st: st and st["standbys"][0]["state"] ==
                                      "unauthorized")(systest.status(purl)), 10)
    c.check(state, "6. P shows S unauthorized")
    at = applied(surl)
    c.check(not systest.wait_for(lambda: applied(surl) > at, 1.5),
            "6. S applies nothing under the retired key")


def main():
    loomship, _ = systest.loomship_and_rng()
    c = systest.Checks(tempfile.mkdtemp(prefix="loomship-keyreload-"))
    k1, k2 = os.urandom(32), os.urandom(32)
    files = (c.path("f.key"), c.path("g.key"))
    write_keys(files[0], k1.hex() + "\n")
    write_keys(files[1], k1.hex() + "\n")
    s, surl = systest.start_standby(loomship, c.path("s"), log=c.log,
                                    extra=["--frame-key-file", files[0]])
    p, purl, _ = systest.start_primary(
        loomship, ["--dir", c.path("p"), "--standby", surl or "http://127.0.0.1:9",
                   "--saves", "0", "--frame-key-file", files[1]] + ARGS, c.log)
    if not surl or not purl:
        c.check(False, "S and P start")
    else:
        c.check(grows(surl), "1. P's saves reach S under K1")
        rotate(c, s, surl, p, purl, files, k1, k2)
        bad_files(c, s, surl, p, purl, files, k1, k2)
        retire(c, s, surl, p, purl, files, k1, k2)
    systest.stop(p, timeout=10)
    systest.stop(s)
    return systest.report("frame_key_reload", c.failures, c.root)


if __name__ == "__main__":
    sys.exit(main())
