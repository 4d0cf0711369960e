#!/usr/bin/env python3
"""node_repair.py LOOMSHIP: self-repair on a cluster member (issue 16 with
issue 13; docs/INTEGRITY.md section 5). Three `loomship node`s on a real
3-member etcd (tests/lib/etcd.py), each scrubbing every second, the
leader saving twice a second. Three pages of a standby member's image
file are flipped behind its back while it runs; then, without a person
and without a base image:

1. the member's scrubber finds them and its repair hook fetches the good
   pages from the leader: integrity.pages_repaired >= 1, state ok;
2. its image is byte-identical with the leader's again: their backups
   (GET /v1/backup) at one position (the same ETag) are equal;
3. the leader sent it no base image (standbys[].base_images unchanged).

Exit 0 passed, 1 failed, 77 etcd missing."""
import os
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import episodes  # noqa: E402
from checks import check  # noqa: E402

PAGE = 16384


def backup(nd):
    """(ETag, body) of the node's GET /v1/backup, or (None, None)."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/v1/backup" % nd.port,
                                    timeout=5) as r:
            return r.headers.get("ETag"), r.read()
    except OSError:
        return None, None


def base_images(lead, nd):
    """The base images the leader sent nd so far (its standbys entry)."""
    for sb in (lead.status() or {}).get("standbys", []):
        if sb.get("url", "").endswith(":%d" % nd.port):
            return sb.get("base_images")
    return None


def rot(nd, pages):
    with open(os.path.join(nd.dir, "image"), "r+b") as f:
        for n in pages:
            f.seek(n * PAGE + 777)
            b = f.read(1)
            f.seek(n * PAGE + 777)
            f.write(bytes([b[0] ^ 0x5a]))
        f.flush()
        os.fsync(f.fileno())


def identical(lead, nd):
    """Backups of both at one position, equal byte for byte."""
    state = {}

    def same():
        e1, b1 = backup(lead)
        e2, b2 = backup(nd)
        state["last"] = (e1, e2)
        return e1 is not None and e1 == e2 and b1 == b2
    return episodes.poll(same, 30, step=0.1), state.get("last")


def run(c):
    got = c.wait_acks((0, 0), count=20, deadline=60)
    check("a leader acknowledges saves", got is not None)
    lead = c.leader()
    victim = next(nd for nd in c.nodes if nd is not lead)
    check("the standby scrubs (--scrub-interval 1)", episodes.poll(
        lambda: (victim.status() or {}).get("integrity", {}).get("pages_scrubbed", 0) > 0, 20))
    bases = base_images(lead, victim)
    check("the leader lists the standby", bases is not None)
    pages = os.path.getsize(os.path.join(victim.dir, "image")) // PAGE
    bad = sorted({pages // 4, pages // 2, pages - 2})
    rot(victim, bad)
    print("flipped pages %s of %d in %s's image" % (bad, pages, victim.name))

    def repaired():
        i = (victim.status() or {}).get("integrity", {})
        return i.get("pages_repaired", 0) >= 1 and i.get("state") == "ok"
    ok = episodes.poll(repaired, 30)
    check("the member repaired the pages from the leader (integrity ok, "
          "pages_repaired >= 1)", ok, (victim.status() or {}).get("integrity"))
    same, etags = identical(lead, victim)
    check("its image is byte-identical with the leader's (backups at one position)",
          same, etags)
    check("no base image was sent to it", base_images(lead, victim) == bases,
          "%s -> %s" % (bases, base_images(lead, victim)))


def main():
    return episodes.run_checks(os.path.abspath(sys.argv[1]), "repair", run, etcd_members=3,
                               extra_args=["--scrub-interval", "1", "--scrub-mbps", "16"],
                               ttl=2, sync=0, rate=2)


if __name__ == "__main__":
    sys.exit(main())
