"""readback_repair.py: self-repair triggered by the read-back of an apply
(issue 13, docs/INTEGRITY.md sections 1 and 5): a write to the image that
landed wrong once is found by reading the applied pages back, repaired
from the upstream, and streaming goes on, with no base image.

usage: readback_repair.py LOOMSHIP [--seed S]
Needs -Dfault_hooks=true: standby S's disk stores the first write of page
PAGE of its image with a bit flipped (LOOMSHIP_FLIP_IMAGE_PAGE with
LOOMSHIP_FLIP_IMAGE_TIMES=1, cli/faultio.h), then is sound. S does not
scrub (--scrub-interval 0) and has no --repair-from: it repairs from the
URL the primary P advertises (P serves --listen). S is first brought to
P's position by a run of P with a sound disk, so that the repair moves
few pages (most of the image moving is a base image's job, mass_rot.py);
then S is restarted with the faulty disk and P saves on:
1. S logs that page PAGE did not read back as written, is `ok` again with
   pages_repaired >= 1, and keeps applying P's saves;
2. P never sent S a base image (S's base_images 0, P's standby entry too);
3. `loomship compare P S` exits 0 while P saves on;
4. both stopped (P draining to S): the image files are byte-identical.
Then the same fault with no upstream to repair from (P advertises a port
nobody serves): P sees S's computed checksum differ from its own, but S
says its image is damaged and asks for a base image, which P sends (a
mismatch S explains is rot, not another history: docs/INTEGRITY.md 5):
5. S is `ok` again after base images (P's entry counts them and the
   checksum mismatch), P does not show S diverged, S applies on, and both
   stopped the image files are byte-identical."""
import os
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

PAGE = 1  # rewritten by every save of the example application
ARGS = ["--keys", "300", "--arena-pages", "512", "--pages", "16", "--rate", "20"]


def log_has(path, text):
    with open(path, errors="replace") as f:
        return text in f.read()


def main():
    loomship, _ = systest.loomship_and_rng()
    c = systest.Checks(tempfile.mkdtemp(prefix="loomship-readback-"))
    s, surl = systest.start_standby(loomship, c.path("s"), log=c.log,
                                    extra=["--scrub-interval", "0"])
    first = subprocess.run([loomship, "primary", "--dir", c.path("p"), "--standby",
                            surl or "http://127.0.0.1:9", "--saves", "30"] + ARGS,
                           capture_output=True, timeout=60)
    c.check(first.returncode == 0, "0. P's first 30 saves reach S (exit %d)" % first.returncode)
    systest.stop(s)
    env = dict(os.environ, LOOMSHIP_FLIP_IMAGE_PAGE=str(PAGE), LOOMSHIP_FLIP_IMAGE_TIMES="1")
    s, surl = systest.start_standby(loomship, c.path("s"), env=env, log=c.log,
                                    extra=["--scrub-interval", "0"])
    p, purl, _ = systest.start_primary(
        loomship, ["--dir", c.path("p"), "--standby", surl or "http://127.0.0.1:9",
                   "--saves", "0"] + ARGS, c.log)
    if not surl or not purl:
        c.check(False, "S and P start")
        return systest.report("readback_repair", c.failures, c.root)
    st = systest.wait_for(lambda: (lambda x: x if x and x["integrity"]["pages_repaired"] >= 1
                                   and x["integrity"]["state"] == "ok" else None)(
                                       systest.status(surl)), 30)
    print("1. S integrity: %s" % (st and st["integrity"]))
    c.check(st, "1. S repaired the page that did not read back and is ok")
    c.check(log_has(c.log, "page %d read back from the image does not match" % PAGE) and
            log_has(c.log, "fetched from the upstream"),
            "1. S's log says page %d did not read back as written, and the repair" % PAGE)
    at = st["applied"]["seq"] if st else 0
    c.check(systest.wait_for(lambda: (systest.status(surl) or {"applied": {"seq": 0}})
                             ["applied"]["seq"] > at + 20, 20),
            "1. S keeps applying P's saves after the repair")
    r = subprocess.run([loomship, "compare", purl, surl], capture_output=True, timeout=60)
    print("3. compare P S: exit %d %s" % (r.returncode, r.stderr.decode().strip()))
    c.check(r.returncode == 0, "3. compare P S exits 0 while P saves on")
    pst, sst = systest.status(purl), systest.status(surl)
    pbases = pst and pst["standbys"][0]["base_images"]
    sbases = sst and sst["counters"]["base_images"]
    print("2. base images: P's entry %s, S %s" % (pbases, sbases))
    c.check(pbases == 0 and sbases == 0, "2. no base image was sent")
    rc = systest.stop(p, signal.SIGTERM, timeout=40)
    c.check(rc == 0, "4. P stopped with S holding everything (exit %s)" % rc)
    systest.stop(s)
    c.check(systest.same_files(c.path("p/image"), c.path("s/image")),
            "4. S's image file is byte-identical to P's")
    no_upstream(loomship, c, env)
    return systest.report("readback_repair", c.failures, c.root)


def no_upstream(loomship, c, env):
    """Part 5: the read-back finds the page, no repair can fetch it, and S's
    primary sends it a base image although their checksums differ."""
    s, surl = systest.start_standby(loomship, c.path("s"), env=env, log=c.log,
                                    extra=["--scrub-interval", "0"])
    p, purl, _ = systest.start_primary(
        loomship, ["--dir", c.path("p"), "--standby", surl or "http://127.0.0.1:9",
                   "--saves", "0", "--advertise", "http://127.0.0.1:9"] + ARGS, c.log)
    if not surl or not purl:
        c.check(False, "5. S and P start again")
        systest.stop(p)
        systest.stop(s)
        return

    def mended():
        st, pst = systest.status(surl), systest.status(purl)
        if not st or not pst or st["counters"]["base_images"] < 1:
            return None
        entry = pst["standbys"][0]
        if st["integrity"]["state"] != "ok" or entry["state"] != "streaming":
            return None
        return st, entry
    got = systest.wait_for(mended, 90)  # six repair rounds, ~31 s, first
    st, entry = got or (systest.status(surl), (systest.status(purl) or {"standbys": [None]})
                        ["standbys"][0])
    print("5. S integrity %s, base images %s; P's entry %s" % (
        st and st["integrity"], st and st["counters"]["base_images"], entry))
    c.check(got, "5. S is ok and streaming again after a base image")
    c.check(entry and entry["base_images"] >= 1 and entry["checksum_mismatches"] >= 1,
            "5. P counts the checksum mismatch and the base image it sent")
    at = st["applied"]["seq"] if st else 0
    c.check(systest.wait_for(lambda: (systest.status(surl) or {"applied": {"seq": 0}})
                             ["applied"]["seq"] > at + 20, 20),
            "5. S keeps applying P's saves after the base image")
    rc = systest.stop(p, signal.SIGTERM, timeout=40)
    c.check(rc == 0, "5. P stopped with S holding everything (exit %s)" % rc)
    systest.stop(s)
    c.check(systest.same_files(c.path("p/image"), c.path("s/image")),
            "5. S's image file is byte-identical to P's")


if __name__ == "__main__":
    sys.exit(main())
