"""swift.py: a real S3 store on 127.0.0.1 for tests and benches: OpenStack
Swift all-in-one (memcached, account, container and object servers, a proxy
with s3api + tempauth) in a temporary directory, on free ports; and a
FaultProxy that stands in front of it to serve 503 SlowDown or to vanish.

    with Swift() as swift:                 # started, healthy, bucket made
        swift.endpoint                     # "http://127.0.0.1:P"
        swift.bucket                       # "loomship"
        swift.credentials                  # file: key id, secret (two lines)
        swift.s3("PUT", "/other-bucket")   # a signed request through curl
        with FaultProxy(swift.endpoint) as proxy:
            proxy.url                      # point the client here
            proxy.slowdown(2)              # next 2 requests: 503 + Retry-After
            proxy.down(); proxy.up()       # refuse connections / forward again
            proxy.corrupt_at(100000)       # flip that byte of the next upload
            proxy.bytes_up                 # client bytes forwarded so far
        with HangingStore() as hang:       # takes requests, never answers
            hang.url, hang.accepted

As a program, for shell tests and benches:

    python3 tests/lib/swift.py --run-dir D

starts Swift in D (kept afterwards), prints one line
"endpoint=URL bucket=B credentials=FILE" and runs until SIGTERM or SIGINT,
then stops everything. Every process it started is stopped at interpreter
exit too (atexit), so a failing test leaves nothing behind. Readiness is
polled with a deadline (GET /healthcheck, then the first bucket PUT, which
Swift answers 5xx for a second or two while its account server settles).
Facts: ../shared/recipes/s3-swift.md (Debian 12, Swift 2.30)."""
import argparse
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# etcd.py's helpers: free ports, closing sockets, and its list of things
# to stop at interpreter exit (its atexit handler closes them all).
from etcd import _close, _live, free_port  # noqa: E402  pylint: disable=wrong-import-position

KEY_ID = "test:tester"
SECRET = "testing"
REGION = "us-east-1"
PACKAGES = ["swift-proxy", "swift-account", "swift-container",
            "swift-object", "memcached"]


def swift_available():
    """Whether the Debian packages are installed (tools/setup.sh lists
    them)."""
    return all(shutil.which(p) for p in
               ("swift-proxy-server", "swift-object-server",
                "swift-container-server", "swift-account-server",
                "swift-ring-builder", "memcached", "curl"))


SERVER_CONF = """[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 1
user = {user}
swift_dir = {root}/etc
devices = {root}/node
mount_check = false
log_level = WARNING

[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}
"""

PROXY_CONF = """[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 1
user = {user}
swift_dir = {root}/etc
log_level = WARNING

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = {region}

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {secret} .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached}
""" + "".join("\n[filter:%s]\nuse = egg:swift#%s\n" % (f, f.replace("-", "_"))
              for f in ("catch_errors", "gatekeeper", "healthcheck",
                        "proxy-logging", "listing_formats", "copy", "slo",
                        "dlo"))

SWIFT_CONF = """[swift-hash]
swift_hash_path_suffix = loomship{suffix}
swift_hash_path_prefix = loomship

[storage-policy:0]
name = gold
default = yes
"""


def _die_with_parent():
    """In the child: SIGTERM when the process that started it dies, even
    by SIGKILL (a test killed by its timeout), so no server outlives the
    test. A Swift server stops its workers on SIGTERM."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_on_sigterm():
    """Makes SIGTERM (meson's timeout, a CI runner) run the interpreter's
    exit path, so context managers and atexit stop what was started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


class Swift:
    """Swift all-in-one on 127.0.0.1 (see the module's doc)."""

    KINDS = ("account", "container", "object")

    def __init__(self, run_dir=None, bucket="loomship", wait=60.0):
        self.keep = run_dir is not None
        if run_dir is None:
            run_dir = tempfile.mkdtemp(prefix="loomship-swift-")
        self.root = os.path.abspath(run_dir)
        self.bucket = bucket
        self.procs = {}
        self.ports = {k: free_port() for k in self.KINDS + ("proxy", "memcached")}
        self.credentials = os.path.join(self.root, "credentials")
        self.netrc = os.path.join(self.root, "netrc")
        _live.append(self)
        try:
            self._configure()
            self._start()
            self.wait_healthy(wait)
            if bucket:
                self.make_bucket(bucket, wait)
        except BaseException:
            self.close()
            raise

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.ports["proxy"]

    # ---- set-up ----
    def _write(self, rel, text, mode=0o644):
        path = os.path.join(self.root, rel)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def _configure(self):
        for d in ("etc", "node/d1", "log"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        user = pwd.getpwuid(os.getuid()).pw_name
        self._write("etc/swift.conf", SWIFT_CONF.format(suffix=os.getpid()))
        for kind in self.KINDS:
            self._write("etc/%s-server.conf" % kind, SERVER_CONF.format(
                port=self.ports[kind], user=user, root=self.root, kind=kind))
            builder = os.path.join(self.root, "etc", kind + ".builder")
            for args in (["create", "8", "1", "1"],
                         ["add", "r1z1-127.0.0.1:%d/d1" % self.ports[kind], "100"],
                         ["rebalance"]):
                subprocess.run(["swift-ring-builder", builder] + args,
                               check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        self._write("etc/proxy-server.conf", PROXY_CONF.format(
            port=self.ports["proxy"], user=user, root=self.root,
            region=REGION, secret=SECRET, memcached=self.ports["memcached"]))
        self._write("credentials", "%s\n%s\n" % (KEY_ID, SECRET), 0o600)
        self._write("netrc", "machine 127.0.0.1 login %s password %s\n"
                    % (KEY_ID, SECRET), 0o600)

    def _spawn(self, name, args):
        log = open(os.path.join(self.root, "log", name + ".log"), "ab")
        self.procs[name] = subprocess.Popen(
            args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent)
        log.close()

    def _start(self):
        mc = ["memcached", "-l", "127.0.0.1", "-p", str(self.ports["memcached"]),
              "-m", "16", "-U", "0"]
        if os.getuid() == 0:
            mc += ["-u", "root"]
        self._spawn("memcached", mc)
        etc = os.path.join(self.root, "etc")
        for kind in self.KINDS:
            self._spawn(kind, ["swift-%s-server" % kind,
                               os.path.join(etc, "%s-server.conf" % kind)])
        self._spawn("proxy", ["swift-proxy-server",
                              os.path.join(etc, "proxy-server.conf")])

    def _dead(self):
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def wait_healthy(self, wait=60.0):
        """Polls GET /healthcheck until 200; raises naming the dead
        servers and the log directory otherwise."""
        deadline = time.monotonic() + wait
        while True:
            try:
                with urllib.request.urlopen(self.endpoint + "/healthcheck",
                                            timeout=1) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            dead = self._dead()
            if dead or time.monotonic() > deadline:
                raise TimeoutError("swift not healthy (dead: %s); logs in %s"
                                   % (dead, os.path.join(self.root, "log")))
            time.sleep(0.1)

    def make_bucket(self, bucket, wait=60.0):
        """PUT /bucket, retried while Swift answers 5xx or not at all; then
        one object put and deleted the same way, so that the first
        request of a test does not meet servers still settling."""
        deadline = time.monotonic() + wait
        probe = os.path.join(self.root, "probe")
        self._write("probe", "probe\n")
        for method, path, data in (("PUT", "/" + bucket, None),
                                   ("PUT", "/%s/probe" % bucket, probe),
                                   ("DELETE", "/%s/probe" % bucket, None)):
            while True:
                status, body = self.s3(method, path, data_file=data)
                if status in (200, 204, 409):
                    break
                if (status >= 500 or status == 0) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise RuntimeError("%s %s: %d %s" % (method, path, status,
                                                     body[:300]))

    # ---- requests ----
    def s3(self, method, path, data_file=None, endpoint=None, query=""):
        """One request signed by curl (--aws-sigv4, credentials from a
        netrc file: the key id has a colon). path is "/BUCKET[/KEY]";
        query must be canonical already (sorted, %XX). Returns (status,
        body bytes); status 0 when curl could not connect."""
        url = (endpoint or self.endpoint) + path + ("?" + query if query else "")
        args = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}",
                "--netrc-file", self.netrc,
                "--aws-sigv4", "aws:amz:%s:s3" % REGION,
                "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                "-X", method, "--max-time", "30"]
        if data_file is not None:
            args += ["-T", data_file]
        p = subprocess.run(args + [url], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, check=False)
        out = p.stdout
        body, _, code = out.rpartition(b"\n")
        try:
            return int(code or 0), body
        except ValueError:
            return 0, out

    # ---- stopping ----
    def close(self):
        """Stops every server (SIGTERM, then SIGKILL after 5 s) and removes
        the directory unless it was given as run_dir."""
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + 5
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
        self.procs = {}
        if self in _live:
            _live.remove(self)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
                 b"<Code>SlowDown</Code><Message>Please reduce your request "
                 b"rate.</Message></Error>")


class HangingStore:
    """A store that hangs: 127.0.0.1:free port takes connections and reads
    requests and never answers. url; accepted counts the connections."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()
        _live.append(self)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(c)
            threading.Thread(target=self._read, args=(c,), daemon=True).start()

    @staticmethod
    def _read(c):
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass

    def close(self):
        for c in self.conns + [self.sock]:
            _close(c)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FaultProxy:
    """A TCP proxy on 127.0.0.1:free port in front of target
    ("http://host:port"). slowdown(n, retry_after): the next n requests
    (each on a new connection: open ones are cut) are answered 503
    SlowDown with Retry-After and the connection closed. down(): cut every
    connection and refuse new ones (the listener is closed); up(): listen
    on the same port again. corrupt_at(n): flip byte n (from the start of
    the request) of the next connection's upload, once. bytes_up counts the
    client's bytes forwarded."""

    def __init__(self, target):
        hostport = target.split("://", 1)[-1].rstrip("/")
        host, port = hostport.rsplit(":", 1)
        self.target = (host, int(port))
        self.lock = threading.Lock()
        self.conns = []
        self.pending_503 = 0
        self.retry_after = 1
        self.answered_503 = 0
        self.bytes_up = 0
        self.corrupt = None  # byte offset to flip in the next connection
        self.closed = False
        self.port = free_port()
        self.listener = None
        self.up()
        _live.append(self)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def up(self):
        with self.lock:
            if self.listener is not None:
                return
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
            s.listen(64)
            self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self):
        with self.lock:
            s, self.listener = self.listener, None
            conns, self.conns = self.conns, []
        if s is not None:
            _close(s)
        for c in conns:
            _close(c)

    def slowdown(self, n, retry_after=1):
        with self.lock:
            self.pending_503 = n
            self.retry_after = retry_after
            conns, self.conns = self.conns, []
        for c in conns:
            _close(c)

    def corrupt_at(self, offset):
        with self.lock:
            self.corrupt = offset

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self.lock:
                refuse = self.pending_503 > 0
                if refuse:
                    self.pending_503 -= 1
                    self.answered_503 += 1
                else:
                    self.conns.append(client)
            if refuse:
                threading.Thread(target=self._answer_503, args=(client,),
                                 daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self.lock:
                self.conns.append(upstream)
                flip, self.corrupt = self.corrupt, None
            threading.Thread(target=self._pump,
                             args=(client, upstream, True, flip),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _answer_503(self, client):
        """Reads one request (head and Content-Length body), answers 503."""
        try:
            client.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = client.recv(65536)
                if not chunk:
                    raise OSError("closed")
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                if name == b"expect":  # answer before the body is sent
                    length = 0
            left = length - len(rest)
            while left > 0:
                chunk = client.recv(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
            client.sendall(b"HTTP/1.1 503 Slow Down\r\nRetry-After: %d\r\n"
                           b"Content-Type: application/xml\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                           % (self.retry_after, len(SLOWDOWN_BODY))
                           + SLOWDOWN_BODY)
        except (OSError, ValueError):
            pass
        _close(client)

    def _pump(self, src, dst, upward, flip=None):
        seen = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if flip is not None and seen <= flip < seen + len(data):
                    i = flip - seen
                    data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
                seen += len(data)
                dst.sendall(data)
                if upward:
                    with self.lock:
                        self.bytes_up += len(data)
        except OSError:
            pass
        _close(src)
        _close(dst)

    def close(self):
        self.down()
        if self in _live:
            _live.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main():
    ap = argparse.ArgumentParser(description="Run Swift with s3api on "
                                 "127.0.0.1 until SIGTERM or SIGINT.")
    ap.add_argument("--run-dir", required=True,
                    help="directory for configs, data and logs (kept)")
    ap.add_argument("--bucket", default="loomship")
    a = ap.parse_args()
    os.makedirs(a.run_dir, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Swift(run_dir=a.run_dir, bucket=a.bucket) as swift:
        print("endpoint=%s bucket=%s credentials=%s"
              % (swift.endpoint, swift.bucket, swift.credentials), flush=True)
        while not stop.wait(0.5):
            if swift._dead():  # pylint: disable=protected-access
                print("swift: server died: %s" % swift._dead(),  # pylint: disable=protected-access
                      file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
