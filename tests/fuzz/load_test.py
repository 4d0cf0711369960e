#!/usr/bin/env python3
"""load_test.py: hostile load against a real `loomship standby` (issue 6,
suite 5): oversized headers, slow clients (a header trickled a byte at a
time), and a connection flood (more connections than the server's limit,
from another loopback address). Throughout, a /healthz from a well-behaved
client (127.0.0.1) must answer 200 within HEALTH_DEADLINE seconds, and the
standby's memory (VmRSS) and thread count must stay bounded.

Usage: load_test.py PATH/TO/loomship [--long]
  --long   slow clients for 60 s instead of 8, 1,000 flood connections

A check listed in KNOWN_ISSUES (a bug reported, not yet fixed) is run and
reported as XFAIL without failing the test; should it pass, it says XPASS
so the entry can be removed.
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

HEALTH_DEADLINE = 1.0
RSS_GROWTH_MAX_KB = 64 * 1024
# Reported in docs/RELIABILITY-security.md (finding F1): the standby uses
# libmicrohttpd's defaults of 64 connections, no per-address limit and a
# 30 s idle timeout, so idle or trickling connections from one address
# take every slot and /healthz from anyone else is refused until they time
# out.
KNOWN_ISSUES = set()  # F1 (flood, slow-many) fixed: 16 connections per address

passes = failures = xfails = 0


def report(name, ok, detail=""):
    global passes, failures, xfails
    key = name.split(":")[0]
    if ok:
        passes += 1
        tag = "XPASS (remove from KNOWN_ISSUES)" if key in KNOWN_ISSUES else "ok"
    elif key in KNOWN_ISSUES:
        xfails += 1
        tag = "XFAIL (known issue)"
    else:
        failures += 1
        tag = "FAIL"
    print(f"{tag}: {name} {detail}", flush=True)


def vm(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def health(port, source="127.0.0.1", deadline=HEALTH_DEADLINE):
    """Seconds /healthz took, or None when it did not answer 200 in time."""
    t0 = time.monotonic()
    try:
        s = socket.socket()
        s.settimeout(deadline)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        took = time.monotonic() - t0
        if data.startswith(b"HTTP/1.1 200") and took <= deadline:
            return took
    except OSError:
        pass
    return None


def health_within(port, seconds):
    """Poll /healthz until it answers in time or seconds have passed: what
    health() returned last."""
    end = time.monotonic() + seconds
    while True:
        took = health(port)
        if took is not None or time.monotonic() >= end:
            return took
        time.sleep(0.05)


class HealthWatch(threading.Thread):
    """Polls /healthz every 0.25 s; records the worst time and failures."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop, self.worst, self.failed, self.count = port, False, 0.0, 0, 0

    def run(self):
        while not self.stop:
            took = health(self.port)
            self.count += 1
            if took is None:
                self.failed += 1
            else:
                self.worst = max(self.worst, took)
            time.sleep(0.25)  # pacing: one probe every 0.25 s

    def finish(self):
        self.stop = True
        self.join()
        return self.failed == 0 and self.count > 0


def oversized(port, header_bytes, count):
    """Send count headers of header_bytes each; the answer's status line."""
    s = socket.socket()
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    try:
        s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        line = b"X-Big: " + b"a" * header_bytes + b"\r\n"
        for _ in range(count):
            s.sendall(line)
        s.sendall(b"\r\n")
    except OSError:
        pass  # closed early: fine
    try:
        data = s.recv(200)
    except OSError:
        data = b""
    s.close()
    return data.split(b"\r\n")[0].decode(errors="replace")


def main():
    loomship = sys.argv[1]
    long_form = "--long" in sys.argv
    slow_seconds = 60 if long_form else 8
    flood_count = 1000 if long_form else 200
    work = tempfile.mkdtemp(prefix="loomship-load-")
    proc = subprocess.Popen([loomship, "standby", "--dir", work + "/s",
                             "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        line = proc.stdout.readline()
        port = int(line.strip().rsplit(":", 1)[1])
        up = health_within(port, 5)
        rss0, threads0 = vm(proc.pid, "VmRSS"), vm(proc.pid, "Threads")
        report("health at start", up is not None)

        # 1. Oversized headers: one of 1 MiB; 20,000 of 100 bytes.
        for size, count in ((1 << 20, 1), (100, 20000), (8 << 20, 1)):
            status = oversized(port, size, count)
            refused = status == "" or status.split(" ")[1:2] != ["200"]
            report(f"oversized: {count} header(s) of {size} bytes refused",
                   refused, f"(answer: {status or 'connection closed'})")
            report(f"oversized: health after {count}x{size}",
                   health(port) is not None)

        # 2. Slow clients (from 127.0.0.3): each trickles a request line and header, one byte
        # a second (long form) or every 0.5 s, for slow_seconds.
        def trickle(n, seconds, step, results):
            socks = []
            for _ in range(n):
                s = socket.socket()
                s.bind(("127.0.0.3", 0))
                s.connect(("127.0.0.1", port))
                socks.append(s)
            msg = b"GET /v1/status HTTP/1.1\r\nX-Slow: " + b"z" * 1000
            t_end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < t_end and i < len(msg):
                for s in socks:
                    try:
                        s.send(msg[i:i + 1])
                    except OSError:
                        results["cut"] = results.get("cut", 0) + 1
                i += 1
                time.sleep(step)  # pacing: a byte per step
            for s in socks:
                s.close()

        for name, n in (("slow-few", 4), ("slow-many", 80)):
            watch = HealthWatch(port)
            watch.start()
            results = {}
            trickle(n, slow_seconds, 1.0 if long_form else 0.5, results)
            ok = watch.finish()
            report(f"{name}: {n} clients trickling for {slow_seconds} s, "
                   f"health within {HEALTH_DEADLINE} s", ok,
                   f"({watch.count} probes, {watch.failed} failed, worst "
                   f"{watch.worst:.3f} s)")
        report("health after slow clients",
               health_within(port, 2) is not None)

        # 3. Flood: flood_count idle connections from 127.0.0.2.
        socks = []
        refused = 0
        for _ in range(flood_count):
            s = socket.socket()
            s.settimeout(1)
            try:
                s.bind(("127.0.0.2", 0))
                s.connect(("127.0.0.1", port))
                socks.append(s)
            except OSError:
                refused += 1
                s.close()
        # Settling, not synchronisation: how many of the flood the server
        # has accepted is not observable from here; health below must hold
        # whatever that number is.
        time.sleep(0.3)
        threads_flood = vm(proc.pid, "Threads")
        took = health(port)
        report(f"flood: {flood_count} idle connections from 127.0.0.2, "
               f"health from 127.0.0.1 within {HEALTH_DEADLINE} s",
               took is not None,
               f"({len(socks)} connected, {refused} refused, threads "
               f"{threads_flood})")
        for s in socks:
            s.close()
        report("health after the flood", health_within(port, 6) is not None)

        rss1, threads1 = vm(proc.pid, "VmRSS"), vm(proc.pid, "Threads")
        report(f"memory bounded: RSS {rss0} KiB -> {rss1} KiB",
               rss1 - rss0 < RSS_GROWTH_MAX_KB)
        report(f"threads back: {threads0} -> {threads1}",
               threads1 <= threads0 + 4)
        report("still running", proc.poll() is None)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(["rm", "-rf", work])
    print(f"load: {passes} passed, {failures} failed, {xfails} known issues")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
