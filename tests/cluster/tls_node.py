#!/usr/bin/env python3
"""tls_node.py LOOMSHIP: a cluster of three `loomship node`s over HTTPS
with a bearer token and the scrubber (issue 16: the options of primary and
standby on node), on a real 3-member etcd (tests/lib/etcd.py).

1. Every node serves HTTPS with a certificate of a test CA (--tls-cert,
   --tls-key, --ca-file, --token-file, --scrub-interval 1): the members
   advertise https:// URLs, a leader acknowledges saves under --sync 1 (so
   a standby took its frames over TLS with the token), plain HTTP gets no
   status, and a standby's scrubber reads pages.
2. SIGHUP after a new token, a new certificate (same CA) and a frame key
   file with a new key (the old one second) are written: every node logs
   the three re-read and shows both key ids (frame_auth), backups want the
   new token (401 with the old), new connections get the new certificate,
   saves go on (the leader tags under the new key, the others take it).
3. kill -9 of the leader: another member leads at a higher epoch over
   HTTPS and takes the new token (what a later leadership starts with),
   and history_check finds nothing acknowledged lost.
Exit 0 passed, 1 failed, 77 etcd or openssl missing."""
import hashlib
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import episodes  # noqa: E402
import etcd  # noqa: E402
from checks import FAILS, check  # noqa: E402,F401


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def make_leaf(work, name, ca):
    """A certificate for 127.0.0.1 signed by the CA: (pem, key)."""
    key, csr, pem = (os.path.join(work, name + ext) for ext in (".key", ".csr", ".pem"))
    ext = os.path.join(work, name + ".ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name,
            "-keyout", key, "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", pem)
    os.chmod(key, 0o600)
    return pem, key


def write_secret(path, text):
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)


def backup_code(nd, token, ctx):
    """The HTTP status of GET /v1/backup with token (the body not read)."""
    req = urllib.request.Request("https://127.0.0.1:%d/v1/backup" % nd.port,
                                 headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def peer_cert(nd, ctx):
    import socket
    with socket.create_connection(("127.0.0.1", nd.port), timeout=2) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            return t.getpeercert(binary_form=True)


def log_has(nd, text):
    with open(nd.log, errors="replace") as f:
        return text in f.read()


K1, K2 = "11" * 32, "22" * 32  # frame keys: their ids are SHA-256's first 8 bytes


def key_id(hexkey):
    return hashlib.sha256(bytes.fromhex(hexkey)).hexdigest()[:16]


def start(c, work, cert, key, token_file):
    write_secret(os.path.join(work, "frame.key"), K1)
    c.extra_args = ["--tls-cert", cert, "--tls-key", key,
                    "--ca-file", os.path.join(work, "ca.pem"), "--token-file", token_file,
                    "--scrub-interval", "1", "--scrub-mbps", "8",
                    "--frame-key-file", os.path.join(work, "frame.key")]
    c.scheme = "https"
    c.ssl_context = ssl.create_default_context(cafile=os.path.join(work, "ca.pem"))
    c.start()


def part_serving(c, ctx):
    got = c.wait_acks((0, 0), count=5, deadline=30)
    check("a leader acknowledges saves under --sync 1 over HTTPS", got is not None)
    lead = c.leader()
    st = next((nd for nd in c.nodes if nd is not lead), None)

    def member_urls():
        doc = st.status() if st else None
        return [m.get("url", "") for m in (doc or {}).get("cluster", {}).get("members", [])]
    # A standby's members list is its last read of etcd (at most one a
    # ttl while nothing wakes it): the third member may join it a moment
    # after the first saves.
    episodes.poll(lambda: len(member_urls()) == 3, 10)
    urls = member_urls()
    check("members advertise https:// URLs", len(urls) == 3 and
          all(u.startswith("https://") for u in urls), urls)
    try:
        urllib.request.urlopen("http://127.0.0.1:%d/v1/status" % st.port, timeout=1)
        plain = True
    except (OSError, ValueError):
        plain = False
    check("plain HTTP gets no status from a member", not plain)
    scrubbed = episodes.poll(lambda: (st.status() or {}).get("integrity", {})
                        .get("pages_scrubbed", 0) > 0, 20)
    check("a standby member's scrubber reads pages (--scrub-interval 1)", scrubbed)
    check("the leader's backup wants the token",
          backup_code(lead, "wrong-token-0123456789", ctx) == 401)
    return lead


def part_reload(c, work, token_file, ctx):
    old_cert = peer_cert(c.nodes[0], ctx)
    pem2, key2 = make_leaf(work, "node2", os.path.join(work, "ca"))
    shutil.copyfile(pem2, os.path.join(work, "node.pem"))
    shutil.copyfile(key2, os.path.join(work, "node.key"))
    write_secret(token_file, "second-token-0123456789abcdef")
    write_secret(os.path.join(work, "frame.key"), K2 + "\n" + K1)
    before = c.max_ack()
    for nd in c.nodes:
        nd.signal(signal.SIGHUP)
    for nd in c.nodes:
        check("%s logs the token re-read" % nd.name,
              episodes.poll(lambda: log_has(nd, "SIGHUP: token re-read"), 10))
        check("%s logs the certificate re-read" % nd.name,
              episodes.poll(lambda: log_has(nd, "SIGHUP: TLS certificate re-read"), 10))
        check("%s logs the frame keys re-read and holds both" % nd.name,
              episodes.poll(lambda: log_has(nd, "SIGHUP: frame keys re-read") and
                            (nd.status() or {}).get("frame_auth", {}).get("key_id") ==
                            key_id(K2) and (nd.status() or {}).get("frame_auth", {})
                            .get("previous_key_id") == key_id(K1), 10))
    lead = c.leader()
    for nd in c.nodes:
        role = "leader" if nd is lead else "standby"
        check("%s (%s): backups want the new token" % (nd.name, role),
              backup_code(nd, "first-token-0123456789abcdef", ctx) == 401 and
              backup_code(nd, "second-token-0123456789abcdef", ctx) == 200)
        check("%s (%s): new connections get the new certificate" % (nd.name, role),
              peer_cert(nd, ctx) != old_cert)
    got = c.wait_acks(before, count=5, deadline=30)
    check("saves are acknowledged after the reload (the sync standby took the new "
          "token)", got is not None)


def part_failover(c, lead, ctx):
    before = c.max_ack()
    lead.kill()
    got = c.wait_acks(before, count=3, deadline=30, epoch_above=before[0])
    check("after kill -9 of the leader another member acknowledges at a higher epoch",
          got is not None, got)
    new = c.leader()
    check("the new leader's backup takes the reloaded token",
          new is not None and backup_code(new, "second-token-0123456789abcdef", ctx) == 200)
    for nd in c.nodes:
        nd.kill()
    report = c.check(seed=0, no_loss=True, leader=new.name if new else None)
    check("history_check: nothing acknowledged lost", report.ok, report.text())


def main():
    loomship = os.path.abspath(sys.argv[1])
    if not etcd.etcd_available() or not shutil.which("openssl"):
        print("SKIP: etcd-server or openssl missing")
        return 77
    work = tempfile.mkdtemp(prefix="loomship-tls-node-")
    try:
        ca = os.path.join(work, "ca")
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/CN=loomship test CA", "-keyout", ca + ".key", "-out", ca + ".pem")
        pem, key = make_leaf(work, "node", ca)
        token_file = os.path.join(work, "token")
        write_secret(token_file, "first-token-0123456789abcdef")
        ctx = ssl.create_default_context(cafile=ca + ".pem")
        with etcd.EtcdCluster(3) as ec:
            c = episodes.Cluster(loomship, ec, "tls%d" % os.getpid(), ttl=2, sync=1)
            try:
                start(c, work, pem, key, token_file)
                lead = part_serving(c, ctx)
                part_reload(c, work, token_file, ctx)
                part_failover(c, c.leader() or lead, ctx)
            finally:
                c.close(keep=bool(FAILS))
                if FAILS:
                    print("kept %s and %s" % (c.tmp, work))
    finally:
        if not FAILS:
            shutil.rmtree(work, ignore_errors=True)
    print("FAILED: %d checks" % len(FAILS) if FAILS else "all passed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
