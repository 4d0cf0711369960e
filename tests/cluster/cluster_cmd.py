#!/usr/bin/env python3
"""cluster_cmd.py LOOMSHIP: `loomship cluster` against a real etcd
(tests/lib/etcd.py), with member keys written by this test as
docs/CLUSTER.md "Keys in etcd" says (the nodes write them for real).
Checks the table, --json exactly as DESIGN section 5 says, --cluster,
an empty cluster, and the exit codes (0 listed, 2 usage or etcd
unreachable, 1 etcd answering garbage)."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import etcd  # noqa: E402

LOOMSHIP = sys.argv[1]


def run(*args):
    p = subprocess.run([LOOMSHIP, "cluster"] + list(args), capture_output=True,
                       text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


def member(name, port, role, epoch, received, applied, frames, seconds, state):
    return json.dumps({
        "name": name, "url": "http://127.0.0.1:%d" % port, "role": role,
        "epoch": epoch, "history": "0123456789abcdef0123456789abcdef",
        "received_seq": received, "applied_seq": applied, "primary_seq": 120,
        "lag": {"frames": frames, "seconds": seconds}, "state": state,
        "updated_at": "2026-12-06T17:00:00.000Z"})


def check(cond, what):
    if not cond:
        print("FAIL: " + what)
        sys.exit(1)
    print("ok: " + what)


def main():
    if not etcd.etcd_available():
        print("SKIP: etcd is not installed")
        return 77
    with etcd.EtcdCluster(1) as c:
        p = "/loomship/loomship/"
        c.put(p + "members/n2", member("n2", 8472, "standby", 3, 118, 117, 2, 0.004, "streaming"))
        c.put(p + "members/n1", member("n1", 8471, "leader", 3, 120, 120, 0, 0.0, "leading"))
        c.put(p + "members/n3", member("n3", 8473, "standby", 2, 90, 80, 40, 1.5, "catching_up"))
        c.put(p + "leader", json.dumps({"name": "n1", "url": "http://127.0.0.1:8471", "epoch": 3}))
        c.put(p + "epoch", "3")
        c.put(p + "sync", json.dumps({"epoch": 3, "members": ["n2"]}))
        c.put("/loomship/other/members/x", member("x", 9, "leader", 1, 1, 1, 0, 0, "leading"))

        rc, out, err = run("--etcd", c.endpoints, "--json")
        check(rc == 0, "--json exits 0 (%d: %s)" % (rc, err))
        doc = json.loads(out)
        check(set(doc) == {"name", "leader", "epoch", "members"}, "--json has exactly name, leader, epoch, members")
        check(doc["name"] == "loomship" and doc["leader"] == "n1" and doc["epoch"] == 3,
              "--json: cluster name, leader, epoch")
        check([m["name"] for m in doc["members"]] == ["n1", "n2", "n3"], "members sorted by name, other clusters left out")
        n2 = doc["members"][1]
        check(set(n2) == {"name", "url", "role", "epoch", "received_seq", "applied_seq", "lag", "state"},
              "a member has exactly DESIGN's fields")
        check(n2 == {"name": "n2", "url": "http://127.0.0.1:8472", "role": "standby", "epoch": 3,
                     "received_seq": 118, "applied_seq": 117,
                     "lag": {"frames": 2, "seconds": 0.004}, "state": "streaming"},
              "a member's values")

        rc, out, err = run("--etcd", "http://127.0.0.1:1," + c.endpoints)
        check(rc == 0, "the table exits 0, past a dead first endpoint")
        lines = out.splitlines()
        check("leader: n1" in lines[0] and "epoch 3" in lines[0], "the title names leader and epoch")
        head = [x.strip() for x in lines[1].strip("|").split("|")]
        check(head == ["Member", "URL", "Role", "State", "Epoch", "Received", "Applied", "Lag frames", "Lag s"],
              "the table's columns")
        rows = [[x.strip() for x in l.strip("|").split("|")] for l in lines[2:5]]
        check(rows[0][0] == "n1 *" and rows[0][2] == "leader", "the leader marked")
        check(rows[1][2] == "standby (sync)" and rows[1][5] == "118" and rows[1][7] == "2",
              "a sync standby, its received seq and lag")
        check(rows[2][3] == "catching_up" and rows[2][8] == "1.500", "state and lag in seconds")

        rc, out, err = run("--etcd", c.endpoints, "--cluster", "other", "--json")
        check(rc == 0 and json.loads(out)["leader"] is None and len(json.loads(out)["members"]) == 1,
              "--cluster picks another prefix; no leader is null")
        rc, out, err = run("--etcd", c.endpoints, "--cluster", "empty")
        check(rc == 0 and "(no members)" in out and "leader: none" in out, "an empty cluster")

        rc, out, err = run("--etcd", "http://127.0.0.1:1")
        check(rc == 2 and "etcd unreachable" in err, "etcd unreachable: exit 2, said so")
        rc, out, err = run()
        check(rc == 2 and "--etcd" in err, "no --etcd: usage, exit 2")
        rc, out, err = run("--etcd", "127.0.0.1:1")
        check(rc == 2, "a malformed --etcd: exit 2")
        rc, out, err = run("--etcd", c.endpoints, "--cluster", "a/b")
        check(rc == 2, "a bad cluster name: exit 2")
        # a member record that is not one: left out, said on stderr
        c.put(p + "members/bad", "{not json")
        rc, out, err = run("--etcd", c.endpoints, "--json")
        check(rc == 0 and len(json.loads(out)["members"]) == 3 and "not a member record" in err,
              "a damaged member record is left out and named")
    return 0


if __name__ == "__main__":
    sys.exit(main())
