"""systest.py: helpers shared by the system suites (crash_points.py,
netfault.py): start and stop loomship processes on 127.0.0.1, read their
status, inspect and verify their directories, compare two nodes."""
import argparse
import atexit
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

# Every process started here, killed at exit (also on SIGTERM) if still
# running, so that an interrupted suite leaves nothing behind.
_children = []


def _kill_children():
    for proc in _children:
        if proc.poll() is None:
            proc.kill()


atexit.register(_kill_children)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def spawn(args, **kw):
    """subprocess.Popen, remembered for _kill_children."""
    proc = subprocess.Popen(args, **kw)
    _children.append(proc)
    del _children[:-64]  # long finished ones
    return proc


# A small table so that every run stays quick: 16 keys in a 128-page arena,
# 2 values changed per save.
SMALL = ["--keys", "16", "--arena-pages", "128", "--pages", "2", "--rate", "1000"]


def start_standby(loomship, directory, port=0, env=None, log=None, wait=5.0, extra=()):
    """Start `loomship standby` (with the options in extra); returns
    (process, url). url is None when the process died (or stayed silent)
    before saying where it listens."""
    err = open(log, "ab") if log else subprocess.DEVNULL
    proc = spawn(
        [loomship, "standby", "--dir", directory, "--listen", "127.0.0.1:%d" % port]
        + list(extra), stdout=subprocess.PIPE, stderr=err, env=env)
    if log:
        err.close()
    deadline = time.monotonic() + wait
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.05)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 256)
            if not chunk:
                break
            line += chunk
            if b"\n" in line:
                break
        elif proc.poll() is not None:
            break
    text = line.decode(errors="replace")
    if "listening on " not in text:
        return proc, None
    return proc, text.split("listening on ", 1)[1].split()[0]


def start_primary(loomship, args, log):
    """Start `loomship primary ARGS --listen 127.0.0.1:0`, stderr appended
    to log; returns (process, url, first line): url is None when it did not
    say where it listens."""
    proc = spawn([loomship, "primary"] + args + ["--listen", "127.0.0.1:0"],
                 stdout=subprocess.PIPE, stderr=open(log, "ab"))
    line = proc.stdout.readline().decode()
    url = line.split("listening on ", 1)[1].split()[0] if "listening on " in line else None
    return proc, url, line


def loomship_and_rng():
    """The arguments LOOMSHIP [--seed S]: (loomship, rng); the seed (random
    unless given) is printed, so a failure can be repeated."""
    ap = argparse.ArgumentParser()
    ap.add_argument("loomship")
    ap.add_argument("--seed", type=int)
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    print("seed %d" % seed)
    return a.loomship, random.Random(seed)


def wait_for(check, timeout):
    """Poll check() every 50 ms until it returns a true value (returned) or
    timeout seconds passed (its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(0.05)


def report(name, failures, root):
    """Print each failure, or "NAME: ok" and remove root; the exit code."""
    for f in failures:
        print("FAIL: %s" % f)
    if failures:
        print("log in %s" % root)
        return 1
    print("%s: ok" % name)
    shutil.rmtree(root, ignore_errors=True)
    return 0


def stop(proc, sig=signal.SIGTERM, timeout=15.0):
    """Send sig (if still running) and wait; returns the exit status
    (negative: killed by that signal), or None if it would not stop."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    finally:
        if proc.stdout:
            proc.stdout.close()


def flip_bit(path, page, rng, page_size=16384):
    """Flip one random bit (from rng) in page `page` of the file at path:
    bit rot, for the scrub and repair tests."""
    off = page * page_size + rng.randrange(page_size)
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))


def status(url, timeout=2.0):
    """The node's /v1/status document, or None."""
    try:
        with urllib.request.urlopen(url + "/v1/status", timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def metrics(url, timeout=2.0):
    """The node's /metrics text, or "" when it does not answer."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=timeout) as r:
            return r.read().decode()
    except OSError:
        return ""


def inspect(loomship, directory):
    """`loomship inspect DIR --json` as a dict, or None."""
    r = subprocess.run([loomship, "inspect", directory, "--json"], capture_output=True)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None


def verify(loomship, directory):
    """(passed, output) of `loomship verify DIR`."""
    r = subprocess.run([loomship, "verify", directory], capture_output=True)
    return r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace").strip()


def wait_applied(url, seq, timeout):
    """Wait until the standby's applied seq is seq; returns its last status
    (None if it never answered) and whether it got there."""
    deadline = time.monotonic() + timeout
    st = None
    while True:
        st = status(url) or st
        if st and st["applied"]["seq"] == seq:
            return st, True
        if time.monotonic() >= deadline:
            return st, False
        time.sleep(0.02)


def same_files(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def compare_nodes(loomship, primary_dir, standby_dir):
    """Problems (a list of strings; empty when the two stopped nodes are the
    same): inspect documents, image bytes, verify on both."""
    problems = []
    ip, is_ = inspect(loomship, primary_dir), inspect(loomship, standby_dir)
    if ip is None or is_ is None:
        problems.append("inspect failed (primary %s, standby %s)" % (ip, is_))
    else:
        keys = ("epoch", "seq", "checksum", "pages", "page_size")
        if any(ip[k] != is_[k] for k in keys):
            problems.append("positions differ: primary %s, standby %s"
                            % ({k: ip[k] for k in keys}, {k: is_[k] for k in keys}))
    try:
        if not same_files(os.path.join(primary_dir, "image"), os.path.join(standby_dir, "image")):
            problems.append("image files differ")
    except OSError as e:
        problems.append("image files: %s" % e)
    for who, d in (("primary", primary_dir), ("standby", standby_dir)):
        ok, out = verify(loomship, d)
        if not ok:
            problems.append("verify %s: %s" % (who, out))
    return problems


def read_acks(path):
    """The positions a primary noted in LOOMSHIP_ACK_LOG: [(seq, checksum)]."""
    acks = []
    try:
        with open(path) as f:
            for line in f:
                w = line.split()
                if len(w) == 6 and w[0] == "seq" and line.endswith("\n"):
                    acks.append((int(w[1]), w[5]))
    except FileNotFoundError:
        pass
    return acks


def committed_line(text):
    """(seq, checksum) from the primary's last line "committed seq S (epoch E,
    checksum C) ...", or None."""
    for line in text.splitlines():
        if line.startswith("committed seq "):
            w = line.replace(",", " ").replace(")", " ").split()
            return int(w[2]), w[6]
    return None


class Checks:
    """A suite's bookkeeping: check(ok, what) prints "ok"/"FAIL" and keeps
    the failures (for report()); path(name) is under root; log is
    root/log, where the nodes' stderr goes."""

    def __init__(self, root):
        self.root, self.failures = root, []
        self.log = os.path.join(root, "log")

    def check(self, ok, what):
        print("%s: %s" % ("ok" if ok else "FAIL", what))
        if not ok:
            self.failures.append(what)

    def path(self, name):
        return os.path.join(self.root, name)
