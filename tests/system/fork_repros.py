#!/usr/bin/env python3
"""fork_repros.py: issue 11's three data-loss repros as exact process-level
tests (DESIGN sections 3 and 5), one per run:

  empty-primary  A standby at seq 100. A primary started on an empty
                 directory, and one started on an older copy (seq 50) of the
                 real primary's directory, must not wipe it: the standby
                 keeps seq 100 and its checksum (and its history) at every
                 reading, the primary's status shows it `diverged`, and the
                 primary, stopped, exits 4 and says so; the standby, which
                 refused the other history, says `diverged` in its status
                 (the older copy, behind it in its own history, sees it is
                 ahead from its answered position and sends nothing). Then the standby stops, inspects at seq 100 with
                 the same checksum, and verifies.
  two-copies     A primary directory at seq 20, copied to A, B, C and D.
                 One after the other (standby S1): A runs 10 saves (S1
                 follows it), then B: S1 never leaves A's position, B shows
                 it `diverged` and exits 4. At once (standby S2): C and D
                 run together: S2 never switches history, never goes back,
                 never changes the checksum at a seq it held; at least one
                 of them shows it `diverged`; not both exit 0; S2 ends at
                 the final position of the one that exited 0.
  promote-empty  `POST /v1/promote` of a standby that never applied
                 anything answers 409 with code PROMOTE_EMPTY and
                 `loomship promote URL` exits non-zero, the node staying a
                 standby; `loomship promote URL --force` promotes it (a
                 higher epoch). A standby that applied 5 saves and is
                 current is promoted without --force.

usage: fork_repros.py LOOMSHIP empty-primary|two-copies|promote-empty [--keep]
Exit 0 when every check passed, 1 otherwise (the scratch directory is kept).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import forks  # noqa: E402
import systest  # noqa: E402


class Repro:
    def __init__(self, loomship, root):
        self.loomship, self.root = loomship, root
        self.failures = self.passes = 0
        self.features = forks.features(loomship)

    def p(self, what):
        return os.path.join(self.root, what)

    def check(self, what, ok, detail=""):
        if ok:
            self.passes += 1
            print("ok: " + what, flush=True)
        else:
            self.failures += 1
            print("FAIL: %s%s" % (what, (": " + detail) if detail else ""), flush=True)
        return ok

    # -- processes --

    def standby(self, name):
        proc, url = systest.start_standby(self.loomship, self.p(name), log=self.p(name + ".log"))
        if url is None:
            raise RuntimeError("standby %s would not start" % name)
        return proc, url

    def primary_args(self, d, urls, saves, rate="1000"):
        args = [self.loomship, "primary", "--dir", self.p(d), "--saves", str(saves),
                "--drain-timeout", "2", "--keys", "16", "--arena-pages", "128",
                "--pages", "2", "--rate", rate]
        for u in urls:
            args += ["--standby", u]
        if self.features["ack_log"]:
            args += ["--ack-log", self.p(d + ".acks")]
        return args

    def run_primary(self, d, urls, saves):
        """Run to the end; (exit status, output)."""
        with open(self.p("primary.log"), "ab") as log:
            r = subprocess.run(self.primary_args(d, urls, saves), stdout=subprocess.PIPE,
                               stderr=log, timeout=120)
        return r.returncode, r.stdout.decode(errors="replace")

    def serve_primary(self, d, urls):
        """A primary saving 100 a second until SIGTERM, with --listen;
        (process, its status URL)."""
        log = open(self.p(d + ".log"), "ab")
        proc = systest.spawn(self.primary_args(d, urls, 0, rate="100") + ["--listen", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, stderr=log)
        log.close()
        line = proc.stdout.readline().decode(errors="replace")
        if "listening on " not in line:
            raise RuntimeError("primary on %s would not start: %r" % (d, line))
        return proc, line.split("listening on ", 1)[1].split()[0]

    def stop_primary(self, proc, d):
        """SIGTERM; (exit status, stdout + the tail of its log)."""
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        with open(self.p(d + ".log"), errors="replace") as f:
            tail = f.read()[-2000:]
        return proc.returncode, out.decode(errors="replace") + tail

    # -- readings --

    def standby_state(self, purl):
        """States of the primary's standbys in its status (a list)."""
        st = systest.status(purl)
        return [s.get("state") for s in st.get("standbys", [])] if st else []

    def held(self, surl):
        """The standby's (applied, received) positions, or None."""
        st = systest.status(surl)
        if st is None:
            return None
        return forks.position(st, "applied"), forks.position(st, "received"), st

    def watch(self, surl, expect, primaries, min_s, max_s):
        """Sample the standby every 10 ms for min_s..max_s seconds, until one
        of the primaries' status shows it `diverged`. expect(pos) names a
        problem with a position, or None. Returns (problems, which primary
        indexes showed diverged, whether the standby's status said
        diverged)."""
        problems, diverged, standby_said = [], set(), False
        t0 = time.monotonic()
        while time.monotonic() - t0 < max_s:
            h = self.held(surl)
            if h is None:
                problems.append("the standby did not answer")
            else:
                # applied trails received (the applier is asynchronous):
                # each is checked on its own (expect may be a pair).
                expects = expect if isinstance(expect, tuple) else (expect, expect)
                for pos, ex in zip(h[:2], expects):
                    pr = ex(pos)
                    if pr and pr not in problems and len(problems) < 3:
                        problems.append(pr)  # the first few say enough
                standby_said = standby_said or bool(h[2].get("diverged"))
            for i, purl in enumerate(primaries):
                if "diverged" in self.standby_state(purl):
                    diverged.add(i)
            if diverged and time.monotonic() - t0 >= min_s:
                break
            time.sleep(0.01)
        return problems, diverged, standby_said


def exactly(seq, checksum, history):
    """expect(): the position is (seq, checksum) of that history."""
    def expect(pos):
        if pos is None:
            return "no position"
        if (pos["seq"], pos["checksum"]) != (seq, checksum):
            return "seq %d checksum %s, not seq %d checksum %s" % (pos["seq"], pos["checksum"],
                                                                   seq, checksum)
        if history and pos["history"] != history:
            return "history %s, not %s" % (pos["history"], history)
        return None
    return expect


def empty_primary(t):
    # Two standbys follow the primary to seq 100: one meets a primary on an
    # empty directory, the other one on an older copy of the primary's.
    procs, urls = zip(*(t.standby(n) for n in ("s1", "s2")))
    rc, _ = t.run_primary("p", urls, 50)
    t.check("the primary reached seq 50 (exit 0)", rc == 0)
    shutil.copytree(t.p("p"), t.p("older"), symlinks=True)
    rc, _ = t.run_primary("p", urls, 50)
    t.check("the primary reached seq 100 (exit 0)", rc == 0)
    cases = (("empty", "an empty directory"), ("older", "an older copy (seq 50)"))
    for (d, what), surl, sproc, name in zip(cases, urls, procs, ("s1", "s2")):
        print("== a primary on %s against %s at seq 100" % (what, name))
        # The primary's exit 0 means received (durable); applied follows.
        systest.wait_applied(surl, 100, 10)
        applied, _, _ = t.held(surl)
        t.check("%s applied seq 100" % name, applied["seq"] == 100, str(applied))
        seq, cs, hist = applied["seq"], applied["checksum"], applied["history"]
        expect = exactly(seq, cs, hist)
        proc, purl = t.serve_primary(d, [surl])
        problems, diverged, said = t.watch(surl, expect, [purl], 0.5, 10)
        t.check("%s keeps seq %d checksum %s at every reading" % (name, seq, cs),
                not problems, "; ".join(problems))
        t.check("the primary shows %s `diverged` in its status" % name,
                diverged, "states seen: %s" % t.standby_state(purl))
        if d == "empty":
            # Another history reaches the standby and is refused there (409);
            # a primary behind a standby of its own history sees that from the
            # standby's answered position and sends nothing to refuse.
            t.check("%s's status says `diverged` (not null)" % name, said)
        rc, out = t.stop_primary(proc, d)
        t.check("the primary exits 4 (stopped without every standby holding everything)",
                rc == 4, "exit %s" % rc)
        t.check("... and says the standby diverged", "diverged" in out, out[-300:])
        h = t.held(surl)
        t.check("%s still holds seq %d checksum %s" % (name, seq, cs),
                h and not expect(h[0]) and not expect(h[1]), str(h and h[:2]))
        t.check("%s stops cleanly" % name, systest.stop(sproc) == 0)
        doc = systest.inspect(t.loomship, t.p(name))
        t.check("inspect: %s's directory is at seq %d checksum %s" % (name, seq, cs),
                doc and not expect(forks.position(doc)), str(doc))
        ok, out = systest.verify(t.loomship, t.p(name))
        t.check("verify passes on %s's directory" % name, ok, out)


def never_switches(start):
    """expect(): a sampled position never moves back, to another history, or
    onto another checksum at a seq seen before (a forks.Tracker)."""
    track = forks.Tracker()
    track.see("start", start)

    def expect(pos):
        problems = track.see("position", pos)
        return "; ".join(problems) if problems else None
    return expect


def two_copies(t):
    s1, u1 = t.standby("s1")
    s2, u2 = t.standby("s2")
    rc, _ = t.run_primary("p", [u1, u2], 20)
    t.check("the primary reached seq 20 on both standbys (exit 0)", rc == 0)
    for c in "abcd":
        shutil.copytree(t.p("p"), t.p(c), symlinks=True)

    print("== one after the other: A, then B, against S1")
    rc, out = t.run_primary("a", [u1], 10)
    t.check("copy A runs 10 saves (exit 0)", rc == 0, "exit %s" % rc)
    last_a = systest.committed_line(out)
    # A's exit 0 says S1 received everything; applied follows (the applier
    # is asynchronous): wait for it, with a deadline.
    systest.wait_for(lambda: last_a and (lambda h: h and (h[0]["seq"], h[0]["checksum"])
                                         == last_a)(t.held(u1)), 10)
    applied, _, _ = t.held(u1)
    t.check("S1 follows A (seq %s)" % (last_a,), last_a and
            (applied["seq"], applied["checksum"]) == last_a, str(applied))
    proc, purl = t.serve_primary("b", [u1])
    problems, diverged, _ = t.watch(u1, exactly(applied["seq"], applied["checksum"],
                                                   applied["history"]), [purl], 0.5, 10)
    t.check("while B runs, S1 stays at A's position", not problems, "; ".join(problems))
    t.check("B shows S1 `diverged`", diverged, "states seen: %s" % t.standby_state(purl))
    rc, out = t.stop_primary(proc, "b")
    t.check("B exits 4", rc == 4, "exit %s" % rc)

    print("== at once: C and D against S2")
    start, _, _ = t.held(u2)
    pc, uc = t.serve_primary("c", [u2])
    pd, ud = t.serve_primary("d", [u2])
    problems, diverged, _ = t.watch(u2, (never_switches(start), never_switches(start)),
                                    [uc, ud], 1.5, 10)
    t.check("S2 never switches history, goes back, or changes a checksum it held",
            not problems, "; ".join(problems))
    t.check("at least one of C and D shows S2 `diverged`", diverged,
            "states: C %s, D %s" % (t.standby_state(uc), t.standby_state(ud)))
    (rc_c, out_c), (rc_d, out_d) = t.stop_primary(pc, "c"), t.stop_primary(pd, "d")
    t.check("C and D exit 0 or 4, not both 0, at least one 4 (exit %s and %s)" % (rc_c, rc_d),
            {rc_c, rc_d} <= {0, 4} and 4 in (rc_c, rc_d))
    _, received, _ = t.held(u2)
    finals = [systest.committed_line(o) for rc, o in ((rc_c, out_c), (rc_d, out_d)) if rc == 0]
    if finals:
        t.check("S2 holds the final position of the copy that exited 0",
                (received["seq"], received["checksum"]) == finals[0],
                "%s vs %s" % (received, finals[0]))
    for proc, name in ((s1, "s1"), (s2, "s2")):
        t.check("%s stops cleanly" % name, systest.stop(proc) == 0)
        ok, out = systest.verify(t.loomship, t.p(name))
        t.check("verify passes on %s" % name, ok, out)


def post_promote(url, force):
    """(HTTP status, JSON body) of POST /v1/promote."""
    req = urllib.request.Request(url + "/v1/promote" + ("?force=1" if force else ""),
                                 data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}


def promote_empty(t):
    eproc, eurl = t.standby("empty1")
    before = systest.status(eurl)
    code, body = post_promote(eurl, False)
    t.check("POST /v1/promote of an empty standby: 409 PROMOTE_EMPTY",
            code == 409 and body.get("code") == "PROMOTE_EMPTY", "%s %s" % (code, body))
    st = systest.status(eurl)
    t.check("it is still a standby at its epoch", st and st["role"] == "standby" and
            st["epoch"] == before["epoch"], str(st and (st["role"], st["epoch"])))
    systest.stop(eproc)

    eproc, eurl = t.standby("empty2")
    r = subprocess.run([t.loomship, "promote", eurl], capture_output=True)
    st = systest.status(eurl)
    t.check("`loomship promote` of an empty standby exits non-zero, and it stays a standby",
            r.returncode != 0 and st and st["role"] == "standby",
            "exit %d, %s: %s" % (r.returncode, st and st["role"],
                                 (r.stdout + r.stderr).decode(errors="replace").strip()))
    r = subprocess.run([t.loomship, "promote", eurl, "--force"], capture_output=True)
    st = systest.status(eurl)
    t.check("`loomship promote --force` promotes it (a higher epoch)",
            r.returncode == 0 and st and st["role"] == "primary" and
            st["epoch"] > before["epoch"],
            "exit %d, %s" % (r.returncode, st and (st["role"], st["epoch"])))
    systest.stop(eproc)

    sproc, surl = t.standby("s")
    rc, _ = t.run_primary("p", [surl], 5)
    r = subprocess.run([t.loomship, "promote", surl], capture_output=True)
    st = systest.status(surl)
    t.check("a current standby at seq 5 is promoted without --force",
            rc == 0 and r.returncode == 0 and st and st["role"] == "primary",
            (r.stdout + r.stderr).decode(errors="replace").strip())
    systest.stop(sproc)


CASES = {"empty-primary": empty_primary, "two-copies": two_copies,
         "promote-empty": promote_empty}


def main():
    if len(sys.argv) < 3 or sys.argv[2] not in CASES:
        print(__doc__.split("\n\n")[-2])
        return 2
    root = tempfile.mkdtemp(prefix="loomship-fork-%s-" % sys.argv[2])
    t = Repro(os.path.abspath(sys.argv[1]), root)
    try:
        CASES[sys.argv[2]](t)
    except (RuntimeError, OSError, subprocess.TimeoutExpired, TypeError, KeyError) as e:
        t.check("the test could go on", False, "%s: %s" % (type(e).__name__, e))
    print("%d passed, %d failed" % (t.passes, t.failures))
    if t.failures or "--keep" in sys.argv:
        print("kept", root)
        return 1 if t.failures else 0
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
