#!/usr/bin/env python3
"""history_check_test.py [LOOMSHIP]: the history checker
(tests/lib/history_check.py) on hand-made logs: a good history passes and
each kind of violation is caught; then, with LOOMSHIP, on a real primary's
--ack-log and `inspect --json` / `inspect --at`: it passes, and a tampered
ack is caught."""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import history_check as hc  # noqa: E402

FAILS = []


def check(cond, what):
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        FAILS.append(what)


def cs(epoch, seq):
    return "%02x%014x" % (epoch, seq)


# The final history: epoch 1 kept up to seq 5, epoch 2 began at 5 and was
# kept up to 9, epoch 3 began at 9; the final leader is at seq 12.
FINAL = {"epoch": 3, "seq": 12, "checksum": cs(3, 12), "history": "h" * 32,
         "branches": [{"epoch": 2, "seq": 5, "checksum": cs(1, 5)},
                      {"epoch": 3, "seq": 9, "checksum": cs(2, 9)}]}


def final_at(seq):
    epoch = 1 if seq <= 5 else 2 if seq <= 9 else 3
    return (epoch, cs(epoch, seq))


def line(epoch, seq, checksum=None):
    return "%d %d %s" % (epoch, seq, checksum or cs(epoch, seq))


def good():
    return {
        "n1": [line(1, s) for s in range(1, 6)] + [line(1, 6, "ff" * 8)],  # 6: lost
        "n3": [line(2, s) for s in range(6, 10)],
        "n2": [line(3, s) for s in range(10, 13)],
    }


def run(acks, no_loss=False, survivors=None, at=final_at):
    r = hc.check(acks, FINAL, at, seed=7, no_loss=no_loss, survivors=survivors)
    print("   " + r.text().replace("\n", "\n   "))
    return r


def hand_made():
    r = run(good())
    check(r.ok and len(r.lost) == 1 and r.kept == 12 and r.acks == 13,
          "a good history passes: 12 acks confirmed, the one past epoch 1's kept part lost")
    check("seed 7" in r.text(), "the report names the seed")
    r = run(good(), no_loss=True)
    check(r.kinds() == ["lost"] and "n1.ack:6" in r.text(),
          "with no_loss, the lost ack is a violation, named by file and line")

    acks = good()
    acks["n3"].insert(0, line(1, 5))
    r = run(acks)
    check("two-writers" in r.kinds(), "two nodes acknowledging at one epoch")

    acks = good()
    acks["n2"].append(line(3, 11))
    r = run(acks)
    check(r.kinds() == ["seq-order"], "a seq acknowledged twice (not increasing)")

    acks = good()
    acks["n2"].append(line(2, 13))
    r = run(acks)
    check("epoch-back" in r.kinds(), "an epoch lower than the last")

    acks = good()
    acks["n1"][2] = line(1, 3, "00" * 8)
    r = run(acks)
    check(r.kinds() == ["missing"] and "n1.ack:3" in r.text(),
          "an acknowledged save with another checksum in the final history")

    acks = good()
    acks["n3"][1] = line(2, 7, cs(1, 7))  # right seq, a checksum of another epoch
    r = run(acks)
    check(r.kinds() == ["missing"], "an ack of a commit the final history does not hold")

    acks = good()
    acks["n2"].append("3 13 xyz")
    r = run(acks)
    check(r.kinds() == ["malformed"], "a malformed line")

    acks = good()
    acks["n2"].append(line(4, 13))
    r = run(acks)
    check(r.kinds() == ["future-epoch"], "an ack at an epoch past the final leader's")

    r = run(good(), survivors={"n3": {"history": "x" * 32}})
    check(r.kinds() == ["history"], "a survivor of another history")

    r = run(good(), at=lambda seq: None if seq < 3 else final_at(seq))
    check(r.ok and len(r.unverifiable) == 2, "acks the ring no longer has: unverifiable, not violations")


def real(loomship):
    d = tempfile.mkdtemp(prefix="history-check-")
    try:
        ack = os.path.join(d, "ack")
        p = subprocess.run([loomship, "primary", "--dir", os.path.join(d, "p"), "--saves", "40",
                            "--keys", "16", "--arena-pages", "128", "--pages", "2",
                            "--rate", "1000", "--ack-log", ack],
                           capture_output=True, text=True, timeout=120)
        check(p.returncode == 0, "a primary made 40 saves with --ack-log")
        final_dir = os.path.join(d, "p")
        final = hc.inspect(loomship, final_dir)
        check(isinstance(final.get("branches"), list), "inspect --json has branches")
        at = hc.inspect_checksum_at(loomship, final_dir)
        r = hc.check({"p": ack}, final, at, seed=1, no_loss=True)
        print("   " + r.text())
        check(r.ok and r.kept == 40, "a real primary's acks are all in its history")
        with open(ack) as f:
            lines = f.read().split("\n")[:-1]
        e, s, c = lines[9].split()
        lines[9] = "%s %s %016x" % (e, s, int(c, 16) ^ 1)
        r = hc.check({"p": lines}, final, at, seed=1)
        check(r.kinds() == ["missing"], "a tampered ack is caught through inspect --at")
        rc = subprocess.run([sys.executable, hc.__file__, "--seed", "1", "--no-loss",
                             "--loomship", loomship, "--ack", "p=" + ack,
                             "--final", "p=" + final_dir]).returncode
        check(rc == 0, "the command-line form passes it too")
        # the ring without the slot: inspect --at exits 1, the ack is unverifiable
        os.truncate(os.path.join(final_dir, "positions"), 0)
        p = subprocess.run([loomship, "inspect", final_dir, "--at", "5"],
                           capture_output=True, text=True)
        check(p.returncode == 1 and "no longer has seq 5" in p.stderr,
              "inspect --at: a seq the ring lost is exit 1 with a clear message")
        r = hc.check({"p": ack}, final, hc.inspect_checksum_at(loomship, final_dir), seed=1)
        check(r.ok and len(r.unverifiable) == 39, "... and unverifiable for the checker")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    hand_made()
    if len(sys.argv) > 1:
        real(sys.argv[1])
    print("%d failed" % len(FAILS))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
