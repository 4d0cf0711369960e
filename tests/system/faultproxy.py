"""faultproxy.py: a fault-injecting TCP proxy for the network suite
(netfault.py), on 127.0.0.1 only.

Proxy(target_port) listens on an ephemeral port and forwards every
connection to 127.0.0.1:target_port, two threads per connection. One fault
at a time is set with set_fault(kind, **params) and removed with heal():

  latency    delay=S       each forwarded chunk waits S seconds
  bandwidth  rate=B        at most B bytes a second each way (small chunks)
  reset      after=N, way  once N bytes went that way ("up": to the
                           standby, "down": back) on a connection, the rest
                           is dropped and both sides get a TCP reset
  blackhole                connections are accepted but nothing is
                           forwarded (held, as TCP would hold it) until heal
  partition                every connection is reset at once; new ones are
                           reset on accept, until heal
  bitflip    rate=P        one bit of a request body flipped, for a share P
                           of requests (header bytes are left alone: a
                           flipped Content-Length only stalls a request
                           until its timeout)
Independently of the fault:
  replay(capture)          send a captured request again on a new
                           connection (duplicates, and, with an older
                           capture, reordering)
  captures                 the last requests (POST /v1/frames) seen, whole
  in_flight()              whether a request is partly forwarded
"""
import random
import socket
import struct
import threading
import time

CAPTURES_KEPT = 64


class Reset(Exception):
    pass


def hard_close(sock):
    """Close with a TCP reset (SO_LINGER 0). shutdown() first: a close()
    alone would leave the connection open while the other pump thread is
    blocked in recv() on it (the peer would see a stalled connection, not
    a reset)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class RequestTracker:
    """Splits one direction of an HTTP/1.1 stream into messages (headers and
    a Content-Length body); gives up (opaque) on anything else."""

    def __init__(self):
        self.head = b""
        self.body_left = 0
        self.opaque = False
        self.message = bytearray()
        self.flip_at = -1
        self.body_seen = 0
        self.flips = 0

    def feed(self, data, flip_rate, rng, on_message):
        """Returns data, possibly with one body bit flipped."""
        if self.opaque:
            return data
        out = bytearray(data)
        i = 0
        while i < len(out):
            if self.body_left == 0:
                # In the headers: find their end.
                end = (bytes(self.head[-3:]) + bytes(out[i:])).find(b"\r\n\r\n")
                if end < 0:
                    self.head += bytes(out[i:])
                    self.message += out[i:]
                    return bytes(out)
                take = end + 4 - len(self.head[-3:])
                self.head += bytes(out[i:i + take])
                self.message += out[i:i + take]
                i += take
                length = 0
                for line in self.head.split(b"\r\n"):
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v.strip() or 0)
                    elif k.strip().lower() == b"transfer-encoding":
                        self.opaque = True
                if self.opaque:
                    return bytes(out)
                self.body_left, self.body_seen = length, 0
                self.flip_at = rng.randrange(length) if length and rng.random() < flip_rate else -1
                if length == 0:
                    self.done(on_message)
                continue
            take = min(self.body_left, len(out) - i)
            if 0 <= self.flip_at - self.body_seen < take:
                out[i + self.flip_at - self.body_seen] ^= 1 << rng.randrange(8)
                self.flip_at = -1
                self.flips += 1
            self.message += out[i:i + take]
            self.body_seen += take
            self.body_left -= take
            i += take
            if self.body_left == 0:
                self.done(on_message)
        return bytes(out)

    def done(self, on_message):
        on_message(bytes(self.message))
        self.head = b""
        self.message = bytearray()

    def partial(self):
        return len(self.message) > 0


class Proxy:
    def __init__(self, target_port, seed=1):
        self.target_port = target_port
        self.rng = random.Random(seed)
        self.cond = threading.Condition()
        self.fault = {}
        self.conns = set()
        self.captures = []
        self.resets = 0
        self.flips_done = 0
        self.closed = False
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self.accept_loop, daemon=True).start()

    # -- control --

    def set_fault(self, kind, **params):
        with self.cond:
            self.fault = dict(params, kind=kind)
            if kind == "partition":
                for c in list(self.conns):
                    c.cut()
            self.cond.notify_all()

    def heal(self):
        with self.cond:
            self.fault = {}
            self.cond.notify_all()

    def kind(self):
        return self.fault.get("kind")

    def flipped(self):
        with self.cond:
            return self.flips_done + sum(c.up_tracker.flips for c in self.conns)

    def in_flight(self):
        with self.cond:
            return any(c.up_tracker.partial() for c in self.conns)

    def close(self):
        self.closed = True
        self.lsock.close()
        with self.cond:
            for c in list(self.conns):
                c.cut()
            self.cond.notify_all()

    def replay(self, capture, wait=2.0):
        """Send capture on a new connection straight to the target; returns
        the first line of the answer ('' if none)."""
        try:
            s = socket.create_connection(("127.0.0.1", self.target_port), timeout=wait)
            s.sendall(capture)
            s.shutdown(socket.SHUT_WR)
            answer = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
            s.close()
            return answer.split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError:
            return ""

    # -- forwarding --

    def accept_loop(self):
        while not self.closed:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            if self.kind() == "partition":
                hard_close(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                hard_close(client)
                continue
            Conn(self, client, upstream)

    def on_request(self, message):
        if message.startswith(b"POST /v1/frames"):
            with self.cond:
                self.captures.append(message)
                del self.captures[:-CAPTURES_KEPT]


class Conn:
    def __init__(self, proxy, client, upstream):
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.sent = {"up": 0, "down": 0}
        self.up_tracker = RequestTracker()
        self.dead = False
        with proxy.cond:
            proxy.conns.add(self)
        threading.Thread(target=self.pump, args=(client, upstream, "up"), daemon=True).start()
        threading.Thread(target=self.pump, args=(upstream, client, "down"), daemon=True).start()

    def cut(self):
        """Reset both sides (called with proxy.cond held or not)."""
        if not self.dead:
            self.dead = True
            self.proxy.resets += 1
            hard_close(self.client)
            hard_close(self.upstream)

    def pump(self, src, dst, way):
        p = self.proxy
        try:
            while not self.dead:
                size = 256 if p.fault.get("kind") == "bandwidth" else 65536
                data = src.recv(size)
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                with p.cond:
                    while p.fault.get("kind") == "blackhole" and not self.dead:
                        p.cond.wait(0.1)
                    fault = dict(p.fault)
                kind = fault.get("kind")
                if self.dead or kind == "partition":
                    raise Reset()
                if way == "up":
                    flip = fault["rate"] if kind == "bitflip" else 0.0
                    data = self.up_tracker.feed(data, flip, p.rng, p.on_request)
                if kind == "latency":
                    time.sleep(fault["delay"])
                elif kind == "bandwidth":
                    time.sleep(len(data) / fault["rate"])
                elif kind == "reset" and fault["way"] == way:
                    room = fault["after"] - self.sent[way]
                    if room < len(data):
                        if room > 0:
                            dst.sendall(data[:room])
                        raise Reset()
                dst.sendall(data)
                self.sent[way] += len(data)
        except (Reset, OSError):
            self.cut()
        finally:
            if way == "up":
                with p.cond:
                    if self in p.conns:
                        p.flips_done += self.up_tracker.flips
                    p.conns.discard(self)
