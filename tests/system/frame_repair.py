"""frame_repair.py: a frame that no longer applies makes a standby repair
itself from the upstream its frames advertise (issue 13, DESIGN section 8,
docs/INTEGRITY.md section 5).

usage: frame_repair.py LOOMSHIP [--seed S]
A primary ships SAVES commits to standby S (no --repair-from, no
scrubbing) and stops. A bit is flipped in page 1 of S's image, which every
save of the example application rewrites (sent as an XOR delta against the
rotted page). The primary starts again, serving --listen (so its frames
advertise it) and saving on:
1. S finds the next frame no longer applies, repairs the rotted page and
   what changed meanwhile from the primary at the primary's position, and
   catches up: integrity `ok`, pages_repaired >= 1, applied at the
   primary's seq, and the primary never sent it a base image.
2. `loomship compare PRIMARY S` exits 0 while the primary saves on.
3. Both stopped: the image files are byte-identical and verify passes.
The same with a frame key on both ends (tagged repair answers)."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

SAVES = 20
ARGS = ["--keys", "300", "--arena-pages", "512", "--pages", "16"]


def standby(loomship, d, log, extra):
    return systest.start_standby(loomship, d, log=log, extra=["--scrub-interval", "0"] + extra)


def episode(loomship, root, name, rng, extra):
    log = os.path.join(root, name + ".log")
    pdir, sdir = os.path.join(root, name + "-p"), os.path.join(root, name + "-s")
    sproc, surl = standby(loomship, sdir, log, extra)
    if not surl:
        return ["%s: the standby would not start" % name]
    r = subprocess.run([loomship, "primary", "--dir", pdir, "--standby", surl, "--saves",
                        str(SAVES), "--rate", "1000"] + ARGS + extra, capture_output=True,
                       timeout=60)
    st, ok = systest.wait_applied(surl, SAVES, 10)
    # The bit is flipped once S read back the pages of its last apply
    # (status `computed` at that seq): flipped earlier, the read-back finds
    # it before any frame, with no upstream yet (a run on a loaded machine
    # did, and got a base image after its repair found P far ahead).
    ok = ok and systest.wait_for(lambda: ((systest.status(surl) or {}).get("computed") or
                                          {}).get("seq") == SAVES, 10)
    if r.returncode != 0 or not ok:
        systest.stop(sproc)
        return ["%s: the first %d saves did not reach S, or were not read back: %s" % (
            name, SAVES, systest.status(surl))]
    systest.flip_bit(os.path.join(sdir, "image"), 1, rng)
    print("%s: flipped a bit of page 1 in S at seq %d" % (name, SAVES))
    p, purl, _ = systest.start_primary(loomship, ["--dir", pdir, "--standby", surl,
                                                  "--saves", "0", "--rate", "20"]
                                       + ARGS + extra, log)
    problems = []
    s = systest.wait_for(lambda: (lambda s: s if s and s["integrity"]["pages_repaired"] >= 1
                                  and s["integrity"]["state"] == "ok"
                                  and s["applied"]["seq"] > SAVES + 5 else None)(
                                      systest.status(surl)), 30)
    print("   S: applied %s, integrity %s" % (
        s and s["applied"]["seq"], (s or systest.status(surl) or {}).get("integrity")))
    if not s:
        problems.append("%s: S did not repair itself and catch up: %s" % (
            name, systest.status(surl)))
    ps = systest.status(purl) if purl else None
    sent = ps and [x["base_images"] for x in ps["standbys"]]
    print("   primary: base images sent %s" % sent)
    if not ps or sent != [0]:
        problems.append("%s: the primary sent base images (%s): repair should do" % (name, sent))
    c = subprocess.run([loomship, "compare", purl or "x", surl], capture_output=True,
                       timeout=60)
    print("   compare: exit %d %s" % (c.returncode, c.stdout.decode().strip()))
    if c.returncode != 0:
        problems.append("%s: compare P S: exit %d %s%s" % (
            name, c.returncode, c.stdout.decode(), c.stderr.decode()))
    rc = systest.stop(p)
    systest.stop(sproc)
    if rc != 0:
        problems.append("%s: the primary exited %s" % (name, rc))
    problems += ["%s: %s" % (name, x) for x in systest.compare_nodes(loomship, pdir, sdir)]
    return problems


def main():
    loomship, rng = systest.loomship_and_rng()
    root = tempfile.mkdtemp(prefix="loomship-framerepair-")
    failures = episode(loomship, root, "plain", rng, [])
    key = os.path.join(root, "key")
    fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (bytes(rng.randrange(256) for _ in range(32)).hex() + "\n").encode())
    os.close(fd)
    failures += episode(loomship, root, "keyed", rng, ["--frame-key-file", key])
    return systest.report("frame_repair", failures, root)


if __name__ == "__main__":
    sys.exit(main())
