#!/usr/bin/env python3
"""etcd_live.py PROGRAM: start a real 3-member etcd on 127.0.0.1
(tests/lib/etcd.py), run PROGRAM with LOOMSHIP_ETCD_ENDPOINTS set, and kill
a member when PROGRAM writes "KILL i" on stdout (answering "ok"). Exit:
PROGRAM's, 77 (skip) when etcd is not installed."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import etcd  # noqa: E402


def main():
    if not etcd.etcd_available():
        print("SKIP: etcd is not installed (etcd-server)")
        return 77
    with etcd.EtcdCluster(3) as cluster:
        env = dict(os.environ, LOOMSHIP_ETCD_ENDPOINTS=cluster.endpoints)
        proc = subprocess.Popen(sys.argv[1:], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("KILL "):
                cluster.kill(int(line.split()[1]))
                proc.stdin.write("ok\n")
                proc.stdin.flush()
        rc = proc.wait()
        if rc != 0:
            print("etcd logs in %s" % cluster.dir)
        return rc


if __name__ == "__main__":
    sys.exit(main())
