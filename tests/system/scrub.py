"""scrub.py: the scrubber (issue 13, DESIGN section 8).

usage: scrub.py LOOMSHIP [--seed S]
1. A standby scrubbing every second reports integrity ok with pages
   scrubbed; one bit flipped (seeded, the seed printed) in a page of its
   image file while it runs makes it `corrupt` within seconds, last_error
   naming that page, and the metrics say so; a backup pulled from it fails
   saying the image does not match its checksum at that page.
2. A primary serving --listen and scrubbing every second, with a bit
   flipped in its image while it saves slowly (values its saves never
   change are flipped), stops with exit 1 and its scrubber's message
   naming the page."""
import os
import struct
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

PS = 16384



def standby_case(loomship, root, rng, log):
    problems = []
    sdir = os.path.join(root, "standby")
    proc = systest.spawn([loomship, "standby", "--dir", sdir, "--listen", "127.0.0.1:0",
                          "--scrub-interval", "1"], stdout=systest.subprocess.PIPE,
                         stderr=open(log, "ab"))
    line = proc.stdout.readline().decode()
    surl = line.split("listening on ", 1)[1].split()[0] if "listening on " in line else None
    if not surl:
        return ["the standby would not start"]
    p, _, _ = systest.start_primary(loomship, ["--dir", os.path.join(root, "p1"), "--standby",
                                              surl, "--saves", "20"] + systest.SMALL, log)
    p.communicate(timeout=60)
    st = systest.wait_for(lambda: (lambda s: s if s and s["applied"]["seq"] == 20 and
                           s["integrity"]["pages_scrubbed"] >= s["applied"]["pages"]
                           else None)(systest.status(surl)), 10)
    if not st or st["integrity"]["state"] != "ok" or st["integrity"]["pages_scrubbed"] < 1:
        problems.append("no clean scrub pass: %s" % (st or {}).get("integrity"))
    pages = (st or {}).get("applied", {}).get("pages", 4)
    victim = rng.randrange(1, pages)
    systest.flip_bit(os.path.join(sdir, "image"), victim, rng)
    st = systest.wait_for(lambda: (lambda s: s if s and s["integrity"]["state"] == "corrupt"
                           else None)(systest.status(surl)), 20)
    print("standby: flipped page %d of %d: %s" % (victim, pages, (st or {}).get("integrity")))
    # The standby tries to repair from the URL its frames advertised (the
    # primary, stopped by now) before it gives up: its last error then
    # names the page as the first of the bad ones.
    text = (st or {}).get("integrity", {}).get("last_error") or ""
    if not st or ("page %d " % victim not in text and "first %d)" % victim not in text):
        problems.append("the standby did not report page %d corrupt" % victim)
    with urllib.request.urlopen(surl + "/metrics", timeout=2) as r:
        m = r.read().decode()
    if 'loomship_integrity_state{state="corrupt"} 1' not in m:
        problems.append("metrics do not say corrupt")
    # A backup pulled from it says the image does not match its checksum,
    # and where.
    r = systest.subprocess.run([loomship, "backup", "--from", surl, "--out",
                                os.path.join(root, "backup")], capture_output=True,
                               timeout=60)
    err = r.stderr.decode(errors="replace")
    print("backup: exit %d: %s" % (r.returncode, err.strip()[-300:]))
    if r.returncode != 1 or "does not match its checksum" not in err or \
            "page %d " % victim not in err:
        problems.append("the backup does not name page %d: %s" % (victim, err[-300:]))
    systest.stop(proc)
    return problems


def value_pages(image, first_key):
    """The pages of the example's values whose keys are first_key or more,
    from its slot table (cli/kv.c: page 1 holds slots of {u64 key, u32
    page, u32 len}; page 0 or 0xffffffff is no value)."""
    with open(image, "rb") as f:
        f.seek(PS)
        table = f.read(PS)
    pages = []
    for at in range(0, PS, 16):
        key, page, _ = struct.unpack_from("<QII", table, at)
        if page not in (0, 0xFFFFFFFF) and key >= first_key:
            pages.append(page)
    return sorted(pages)


def primary_case(loomship, root, rng, log):
    pdir = os.path.join(root, "p2")
    args = ["--dir", pdir, "--arena-pages", "256", "--pages", "1"]
    p, _, _ = systest.start_primary(
        loomship, args + ["--keys", "64", "--saves", "70", "--rate", "1000"], log)
    p.communicate(timeout=60)
    image = os.path.join(pdir, "image")
    pages = os.path.getsize(image) // PS
    # The victim holds a value the slow saves below never change (they
    # change keys 0-31 only). A save that rewrote it could hide the rot for
    # good, and rightly: the page's committed version would then be read
    # from the commit log, and the checkpoint would overwrite the flipped
    # bit with it.
    untouched = value_pages(image, 32)
    if not untouched:
        return ["no value page of keys 32-63 in the slot table"]
    victim = rng.choice(untouched)
    logged_before = os.path.getsize(log)  # the log is shared with the standby case
    p, purl, _ = systest.start_primary(
        loomship, args + ["--keys", "32", "--saves", "0", "--rate", "1", "--scrub-interval", "1"],
        log)
    if not purl:
        return ["the primary would not start again"]
    systest.flip_bit(os.path.join(pdir, "image"), victim, rng)
    try:
        out, _ = p.communicate(timeout=20)
    except Exception:
        systest.stop(p)
        return ["the primary did not stop on rotted page %d" % victim]
    with open(log, "rb") as f:
        f.seek(logged_before)
        text = f.read().decode(errors="replace")
    said = [l for l in text.splitlines() if "scrub: page %d " % victim in l]
    print("primary: flipped page %d of %d: exit %s, %s" % (victim, pages, p.returncode,
                                                           said[-1:] if said else None))
    if p.returncode != 1 or not said:
        return ["the primary exited %s without naming page %d" % (p.returncode, victim)]
    return []


def main():
    loomship, rng = systest.loomship_and_rng()
    root = tempfile.mkdtemp(prefix="loomship-scrub-")
    log = os.path.join(root, "log")
    failures = standby_case(loomship, root, rng, log)
    failures += primary_case(loomship, root, rng, log)
    return systest.report("scrub", failures, root)


if __name__ == "__main__":
    sys.exit(main())
