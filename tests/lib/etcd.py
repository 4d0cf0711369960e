"""etcd.py: a real etcd cluster on 127.0.0.1 for tests, and a TCP proxy
that can be switched to drop traffic.

    with EtcdCluster(3) as etcd:           # started, healthy
        etcd.endpoints                     # "http://127.0.0.1:P0,..."
        etcd.kill(1); etcd.restart(1)      # kill -9 one member, bring it back
        etcd.stop(0)                       # SIGTERM one member
        with TcpProxy(etcd.client_url(0)) as proxy:
            proxy.url                      # "http://127.0.0.1:Q"
            proxy.blackhole(True)          # accept, never forward; cut
            proxy.blackhole(False)         # forward again

Members use free ports and a temporary directory (removed at stop). Every
cluster and proxy is stopped at interpreter exit too (atexit), so a failing
test leaves no etcd behind. Health is polled with a deadline (GET /health
on every member), never a fixed sleep. etcd 3.4 from Debian's etcd-server;
facts in ../shared/recipes/etcd.md."""
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

ETCD = shutil.which("etcd") or "/usr/bin/etcd"

_live = []


def _cleanup():
    for thing in list(_live):
        try:
            thing.close()
        except Exception:  # pylint: disable=broad-except
            pass


atexit.register(_cleanup)


def free_port():
    """A port free on 127.0.0.1 now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def etcd_available():
    return os.access(ETCD, os.X_OK)


def _healthy(url, timeout=0.5):
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as r:
            return json.loads(r.read()).get("health") == "true"
    except (OSError, ValueError, urllib.error.URLError):
        return False


class EtcdCluster:
    """N etcd members on 127.0.0.1 (see the module's doc)."""

    def __init__(self, n=3, start=True, wait=20.0, log_dir=None):
        self.n = n
        self.dir = tempfile.mkdtemp(prefix="loomship-etcd-")
        self.log_dir = log_dir or self.dir
        self.token = "t%d" % os.getpid() + os.path.basename(self.dir)
        self.client_ports = [free_port() for _ in range(n)]
        self.peer_ports = [free_port() for _ in range(n)]
        self.procs = [None] * n
        self.started_once = [False] * n
        _live.append(self)
        if start:
            self.start(wait)

    # ---- addresses ----
    def client_url(self, i):
        return "http://127.0.0.1:%d" % self.client_ports[i]

    @property
    def endpoints(self):
        """The client URLs, comma-separated (the --etcd form)."""
        return ",".join(self.client_url(i) for i in range(self.n))

    def _initial_cluster(self):
        return ",".join("m%d=http://127.0.0.1:%d" % (i, self.peer_ports[i])
                        for i in range(self.n))

    # ---- life cycle ----
    def _spawn(self, i):
        peer = "http://127.0.0.1:%d" % self.peer_ports[i]
        args = [ETCD, "--name", "m%d" % i,
                "--data-dir", os.path.join(self.dir, "m%d" % i),
                "--listen-client-urls", self.client_url(i),
                "--advertise-client-urls", self.client_url(i),
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", self._initial_cluster(),
                "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token,
                "--heartbeat-interval", "50", "--election-timeout", "500"]
        log = open(os.path.join(self.log_dir, "etcd-m%d.log" % i), "ab")
        self.procs[i] = subprocess.Popen(args, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        log.close()
        self.started_once[i] = True

    def start(self, wait=20.0):
        for i in range(self.n):
            if self.procs[i] is None or self.procs[i].poll() is not None:
                self._spawn(i)
        self.wait_healthy(wait)

    def wait_healthy(self, wait=20.0, members=None):
        """Poll until every running member (or those in members) says
        healthy; raises TimeoutError naming the ones that did not."""
        members = members if members is not None else [
            i for i in range(self.n) if self.running(i)]
        deadline = time.monotonic() + wait
        while True:
            bad = [i for i in members if not _healthy(self.client_url(i))]
            if not bad:
                return
            dead = [i for i in bad if not self.running(i)]
            if dead or time.monotonic() > deadline:
                raise TimeoutError("etcd members %s not healthy (dead: %s); "
                                   "logs in %s" % (bad, dead, self.log_dir))
            time.sleep(0.05)

    def running(self, i):
        return self.procs[i] is not None and self.procs[i].poll() is None

    def kill(self, i):
        """kill -9 member i."""
        if self.running(i):
            self.procs[i].kill()
            self.procs[i].wait()

    def stop(self, i, timeout=10):
        """SIGTERM member i and wait for it."""
        if self.running(i):
            self.procs[i].terminate()
            try:
                self.procs[i].wait(timeout)
            except subprocess.TimeoutExpired:
                self.procs[i].kill()
                self.procs[i].wait()

    def freeze(self, i):
        if self.running(i):
            self.procs[i].send_signal(signal.SIGSTOP)

    def thaw(self, i):
        if self.running(i):
            self.procs[i].send_signal(signal.SIGCONT)

    def restart(self, i, wait=20.0):
        """Start member i again on its data dir and wait until healthy."""
        self.kill(i)
        self._spawn(i)
        self.wait_healthy(wait, members=[i])

    def close(self):
        """Stop every member and remove the data directories."""
        for i in range(self.n):
            self.thaw(i)
            self.kill(i)
        if self in _live:
            _live.remove(self)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- looking at keys (for tests) ----
    def put(self, key, value, i=None):
        return self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, i)

    def get_prefix(self, prefix, i=None):
        """{key: value} of every key under prefix (str)."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        a = self._post("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(end)}, i)
        return {_unb64(kv["key"]): _unb64(kv.get("value", ""))
                for kv in a.get("kvs", [])}

    def _post(self, path, body, i=None):
        members = [i] if i is not None else [j for j in range(self.n) if self.running(j)]
        err = None
        for j in members:
            req = urllib.request.Request(self.client_url(j) + path,
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    return json.loads(r.read())
            except (OSError, urllib.error.URLError) as e:
                err = e
        raise OSError("etcd %s failed: %s" % (path, err))


def _b64(s):
    import base64
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _unb64(s):
    import base64
    return base64.b64decode(s).decode(errors="replace")


class TcpProxy:
    """A threaded TCP proxy on 127.0.0.1:free port in front of target
    ("http://host:port" or (host, port)). blackhole(True): accept
    connections but never forward a byte, and cut the ones open (a
    partition as a peer sees it: connects succeed, nothing answers);
    blackhole(False): forward again (new connections). answer(MODE): cut
    the connections open and answer every request itself instead of
    forwarding it (an etcd gone wrong): "5xx" a 503 with etcd's JSON
    error, "garbage" a 200 whose body is not JSON, "raw" bytes that are
    not HTTP; answer(None): forward again."""

    def __init__(self, target):
        if isinstance(target, str):
            hostport = target.split("://", 1)[-1].rstrip("/")
            host, port = hostport.rsplit(":", 1)
            target = (host, int(port))
        self.target = target
        self.lock = threading.Lock()
        self.black = False
        self.mode = None  # answer()'s
        self.answered = 0  # requests answered by answer()
        self.conns = []  # open (client, upstream) pairs
        self.held = []   # connections accepted while blackholed
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        _live.append(self)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def blackhole(self, on=True):
        with self.lock:
            self.black = on
            conns, self.conns = self.conns, []
            held, self.held = (self.held, []) if not on else ([], self.held)
        if on:
            for pair in conns:
                for s in pair:
                    _close(s)
        for s in held:
            _close(s)

    def answer(self, mode):
        with self.lock:
            self.mode = mode
            conns, self.conns = self.conns, []
        for pair in conns:
            for s in pair:
                _close(s)

    FAULT_ANSWERS = {
        "5xx": b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
               b"Content-Length: 58\r\nConnection: close\r\n\r\n"
               b'{"error":"etcdserver: request timed out","code":14,"x":0}\n',
        "garbage": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 27\r\nConnection: close\r\n\r\n"
                   b"\x00\xff{\"header\":{\"revision\":[[\xfe",
        "raw": b"\x16\x03\x01 this is not HTTP at all\r\n\r\n\xff\x00",
    }

    def _answer(self, client, mode):
        """Read one request's head (and its body) and answer it; close."""
        try:
            client.settimeout(2)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = client.recv(65536)
                if not chunk:
                    break
                data += chunk
            client.sendall(self.FAULT_ANSWERS[mode])
            with self.lock:
                self.answered += 1
        except OSError:
            pass
        _close(client)

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.black:
                    self.held.append(client)
                    continue
                mode = self.mode
            if mode:
                threading.Thread(target=self._answer, args=(client, mode),
                                 daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self.lock:
                self.conns.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data or self.black:
                    break
                dst.sendall(data)
        except OSError:
            pass
        _close(src)
        _close(dst)

    def close(self):
        self.closed = True
        _close(self.listener)
        self.blackhole(True)
        self.blackhole(False)
        if self in _live:
            _live.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _close(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
