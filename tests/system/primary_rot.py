"""primary_rot.py: a primary restarted on an image with rotted pages does
not ship them (issue 13, DESIGN section 8).

usage: primary_rot.py LOOMSHIP [--seed S]
A primary saves to a standby and stops; one bit is flipped in SEEDED random
value pages of its image file (the seed is printed); restarted, its first
save that changes a rotted page must stop it with exit 1 and a message
naming that page (before, the primary shipped it: the standby was stuck at
a frame whose delta no longer applied, and the primary saved on)."""
import os
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

PS = 16384


def main():
    loomship, rng = systest.loomship_and_rng()
    root = tempfile.mkdtemp(prefix="loomship-primaryrot-")
    log = os.path.join(root, "log")
    pdir, sdir = os.path.join(root, "primary"), os.path.join(root, "standby")
    failures = []
    standby, surl = systest.start_standby(loomship, sdir, log=log)
    args = ["--dir", pdir, "--standby", surl] + systest.SMALL
    proc, purl, line = systest.start_primary(loomship, args + ["--saves", "30"], log)
    out, _ = proc.communicate(timeout=60)
    if proc.returncode != 0:
        failures.append("first run exited %s: %s" % (proc.returncode, out[-300:]))
    before = (systest.status(surl) or {}).get("received", {}).get("seq")
    size = os.path.getsize(os.path.join(pdir, "image"))
    pages = size // PS
    # Pages past the header and slot table hold the values (cli/kv.h).
    victims = sorted(rng.sample(range(2, pages), min(4, pages - 2)))
    with open(os.path.join(pdir, "image"), "r+b") as f:
        for p in victims:
            off = p * PS + rng.randrange(PS)
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))
    print("flipped a bit in pages %s of %d" % (victims, pages))
    proc, purl, line = systest.start_primary(
        loomship, args + ["--saves", "200", "--drain-timeout", "1"], log)
    out, _ = proc.communicate(timeout=60)
    with open(log, errors="replace") as f:
        text = f.read()
    named = [p for p in victims if "page %d of the image does not match" % p in text]
    if proc.returncode != 1:
        failures.append("the restarted primary exited %s, not 1" % proc.returncode)
    if not named:
        failures.append("no message names a rotted page: %s" % text[-600:])
    after = (systest.status(surl) or {}).get("received", {}).get("seq")
    print("standby received seq %s before, %s after; named %s" % (before, after, named))
    systest.stop(standby, signal.SIGTERM)
    return systest.report("primary rot", failures, root)


if __name__ == "__main__":
    sys.exit(main())
