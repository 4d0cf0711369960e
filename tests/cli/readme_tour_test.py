#!/usr/bin/env python3
"""readme_tour_test.py: README.md's five-minute tour, typed as written.

Takes the ```sh blocks of the section "A five-minute tour" in order and
runs every command, as a new user would, with three substitutions only:
the build's binary for build-demo/cli/loomship, a scratch directory for
/tmp/tour (whose parent does not exist yet, as on a fresh machine), and
two free ports for 8470 and 8471 (tests use ephemeral ports). A
`loomship standby` or `loomship primary` without --saves is what the tour
runs in its own terminal: it is started in the background and the next
command waits until it listens. Where the prose says Ctrl-C, the primary
gets SIGINT and must exit 0 (it drains to the standby and the archive),
and the archive's newest restore must be at the primary's position. Any command that
fails fails the test; so does a tour with no commands.

Usage: readme_tour_test.py PATH/TO/loomship PATH/TO/README.md
"""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

LOOMSHIP = os.path.abspath(sys.argv[1])
README = sys.argv[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tour_steps(text):
    """[("run", command) | ("ctrl-c", None)] in the tour's order."""
    start = text.index("## A five-minute tour")
    end = text.index("\n## ", start + 1)
    section = text[start:end]
    steps = []
    pos = 0
    for m in re.finditer(r"```sh\n(.*?)```", section, re.S):
        if "Ctrl-C" in section[pos:m.start()]:
            steps.append(("ctrl-c", None))
        pos = m.end()
        joined = m.group(1).replace("\\\n", " ")
        for line in joined.splitlines():
            cmd = re.sub(r"\s+#.*$", "", line).strip()
            if cmd and not cmd.startswith("#"):
                steps.append(("run", cmd))
    return steps


def same_position(work, other="standby"):
    """The tour says: after Ctrl-C, primary and standby are at the same
    epoch, seq and checksum (and so is the archive's restored newest)."""
    pos = []
    for d in ("primary", other):
        r = subprocess.run([LOOMSHIP, "inspect", os.path.join(work, "tour", d), "--json"],
                           capture_output=True, text=True)
        pos.append(json.loads(r.stdout) if r.returncode == 0 else {})
    same = bool(pos[0]) and all(pos[0].get(k) == pos[1].get(k)
                                for k in ("epoch", "seq", "checksum"))
    print("%s: primary and %s at the same epoch, seq and checksum (%s)"
          % ("ok" if same else "FAIL", other, pos))
    return same


def main():
    work = tempfile.mkdtemp(prefix="loomship-tour-")
    ports = {"8470": str(free_port()), "8471": str(free_port())}
    children, failures = {}, 0
    env = dict(os.environ)

    def substitute(cmd):
        cmd = cmd.replace("build-demo/cli/loomship", shlex.quote(LOOMSHIP))
        cmd = cmd.replace("/tmp/tour", os.path.join(work, "tour"))
        return re.sub(r"\b(8470|8471)\b", lambda m: ports[m.group(1)], cmd)

    steps = tour_steps(open(README).read())
    runs = [s for s in steps if s[0] == "run"]
    print("%d commands in the tour" % len(runs))
    if len(runs) < 5:
        print("FAIL: the tour has too few commands; did its layout change?")
        return 1
    try:
        for kind, cmd in steps:
            if kind == "ctrl-c":
                p = children.get("primary")
                if not p:
                    print("FAIL: Ctrl-C with no primary running")
                    failures += 1
                    continue
                p.send_signal(signal.SIGINT)
                rc = p.wait(timeout=60)
                ok = rc == 0
                print("%s: Ctrl-C stops the primary (exit %d)" % ("ok" if ok else "FAIL", rc))
                failures += not ok
                failures += not same_position(work)
                continue
            real = substitute(cmd)
            words = shlex.split(real)
            sub = words[1] if len(words) > 1 else ""
            if sub in ("standby", "primary") and "--saves" not in words:
                out = open(os.path.join(work, sub + ".out"), "w")
                p = subprocess.Popen(words, stdout=out, stderr=subprocess.STDOUT, env=env)
                children[sub] = p
                deadline = time.time() + 15
                while time.time() < deadline and p.poll() is None:
                    if "listening on" in open(out.name).read():
                        break
                    time.sleep(0.05)
                ok = p.poll() is None
                print("%s: %s  (running; output in %s)" % ("ok" if ok else "FAIL", cmd, out.name))
                if not ok:
                    print(open(out.name).read())
                failures += not ok
                continue
            r = subprocess.run(["bash", "-o", "pipefail", "-c", real], capture_output=True,
                               text=True, timeout=120, env=env)
            ok = r.returncode == 0
            print("%s: %s  (exit %d)" % ("ok" if ok else "FAIL", cmd, r.returncode))
            if not ok:
                print(r.stdout[-2000:], r.stderr[-2000:])
            failures += not ok
            if ok and sub == "restore" and "--seq" not in words and "--time" not in words:
                failures += not same_position(work, "restored")
    finally:
        for p in children.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
    print("%d failed" % failures)
    if failures == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("kept " + work)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
