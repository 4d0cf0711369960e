"""checks.py: the named checks of the process-level tests written in
Python. check() prints "ok: WHAT" or "FAIL: WHAT (detail)" and remembers
every failure in FAILS, which the test's main reads to choose its exit
code (0 passed, 1 failed) and whether to keep its directories."""
import sys

FAILS = []


def check(what, ok, detail=""):
    print("%s: %s%s" % ("ok" if ok else "FAIL", what, (" (%s)" % (detail,)) if detail else ""))
    if not ok:
        FAILS.append(what)
    sys.stdout.flush()
    return ok
