"""checksum_acks.py: checksum-carrying acks (issue 13, DESIGN section 8).

A standby answers every frame with the whole-image checksum it computed
itself by reading back the pages it wrote; the primary reports per standby
`verified_seq` and makes a standby whose checksum differs from its own at
the same seq `diverged`, in status and metrics.

usage: checksum_acks.py LOOMSHIP
Two standbys of one primary: a sound one, and one whose disk stores page
PAGE of its image with a bit flipped (LOOMSHIP_FLIP_IMAGE_PAGE, the crash
hook of cli/faultio.h, so this needs -Dfault_hooks=true), every time it
is written: the primary's saves rewrite it. Exit 0 when the sound
standby's verified_seq reaches the primary's seq with no mismatch, and
the other is shown diverged with REPLICATE_ECHECKSUM_MISMATCH in its
last_error, a mismatch counted in metrics, and its verified_seq below the
seq it applied. The flipped standby finds the page by its read-back and
asks for a base image when it cannot repair it (its repairs read back
wrong too); the primary sends one, once (docs/INTEGRITY.md section 5, "A
checksum that differs, explained"): the next save spoils page 1 again
before the standby verified a seq past it, so it stays diverged."""
import time
import argparse
import os
import signal
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

PAGE = 1  # rewritten by every save of the example application with ARGS
ARGS = ["--keys", "300", "--arena-pages", "512", "--pages", "16", "--rate", "100"]


def metrics(url):
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def peer(st, url):
    for p in (st or {}).get("standbys") or []:
        if p.get("url") == url:
            return p
    return {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("loomship")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="loomship-acks-")
    log = os.path.join(root, "log")
    failures = []
    good, gurl = systest.start_standby(a.loomship, os.path.join(root, "good"), log=log)
    env = dict(os.environ, LOOMSHIP_FLIP_IMAGE_PAGE=str(PAGE))
    # No scrubbing: only its read-backs find the page (a scrub pass would
    # find it too, hiding a read-back finding that was lost).
    bad, burl = systest.start_standby(a.loomship, os.path.join(root, "bad"), env=env,
                                      log=log, extra=["--scrub-interval", "0"])
    if not gurl or not burl:
        print("FAIL: a standby would not start (log in %s)" % root)
        return 1
    primary, purl, line = systest.start_primary(
        a.loomship, ["--dir", os.path.join(root, "primary"), "--standby", gurl,
                     "--standby", burl, "--saves", "0"] + ARGS, log)
    if not purl:
        print("FAIL: the primary would not start: %r" % line)
        return 1

    def good_verified():
        st = systest.status(purl)
        p = peer(st, gurl)
        return st if st and p.get("verified_seq", 0) >= 20 else None

    st = systest.wait_for(good_verified, 30)
    if not st:
        failures.append("the sound standby's verified_seq never reached 20: %s"
                        % peer(systest.status(purl), gurl))
    else:
        p = peer(st, gurl)
        if p.get("checksum_mismatches") != 0 or p.get("state") == "diverged":
            failures.append("the sound standby shows a mismatch: %s" % p)
        # The primary's view is as of the standby's last answer, and says when.
        import datetime
        at = p.get("last_reply_at")
        try:
            t = datetime.datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
        except (AttributeError, ValueError):
            t = None
        if t is None or abs(time.time() - t) > 10:
            failures.append("last_reply_at is not the time of a recent answer: %r" % at)
        row = [l for l in metrics(purl).splitlines()
               if l.startswith('loomship_standby_last_reply_time_seconds{url="%s"} ' % gurl)]
        if not row or abs(time.time() - float(row[0].split()[-1])) > 10:
            failures.append("no recent loomship_standby_last_reply_time_seconds: %s" % row)

    def bad_diverged():
        # Diverged after the one base image that tried to mend it.
        p = peer(systest.status(purl), burl)
        return p if p.get("state") == "diverged" and p.get("base_images") == 1 else None

    p = systest.wait_for(bad_diverged, 40)
    if not p:
        failures.append("the standby with a flipped page was never shown diverged "
                        "after one base image: %s"
                        % peer(systest.status(purl), burl))
    else:
        print("flipped standby: %s" % p)
        if "REPLICATE_ECHECKSUM_MISMATCH" not in (p.get("last_error") or "") and \
                "checksum differs" not in (p.get("last_error") or ""):
            failures.append("its last_error does not say the checksum differs: %s"
                            % p.get("last_error"))
        if p.get("checksum_mismatches", 0) < 1:
            failures.append("no mismatch counted: %s" % p)
        if p.get("base_images", 0) > 1:
            failures.append("more than one base image was sent to mend it: %s" % p)
        if p.get("verified_seq", 0) >= p.get("applied_seq", 0) > 0:
            failures.append("verified_seq %s is not below applied_seq %s"
                            % (p.get("verified_seq"), p.get("applied_seq")))
        m = metrics(purl)
        want = 'loomship_standby_checksum_mismatches_total{url="%s"} ' % burl
        row = [l for l in m.splitlines() if l.startswith(want)]
        if not row or float(row[0].split()[-1]) < 1:
            failures.append("metrics do not count the mismatch: %s" % row)
        want = 'loomship_standby_state{url="%s",state="diverged"} 1' % burl
        if want not in m:
            failures.append("metrics do not show it diverged")
        if 'loomship_standby_verified_seq{url="%s"}' % gurl not in m:
            failures.append("metrics have no loomship_standby_verified_seq")
    bst = systest.status(burl) or {}
    print("flipped standby's own status: applied %s, integrity %s" % (
        bst.get("applied"), bst.get("integrity")))
    # Its own account agrees: the base image's read-back found the page
    # (not erased when the base was installed), so it is not `ok`.
    if p and (bst.get("integrity") or {}).get("state") not in ("repairing", "corrupt"):
        failures.append("the flipped standby says its integrity is %s after the base "
                        "image's read-back found page %d" % (bst.get("integrity"), PAGE))

    systest.stop(primary)
    systest.stop(good)
    systest.stop(bad)
    return systest.report("checksum acks", failures, root)


if __name__ == "__main__":
    sys.exit(main())
