#!/usr/bin/env python3
"""static_test.py: deploy/ as shipped. The systemd units pass
`systemd-analyze verify` and score OK or better in `systemd-analyze
security`; the compose file parses, names only files that exist (the token
is made by the operator: its recipe is in the file's header and it is
ignored by git), publishes ports on loopback only, restarts its services and
checks their liveness; the Dockerfile runs as a fixed non-root uid with a
HEALTHCHECK; ports and data directories agree with docs/OPERATIONS.md.
Skips (77) without systemd-analyze."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
deploy = os.path.join(src, "deploy")
results = {"passed": 0, "failed": 0}


def check(what, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print("%s: %s%s" % ("ok" if ok else "FAIL", what, "" if ok or not detail else " (%s)" % detail))


def read(*parts):
    with open(os.path.join(*parts)) as f:
        return f.read()


def units(loomship):
    names = sorted(n for n in os.listdir(deploy) if n.endswith((".service", ".timer")))
    tmp = tempfile.mkdtemp(prefix="loomship-units-")
    for n in names:  # verify wants the binary where ExecStart says
        with open(os.path.join(tmp, n), "w") as f:
            f.write(read(deploy, n).replace("/usr/local/bin/loomship", loomship))
    paths = [os.path.join(tmp, n) for n in names]
    r = subprocess.run(["systemd-analyze", "verify", "--man=no"] + paths,
                       capture_output=True, text=True)
    check("systemd-analyze verify %s" % " ".join(names), r.returncode == 0 and not r.stderr.strip(),
          r.stdout + r.stderr)
    for p in paths:
        if not p.endswith(".service"):
            continue
        r = subprocess.run(["systemd-analyze", "security", "--offline=yes", p],
                           capture_output=True, text=True)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
        check("%s scores OK or better" % os.path.basename(p),
              m is not None and float(m.group(1)) <= 4.9, m.group(0) if m else r.stderr)
    shutil.rmtree(tmp)
    for n in ("loomship-standby.service", "loomship-primary.service"):
        check("%s listens on 8470, as the docs say" % n, "--listen 0.0.0.0:8470" in read(deploy, n))


def compose():
    doc = yaml.safe_load(read(deploy, "compose.yaml"))
    check("compose.yaml parses", isinstance(doc, dict) and "services" in doc)
    for name, svc in doc["services"].items():
        build = svc.get("build", {})
        ctx = os.path.normpath(os.path.join(deploy, build.get("context", ".")))
        check("%s: build context and Dockerfile exist" % name,
              os.path.isdir(ctx) and os.path.isfile(os.path.join(ctx, build.get("dockerfile", "Dockerfile"))))
        check("%s: restart: unless-stopped" % name, svc.get("restart") == "unless-stopped")
        hc = " ".join(svc.get("healthcheck", {}).get("test", []))
        check("%s: a liveness healthcheck (/healthz)" % name, "/healthz" in hc, hc)
        ports = svc.get("ports", [])
        check("%s: ports published on loopback only" % name,
              ports and all(str(p).startswith("127.0.0.1:") for p in ports), str(ports))
        for s in svc.get("secrets", []):
            check("%s: secret %s is declared" % (name, s), s in doc.get("secrets", {}))
    for s, spec in doc.get("secrets", {}).items():
        rel = os.path.relpath(os.path.normpath(os.path.join(deploy, spec["file"])), src)
        check("secret %s (%s) is made by the operator: recipe in the header, "
              "ignored by git" % (s, rel),
              rel in read(deploy, "compose.yaml") and rel in read(src, ".gitignore"))


def dockerfile():
    text = read(deploy, "Dockerfile")
    check("Dockerfile: a fixed uid", re.search(r"--uid \d+", text) is not None)
    check("Dockerfile: not root at run time", re.search(r"^USER (?!root)\S+", text, re.M) is not None)
    check("Dockerfile: a HEALTHCHECK", "HEALTHCHECK" in text)
    check(".dockerignore leaves out the token and builds",
          all(x in read(src, ".dockerignore") for x in ("deploy/token", "build")))


def docs():
    ops = read(src, "docs", "OPERATIONS.md")
    for d in ("/var/lib/loomship-standby", "/var/lib/loomship-primary", "/var/lib/loomship-backups"):
        check("docs/OPERATIONS.md names %s" % d, d in ops)
    for n, d in (("loomship-standby.service", "loomship-standby"),
                 ("loomship-primary.service", "loomship-primary"),
                 ("loomship-backup.service", "loomship-backups")):
        check("%s keeps its data in /var/lib/%s" % (n, d), "StateDirectory=%s\n" % d in read(deploy, n))


def main():
    loomship = os.path.abspath(sys.argv[1])
    if not shutil.which("systemd-analyze"):
        print("no systemd-analyze: skipped")
        return 77
    units(loomship)
    compose()
    dockerfile()
    docs()
    print("%d passed, %d failed" % (results["passed"], results["failed"]))
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
