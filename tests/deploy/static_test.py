#!/usr/bin/env python3
"""static_test.py: deploy/ as shipped. The systemd units pass
`systemd-analyze verify` and score OK or better in `systemd-analyze
security`; the compose file parses, names only files that exist (the token
is made by the operator: its recipe is in the file's header and it is
ignored by git), publishes ports on loopback only, restarts its services and
checks their liveness; the Dockerfile runs as a fixed non-root uid with a
HEALTHCHECK; ports and data directories agree with docs/OPERATIONS.md.
The cluster's deploy files (deploy/compose/cluster.yml, loomship-node@.service
and its env file example): the compose file parses, three etcd members and
three nodes on loopback ports with healthchecks, and every `loomship`
command line in them and in docs/OPERATIONS.md uses only options that
`loomship node --help` / `loomship cluster --help` list (DESIGN section 5's
list for node while this build has no `node`).
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


# DESIGN section 5: node's own options; the workload, archive, integrity
# and security options of primary/standby come from their --help.
DESIGN_NODE = {"name", "dir", "listen", "etcd", "cluster", "ttl", "sync",
               "max-lag-on-failover", "advertise", "ack-log"}


def help_options(loomship, command):
    """The option names `loomship COMMAND --help` lists, or None."""
    r = subprocess.run([loomship, command, "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return set(re.findall(r"^  (?:-h, )?--([a-z][a-z0-9-]*)", r.stdout, re.M))


def node_options(loomship):
    opts = help_options(loomship, "node")
    if opts is not None:
        return opts, "loomship node --help"
    opts = set(DESIGN_NODE)
    for c in ("primary", "standby"):
        opts |= help_options(loomship, c) or set()
    return opts, "DESIGN section 5 + primary/standby --help (no `node` in this build)"


def command_lines(text):
    """Each `loomship node|cluster|switchover ...` in text (backslash lines
    joined, compose lists too): (command, [option names])."""
    text = text.replace("\\\n", " ")
    found = []
    for m in re.finditer(r"loomship (node|cluster|switchover)\b([^\n`]*)", text):
        if re.match(r"\s+--", m.group(2)):  # a command line, not prose
            found.append((m.group(1), re.findall(r"--([a-z][a-z0-9-]*)", m.group(2))))
    return found


def check_command_options(loomship, where, cmds):
    known = {"cluster": (help_options(loomship, "cluster"), "loomship cluster --help"),
             "node": node_options(loomship),
             "switchover": (help_options(loomship, "switchover"), "loomship switchover --help")}
    for cmd, opts in cmds:
        allowed, source = known[cmd]
        if allowed is None:
            print("skip: %s: `loomship %s` is not in this build" % (where, cmd))
            continue
        bad = sorted(set(opts) - allowed - {"help", "version"})
        check("%s: loomship %s uses only options in %s" % (where, cmd, source), not bad,
              "unknown: %s" % bad)


def cluster_deploy(loomship):
    text = read(deploy, "compose", "cluster.yml")
    doc = yaml.safe_load(text)
    check("compose/cluster.yml parses", isinstance(doc, dict) and "services" in doc)
    svcs = doc["services"]
    etcds = [n for n in svcs if n.startswith("etcd")]
    nodes = [n for n in svcs if not n.startswith("etcd")]
    check("cluster.yml: three etcd members and three nodes", len(etcds) == 3 and len(nodes) == 3)
    cmds = []
    for name, svc in svcs.items():
        ports = svc.get("ports", [])
        check("cluster.yml %s: ports on loopback only" % name,
              ports and all(str(p).startswith("127.0.0.1:") for p in ports), str(ports))
        hc = " ".join(svc.get("healthcheck", {}).get("test", []))
        check("cluster.yml %s: a healthcheck" % name,
              ("/healthz" in hc or "status" in hc) if name in nodes else "health" in hc, hc)
        check("cluster.yml %s: restart: unless-stopped" % name, svc.get("restart") == "unless-stopped")
        if name in nodes:
            build = svc.get("build", {})
            ctx = os.path.normpath(os.path.join(deploy, "compose", build.get("context", ".")))
            check("cluster.yml %s: build context and Dockerfile exist" % name,
                  os.path.isfile(os.path.join(ctx, build.get("dockerfile", "Dockerfile"))))
            cmds.append(("node", [a[2:] for a in svc["command"] if a.startswith("--")]))
            check("cluster.yml %s: is a node named %s" % (name, name),
                  svc["command"][:3] == ["node", "--name", name])
    for s, spec in doc.get("secrets", {}).items():
        rel = os.path.relpath(os.path.normpath(os.path.join(deploy, "compose", spec["file"])), src)
        check("cluster.yml secret %s (%s) is ignored by git" % (s, rel), rel in read(src, ".gitignore"))
    check_command_options(loomship, "compose/cluster.yml", cmds)
    unit = read(deploy, "loomship-node@.service")
    check_command_options(loomship, "loomship-node@.service", command_lines(unit))
    env = read(deploy, "loomship-node.env.example")
    used = set(re.findall(r"\$\{(LOOMSHIP_[A-Z_]+)\}", unit))
    defined = set(re.findall(r"^(LOOMSHIP_[A-Z_]+)=", env, re.M))
    check("loomship-node.env.example sets every variable the unit uses", used <= defined,
          "missing: %s" % sorted(used - defined))
    check("loomship-node@.service keeps its data in /var/lib/loomship-node-NAME",
          "StateDirectory=loomship-node-%i\n" in unit)
    check_command_options(loomship, "docs/OPERATIONS.md",
                          command_lines(read(src, "docs", "OPERATIONS.md")))


def main():
    loomship = os.path.abspath(sys.argv[1])
    if not shutil.which("systemd-analyze"):
        print("no systemd-analyze: skipped")
        return 77
    units(loomship)
    compose()
    dockerfile()
    docs()
    cluster_deploy(loomship)
    print("%d passed, %d failed" % (results["passed"], results["failed"]))
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
