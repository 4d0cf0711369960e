"""mass_rot.py: a standby with more bad pages than a repair moves page by
page falls back to a base image from its primary and is not left stuck
(issue 13, docs/INTEGRITY.md section 5).

usage: mass_rot.py LOOMSHIP [--seed S]
A primary P fills the image on standby S (a first run), then runs again
(--listen, so it advertises itself as the upstream), saving one value a
second; S scrubs every second. Each case rots pages of S's image while
both run:
1. more than REPLICATE_PAGES_MAX (256) pages: S's pass finds them, says
   in integrity.last_error and its log that a base image is asked for,
   answers frames 409 until one comes, takes it, and is `ok` again;
2. more than half of a small image (fewer than 256 pages): the repair
   round is refused as too big (REPLICATE_ETOOBIG), and the same follows
   at once (no retries).
Then P stops (draining to S) and S's image file is byte-identical to
P's."""
import os
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402


def run_case(c, loomship, rng, name, args, min_pages, rot):
    """A first run of P (args, 40 saves) fills the image; then P saves on
    slowly (one value a second: few frames repair pages before the
    scrubber's pass sees them), and once S's image has min_pages pages,
    rot(pages) of them are flipped."""
    s, surl = systest.start_standby(loomship, c.path(name + "-s"), log=c.log,
                                    extra=["--scrub-interval", "1"])
    subprocess.run([loomship, "primary", "--dir", c.path(name + "-p"), "--standby",
                    surl or "http://127.0.0.1:9", "--saves", "40"] + args,
                   capture_output=True, timeout=120)
    slow = args[:args.index("--pages")] + ["--pages", "1", "--rate", "1"]
    p, purl, _ = systest.start_primary(
        loomship, ["--dir", c.path(name + "-p"), "--standby", surl or "http://127.0.0.1:9",
                   "--saves", "0"] + slow, c.log)
    st = systest.wait_for(lambda: (lambda x: x if x and x["applied"]["pages"] >= min_pages and
                                   x["integrity"]["pages_scrubbed"] >= x["applied"]["pages"]
                                   else None)(systest.status(surl)), 30) if surl else None
    if not st or not purl:
        c.check(False, "%s: S caught up and scrubbed (%s)" % (name, st))
        systest.stop(p)
        systest.stop(s)
        return
    pages = st["applied"]["pages"]
    bases = st["counters"]["base_images"]
    n = rot(pages)
    victims = sorted(rng.sample(range(pages), n))
    for v in victims:
        systest.flip_bit(c.path(name + "-s/image"), v, rng)
    print("%s: flipped %d of S's %d pages" % (name, n, pages))
    asked = systest.wait_for(lambda: (lambda i: i if i and "a base image from the primary is "
                                      "asked for" in (i["last_error"] or "") else None)(
                                          (systest.status(surl) or {}).get("integrity")), 30)
    print("   S integrity when it asked: %s" % asked)
    c.check(asked, "%s: S says a base image is asked for" % name)
    back = systest.wait_for(lambda: (lambda x: x if x and x["integrity"]["state"] == "ok" and
                                     x["counters"]["base_images"] > bases else None)(
                                         systest.status(surl)), 30)
    print("   S after: %s" % str(back and [back["integrity"], back["counters"]["base_images"]]))
    c.check(back, "%s: S took a base image and is ok again" % name)
    r = systest.stop(p, signal.SIGTERM, timeout=40)
    c.check(r == 0, "%s: P stopped with every standby holding everything (exit %s)" % (name, r))
    systest.stop(s)
    c.check(systest.same_files(c.path(name + "-p/image"), c.path(name + "-s/image")),
            "%s: S's image file is byte-identical to P's" % name)


def main():
    loomship, rng = systest.loomship_and_rng()
    c = systest.Checks(tempfile.mkdtemp(prefix="loomship-massrot-"))
    run_case(c, loomship, rng, "many",
             ["--keys", "500", "--arena-pages", "1024", "--pages", "16", "--rate", "100"],
             300, lambda pages: pages - 1)
    run_case(c, loomship, rng, "half",
             ["--keys", "64", "--arena-pages", "512", "--pages", "16", "--rate", "100"],
             40, lambda pages: pages * 3 // 4)
    return systest.report("mass_rot", c.failures, c.root)


if __name__ == "__main__":
    sys.exit(main())
