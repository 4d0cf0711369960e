"""primary_rot.py: a primary restarted on an image with rotted pages does
not ship them (issue 13, DESIGN section 8).

usage: primary_rot.py LOOMSHIP [--seed S]
A primary saves to a standby and stops; one bit is flipped in SEEDED random
value pages of its image file (the seed is printed); restarted, its first
save that changes a rotted page must stop it with exit 1 and a message
naming that page (before, the primary shipped it: the standby was stuck at
a frame whose delta no longer applied, and the primary saved on). The save
is refused before its commit point (LOOM_CHECK_PREVIOUS): the primary's
directory stays at the last sound save, which the standby holds and the
ack log (--ack-log) ends with, and `loomship verify` of the primary still
reports the rot (it was never hashed into a valid checksum)."""
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
    acks = os.path.join(root, "acks")
    proc, purl, line = systest.start_primary(
        loomship, args + ["--saves", "200", "--drain-timeout", "5", "--ack-log", acks], log)
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
    st, _ = systest.wait_applied(surl, after, 10)
    ip = systest.inspect(loomship, pdir)
    with open(acks) if os.path.exists(acks) else open(os.devnull) as f:
        lines = f.read().split()
    last_ack = int(lines[-2]) if len(lines) >= 3 else before
    ok, text = systest.verify(loomship, pdir)
    print("primary at %s, standby applied %s, last ack seq %s; verify: %s" % (
        ip and (ip["seq"], ip["checksum"]), st and st["applied"], last_ack, text[-160:]))
    if not ip or not st or ip["seq"] != st["applied"]["seq"] or \
            ip["checksum"] != st["applied"]["checksum"]:
        failures.append("the primary committed past what the standby holds (a save with "
                        "the rotted bytes was committed)")
    if not ip or last_ack != ip["seq"]:
        failures.append("the ack log does not end at the primary's committed seq")
    if ok:
        failures.append("verify of the primary passes: the rot was hashed into its checksum")
    systest.stop(standby, signal.SIGTERM)
    return systest.report("primary rot", failures, root)


if __name__ == "__main__":
    sys.exit(main())
