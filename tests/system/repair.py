"""repair.py: self-repair of a standby (issue 13, DESIGN section 8,
docs/INTEGRITY.md section 5).

usage: repair.py LOOMSHIP [--seed S]
A primary ships SAVES commits to standbys A and B and exits; B scrubs
every second and repairs from A (--repair-from). All flips are seeded (the
seed printed).
1. Bits flipped in K random pages of B's image while it runs: B finds
   them, fetches just those pages from A, and is `ok` again with
   pages_repaired == K; `loomship compare A B` exits 0; after both stop,
   the image files are byte-identical.
2. A page rotted on A as well as on B: A serves a page that does not match
   its hash; B refuses it and ends `corrupt`, last_error saying so, its
   page unchanged (never written from the bad copy).
3. A stopped (the upstream gone) and another page of B flipped: B ends
   `corrupt` with last_error naming the transfer failure for both bad
   pages, the page as it was."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import systest  # noqa: E402

PS = 16384
SAVES = 30
K = 5
ARGS = ["--keys", "300", "--arena-pages", "512", "--pages", "16", "--rate", "1000"]



def read_page(path, page):
    with open(path, "rb") as f:
        f.seek(page * PS)
        return f.read(PS)


def standby(loomship, d, log, extra):
    proc = systest.spawn([loomship, "standby", "--dir", d, "--listen", "127.0.0.1:0"] + extra,
                         stdout=subprocess.PIPE, stderr=open(log, "ab"))
    line = proc.stdout.readline().decode()
    url = line.split("listening on ", 1)[1].split()[0] if "listening on " in line else None
    return proc, url


def integrity(url):
    s = systest.status(url)
    return s["integrity"] if s else None


def wait_integrity(url, pred, timeout):
    return systest.wait_for(lambda: (lambda i: i if i and pred(i) else None)(integrity(url)),
                            timeout)


def repaired_case(loomship, bdir, adir, aurl, burl, pages, rng):
    problems = []
    victims = sorted(rng.sample(range(1, pages), K))
    for v in victims:
        systest.flip_bit(os.path.join(bdir, "image"), v, rng)
    print("1. flipped pages %s of %d in B" % (victims, pages))
    i = wait_integrity(burl, lambda i: i["pages_repaired"] >= K and i["state"] == "ok", 30)
    print("   B: %s" % integrity(burl))
    if not i:
        problems.append("B did not repair pages %s: %s" % (victims, integrity(burl)))
    elif i["pages_repaired"] != K:
        problems.append("B repaired %d pages, not %d" % (i["pages_repaired"], K))
    r = subprocess.run([loomship, "compare", aurl, burl], capture_output=True, timeout=60)
    print("   compare A B: exit %d %s" % (r.returncode, r.stdout.decode().strip()))
    if r.returncode != 0:
        problems.append("compare A B after the repair: exit %d: %s%s" % (
            r.returncode, r.stdout.decode(), r.stderr.decode()))
    for v in victims:
        if read_page(os.path.join(bdir, "image"), v) != read_page(os.path.join(adir, "image"), v):
            problems.append("page %d of B differs from A's after the repair" % v)
    return problems


def refused_case(adir, bdir, burl, pages, rng, done):
    victim = rng.choice([p for p in range(1, pages) if p not in done])
    systest.flip_bit(os.path.join(adir, "image"), victim, rng)
    systest.flip_bit(os.path.join(bdir, "image"), victim, rng)
    rotted = read_page(os.path.join(bdir, "image"), victim)
    print("2. flipped page %d in A and in B" % victim)
    i = wait_integrity(burl, lambda i: i["state"] == "corrupt" and
                       "refused" in i["last_error"], 30)
    print("   B: %s" % i)
    problems = []
    if not i or "does not match its hash" not in i["last_error"] or \
            "page %d" % victim not in i["last_error"] and "first %d)" % victim not in \
            i["last_error"]:
        problems.append("B took or did not refuse A's rotted page %d: %s" % (victim, i))
    if read_page(os.path.join(bdir, "image"), victim) != rotted:
        problems.append("B wrote page %d from a refused copy" % victim)
    return problems, victim


def dead_upstream_case(aproc, bdir, burl, pages, rng, done):
    systest.stop(aproc)
    victim = rng.choice([p for p in range(1, pages) if p not in done])
    systest.flip_bit(os.path.join(bdir, "image"), victim, rng)
    rotted = read_page(os.path.join(bdir, "image"), victim)
    print("3. A stopped; flipped page %d in B" % victim)
    i = wait_integrity(burl, lambda i: i["state"] == "corrupt" and
                       "2 bad pages" in i["last_error"] and "failed" in i["last_error"] and
                       "refused" not in i["last_error"], 40)
    print("   B: %s" % i)
    problems = []
    if not i:
        problems.append("B did not give up on a dead upstream with a message: %s" % i)
    if read_page(os.path.join(bdir, "image"), victim) != rotted:
        problems.append("B changed page %d with its upstream dead" % victim)
    return problems


def main():
    loomship, rng = systest.loomship_and_rng()
    root = tempfile.mkdtemp(prefix="loomship-repair-")
    log = os.path.join(root, "log")
    adir, bdir = os.path.join(root, "a"), os.path.join(root, "b")
    aproc, aurl = standby(loomship, adir, log, [])
    bproc, burl = None, None
    if aurl:
        bproc, burl = standby(loomship, bdir, log, ["--scrub-interval", "1",
                                                    "--repair-from", aurl])
    if not aurl or not burl:
        return systest.report("repair", ["the standbys would not start"], root)
    p, _, _ = systest.start_primary(loomship, ["--dir", os.path.join(root, "p"), "--saves",
                                               str(SAVES), "--standby", aurl, "--standby",
                                               burl] + ARGS, log)
    p.communicate(timeout=60)
    st = systest.wait_for(lambda: (lambda s: s if s and s["applied"]["seq"] == SAVES and
                           s["integrity"]["pages_scrubbed"] >= s["applied"]["pages"]
                           else None)(systest.status(burl)), 20)
    failures = []
    if not st or st["integrity"]["state"] != "ok":
        failures.append("B did not catch up and scrub clean: %s" % st)
    else:
        pages = st["applied"]["pages"]
        failures += repaired_case(loomship, bdir, adir, aurl, burl, pages, rng)
        systest.stop(bproc)
        systest.stop(aproc)
        with open(os.path.join(adir, "image"), "rb") as fa, \
                open(os.path.join(bdir, "image"), "rb") as fb:
            if fa.read() != fb.read():
                failures.append("the image files of A and B differ after the repair")
        aproc, aurl = standby(loomship, adir, log, [])
        bproc, burl = standby(loomship, bdir, log, ["--scrub-interval", "1",
                                                    "--repair-from", aurl or "x"])
        more, v2 = refused_case(adir, bdir, burl, pages, rng, set())
        failures += more
        failures += dead_upstream_case(aproc, bdir, burl, pages, rng, {v2})
    systest.stop(bproc)
    systest.stop(aproc)
    return systest.report("repair", failures, root)


if __name__ == "__main__":
    sys.exit(main())
