"""archive_s3.py: the archive against a real S3 store (OpenStack Swift's
s3api on 127.0.0.1, tests/lib/swift.py, started once), issue 17, DESIGN
section 7.

usage: archive_s3.py LOOMSHIP [--seed S]

1. `primary --archive s3://BUCKET/run1` saves, SIGTERM: restore newest and
   --seq N equal the primary's positions and `verify`; `archive verify`
   passes.
2. A wrong secret: the primary keeps saving, archive.last_error names the
   403 SignatureDoesNotMatch, nothing is uploaded under its prefix.
3. A missing bucket: last_error says so (NoSuchBucket), saves go on.
4. The store behind a FaultProxy: refused connections, then 503 SlowDown
   with Retry-After: saves never wait, status shows the lag; once the
   store answers the archive catches up, and after SIGTERM restores the
   primary's last committed seq.
1c. `standby --archive s3://... --archive-interval 600`: the drain at
   SIGTERM uploads every commit received; restore newest is the
   standby's image.
5. --archive-key-file: the raw objects, read from Swift with curl (and
   their payloads zstd-decompressed where that works), hold no 64-byte
   run of the image at the archive's base (which a plaintext archive's
   objects do hold, the control), and restore with the key is exact.
6. An image over 64 MiB, encrypted: its base goes up from a scratch file
   (docs/ARCHIVE.md W2) and restores exactly.

Skipped (exit 77) when Swift's Debian packages are not installed."""
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import systest  # noqa: E402
import swift as swiftlib  # noqa: E402

KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"
TABLE = ["--keys", "16", "--arena-pages", "128", "--pages", "2"]


class Suite(systest.Checks):
    def __init__(self, loomship, root, store):
        super().__init__(root)
        self.loomship, self.store = loomship, store

    def s3_opts(self, endpoint=None, credentials=None):
        return ["--archive-endpoint", endpoint or self.store.endpoint,
                "--archive-credentials", credentials or self.store.credentials]

    def run(self, *args):
        r = subprocess.run([self.loomship] + list(args), capture_output=True, timeout=60)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")

    def restore(self, url, out, *extra):
        return self.run("restore", "--from", url, "--out", out, *(self.s3_opts() + list(extra)))

    def keys(self, prefix):
        """Every object key under prefix, by a ListObjectsV2 through curl."""
        status, body = self.store.s3("GET", "/" + self.store.bucket,
                                     query="list-type=2&max-keys=1000&prefix=" + prefix.replace("/", "%2F"))
        if status != 200:
            return None
        root = ET.fromstring(body)
        return [e.text for e in root.iter() if e.tag.endswith("}Key") or e.tag == "Key"]

    def primary(self, pdir, url, extra=(), opts=None, rate="40"):
        args = (["--dir", pdir, "--archive", url, "--rate", rate] + TABLE +
                (opts if opts is not None else self.s3_opts()) + list(extra))
        return systest.start_primary(self.loomship, args, self.log)[:2]

    def archived_run(self, name, saves, extra=()):
        """A primary saving `saves` times then stopping: its exit code."""
        pdir, url = self.path(name), "s3://%s/%s" % (self.store.bucket, name)
        proc, _ = self.primary(pdir, url, ["--saves", str(saves)] + list(extra), rate="100")
        proc.communicate(timeout=60)
        return proc.returncode, pdir, url

    # 1 ------------------------------------------------------------------
    def basic(self):
        pdir, url = self.path("run1"), "s3://%s/run1" % self.store.bucket
        proc, purl = self.primary(pdir, url)
        up = systest.wait_for(lambda: ((systest.status(purl) or {}).get("archive") or {})
                              .get("uploaded_seq", 0) >= 30, 20) if purl else None
        self.check(bool(up), "the primary uploads to Swift")
        code = systest.stop(proc, signal.SIGTERM)
        self.check(code == 0, "SIGTERM: drained and exit 0 (%s)" % code)
        mine = systest.inspect(self.loomship, pdir) or {}
        rc, text = self.restore(url, self.path("run1-newest"))
        got = systest.inspect(self.loomship, self.path("run1-newest")) or {}
        self.check(rc == 0 and all(got.get(k) == mine.get(k) and k in mine
                                   for k in ("epoch", "seq", "checksum", "pages")),
                   "restore newest is the primary's position (%s): %s"
                   % (mine.get("seq"), text.strip()[-200:]))
        self.check(systest.verify(self.loomship, self.path("run1-newest"))[0],
                   "verify passes on the newest restore")
        n = max(1, mine.get("seq", 2) // 2)
        rc, text = self.restore(url, self.path("run1-seq"), "--seq", str(n))
        got = systest.inspect(self.loomship, self.path("run1-seq")) or {}
        at = self.run("inspect", pdir, "--json", "--at", str(n))[1]
        self.check(rc == 0 and got.get("seq") == n and got.get("checksum", "?") in at,
                   "restore --seq %d has the primary's checksum there" % n)
        self.check(systest.verify(self.loomship, self.path("run1-seq"))[0],
                   "verify passes on the --seq restore")
        rc, text = self.run("archive", "verify", url, "--scratch", self.root,
                            *self.s3_opts())
        self.check(rc == 0 and "matches" in text, "archive verify: %s" % text.strip()[-200:])

    # 1b -----------------------------------------------------------------
    def standby(self):
        """`standby --archive s3://...`: the standby uploads what it
        receives; restore --seq has the primary's checksum there."""
        url = "s3://%s/standby" % self.store.bucket
        sproc, surl = systest.start_standby(
            self.loomship, self.path("sb"), log=self.log,
            extra=["--archive", url] + self.s3_opts())
        pdir = self.path("sb-primary")
        proc, _, _ = systest.start_primary(
            self.loomship, ["--dir", pdir, "--standby", surl, "--saves", "40",
                            "--rate", "40"] + TABLE, self.log)
        proc.communicate(timeout=60)
        up = systest.wait_for(lambda: ((systest.status(surl) or {}).get("archive") or {})
                              .get("uploaded_seq") == 40, 20)
        self.check(proc.returncode == 0 and up, "the standby uploads to Swift up to seq 40")

        def requests():
            return [line for line in systest.metrics(surl).splitlines()
                    if line.startswith("loomship_archive_requests_total{")]
        before = requests()
        time.sleep(3)  # checks that nothing happens: idle, three intervals
        self.check(before and requests() == before,
                   "idle: no request reaches Swift in 3 s (%s)" % before)
        self.check(systest.stop(sproc) == 0, "the archiving standby stops with 0")
        rc, text = self.restore(url, self.path("sb-30"), "--seq", "30")
        got = systest.inspect(self.loomship, self.path("sb-30")) or {}
        at = self.run("inspect", pdir, "--json", "--at", "30")[1]
        self.check(rc == 0 and got.get("checksum", "?") in at,
                   "restore --seq 30 from the standby's archive has the primary's "
                   "checksum there: %s" % text.strip()[-200:])

    # 1c -----------------------------------------------------------------
    def standby_drain(self):
        """`standby --archive s3://... --archive-interval 600`: only the
        drain at SIGTERM uploads the commits received; after it, restore
        newest is the standby's image."""
        url, sdir = "s3://%s/sbdrain" % self.store.bucket, self.path("sbdrain")
        sproc, surl = systest.start_standby(
            self.loomship, sdir, log=self.log,
            extra=["--archive", url, "--archive-interval", "600",
                   "--drain-timeout", "30"] + self.s3_opts())
        proc, _, _ = systest.start_primary(
            self.loomship, ["--dir", self.path("sbdrain-primary"), "--standby", surl,
                            "--saves", "30", "--rate", "40"] + TABLE, self.log)
        proc.communicate(timeout=60)
        _, applied = systest.wait_applied(surl, 30, 20)
        up = ((systest.status(surl) or {}).get("archive") or {}).get("uploaded_seq", -1)
        self.check(proc.returncode == 0 and applied and 0 <= up < 30,
                   "standby drain: 30 commits received, %s uploaded before the stop" % up)
        self.check(systest.stop(sproc, timeout=60) == 0,
                   "standby drain: SIGTERM, exit 0")
        mine = systest.inspect(self.loomship, sdir) or {}
        rc, text = self.restore(url, self.path("sbdrain-out"))
        got = systest.inspect(self.loomship, self.path("sbdrain-out")) or {}
        keys = ("epoch", "seq", "checksum", "history")
        self.check(rc == 0 and mine.get("seq") == 30 and
                   all(got.get(k) == mine.get(k) for k in keys),
                   "standby drain: restore newest is the standby's image at seq 30: "
                   "%s" % text.strip()[-200:])

    # 2, 3 ---------------------------------------------------------------
    def refused(self, name, url, opts, want):
        proc, purl = self.primary(self.path(name), url, opts=opts)
        st = systest.wait_for(lambda: (lambda s: s if s and (s.get("archive") or {})
                                       .get("last_error") and s["applied"]["seq"] >= 20
                                       else None)(systest.status(purl)), 20) if purl else None
        err = ((st or {}).get("archive") or {}).get("last_error") or ""
        self.check(want in err, "%s: saves go on (seq %s), last_error names %s: %s"
                   % (name, ((st or {}).get("applied") or {}).get("seq"), want, err))
        systest.stop(proc, signal.SIGKILL)

    def bad_credentials(self):
        cred = self.path("wrong.credentials")
        with open(cred, "w") as f:
            f.write("%s\nnot-the-secret\n" % swiftlib.KEY_ID)
        os.chmod(cred, 0o600)
        self.refused("wrongcred", "s3://%s/wrongcred" % self.store.bucket,
                     self.s3_opts(credentials=cred), "SignatureDoesNotMatch")
        self.check(self.keys("wrongcred/") == [], "a wrong secret uploads nothing")

    def missing_bucket(self):
        self.refused("nobucket", "s3://no-such-bucket/x", self.s3_opts(), "NoSuchBucket")

    # 4 ------------------------------------------------------------------
    def store_faults(self):
        pdir, url = self.path("faults"), "s3://%s/faults" % self.store.bucket
        with swiftlib.FaultProxy(self.store.endpoint) as proxy:
            proc, purl = self.primary(pdir, url, opts=self.s3_opts(endpoint=proxy.url),
                                      rate="50")
            arc = lambda: (systest.status(purl) or {}).get("archive") or {}
            self.check(bool(systest.wait_for(lambda: arc().get("uploaded_seq", 0) > 0, 20)),
                       "uploads start through the proxy")
            for what, fault in (("refused", proxy.down), ("503 SlowDown", None)):
                if fault:
                    fault()
                else:
                    proxy.slowdown(6, retry_after=1)
                seq0 = (systest.status(purl) or {}).get("applied", {}).get("seq", 0)
                st = systest.wait_for(lambda: (lambda s: s if s and (
                    s["archive"]["lag"]["frames"] > 20 or s["archive"]["last_error"]) and
                    s["applied"]["seq"] > seq0 + 40 else None)(systest.status(purl)), 20)
                self.check(st is not None, "store %s: saves go on, status shows lag/error: %s"
                           % (what, (st or {}).get("archive")))
                proxy.up()
                caught = systest.wait_for(lambda: (lambda s: s and s["archive"]["uploaded_seq"]
                                                   >= s["applied"]["seq"] - 60)(
                                                       systest.status(purl)), 30)
                self.check(bool(caught), "after %s the archive catches up" % what)
            code = systest.stop(proc, signal.SIGTERM)
            self.check(code == 0, "SIGTERM after the faults: exit 0 (%s)" % code)
        mine = systest.inspect(self.loomship, pdir) or {}
        rc, text = self.restore(url, self.path("faults-out"))
        got = systest.inspect(self.loomship, self.path("faults-out")) or {}
        self.check(rc == 0 and got.get("seq") == mine.get("seq") and
                   got.get("checksum") == mine.get("checksum") and "seq" in mine,
                   "nothing acknowledged is missing: restore is at seq %s (primary %s): %s"
                   % (got.get("seq"), mine.get("seq"), text.strip()[-300:]))

    # 5 ------------------------------------------------------------------
    def raw_objects(self, prefix):
        """Every object under prefix as Swift returns it (curl GET)."""
        out = []
        for k in self.keys(prefix + "/") or []:
            status, body = self.store.s3("GET", "/%s/%s" % (self.store.bucket, k))
            out.append(body if status == 200 else b"")
        return out

    @staticmethod
    def readable(obj):
        """What a reader without the key sees in obj: its bytes, and its
        payload (after the 96-byte header) zstd-decompressed when that
        works (bases are compressed before encryption)."""
        views = [obj]
        r = subprocess.run(["zstd", "-dqc"], input=obj[96:], capture_output=True,
                           check=False)
        if r.returncode == 0:
            views.append(r.stdout)
        return b"\0".join(views)

    def base_probes(self, name, *extra):
        """64-byte runs of the image at the archive's first base (restored
        with --seq there): bytes the base object holds in its plaintext."""
        bases = [k for k in self.keys(name + "/") or [] if "/b/" in k]
        if not bases:
            return []
        seq = int(bases[0].rsplit("/", 1)[1].split(".")[0], 16)
        out = self.path(name + "-base")
        self.restore(self.store_url(name), out, "--seq", str(seq), *extra)
        probes = []
        path = os.path.join(out, "image")
        data = open(path, "rb").read() if os.path.exists(path) else b""
        for off in range(0, len(data) - 64, 256):
            c = data[off:off + 64]
            if len(set(c)) > 8:
                probes.append(c)
        return probes

    def store_url(self, name):
        return "s3://%s/%s" % (self.store.bucket, name)

    def encrypted(self):
        kf = self.path("archive.key")
        with open(kf, "w") as f:
            f.write(KEY)
        rc1, _, _ = self.archived_run("plain", 20)
        rc2, enc_dir, enc_url = self.archived_run("enc", 20, ["--archive-key-file", kf])
        self.check(rc1 == 0 and rc2 == 0, "both runs exit 0 (%s, %s)" % (rc1, rc2))
        plain_probes = self.base_probes("plain")
        enc_probes = self.base_probes("enc", "--archive-key-file", kf)
        plain_objs, enc_objs = self.raw_objects("plain"), self.raw_objects("enc")
        plain = b"\0".join(self.readable(o) for o in plain_objs)
        enc = b"\0".join(self.readable(o) for o in enc_objs)
        self.check(len(enc_objs) >= 3 and all(enc_objs) and plain_probes and enc_probes,
                   "raw encrypted objects read (%d), %d/%d probes"
                   % (len(enc_objs), len(plain_probes), len(enc_probes)))
        self.check(all(c in plain for c in plain_probes),
                   "control: the plaintext archive's base holds its image bytes")
        leaked = sum(1 for c in enc_probes if c in enc)
        self.check(leaked == 0, "no image bytes in the encrypted objects (%d of %d leaked)"
                   % (leaked, len(enc_probes)))
        rc, text = self.restore(enc_url, self.path("enc-out"), "--archive-key-file", kf)
        got = systest.inspect(self.loomship, self.path("enc-out")) or {}
        mine = systest.inspect(self.loomship, enc_dir) or {}
        self.check(rc == 0 and got.get("checksum") == mine.get("checksum") and mine,
                   "restore with the key is the primary's image: %s" % text.strip()[-160:])

    # 6 ------------------------------------------------------------------
    def large_base(self):
        """An image over 64 MiB, encrypted: its base is sealed in a scratch
        file and PUT from a read-only mapping of it; restore is exact."""
        kf = self.path("archive.key")
        with open(kf, "w") as f:
            f.write(KEY)
        pdir, url = self.path("large"), self.store_url("large")
        table = ["--keys", "8192", "--arena-pages", "10496", "--rate", "100000"]
        rc, _ = self.run("primary", "--dir", pdir, "--saves", "1024", *table,
                         "--pages", "64")
        size = os.path.getsize(os.path.join(pdir, "image")) if rc == 0 else 0
        self.check(size > 64 << 20, "a %d MiB image made (%s)" % (size >> 20, rc))
        rc, text = self.run("primary", "--dir", pdir, "--saves", "5", *table,
                            "--pages", "16", "--archive", url, "--archive-key-file",
                            kf, *self.s3_opts())
        self.check(rc == 0 and "base at seq" in text,
                   "the large image's base goes up to Swift: %s" % text.strip()[-300:])
        out = self.path("large-out")
        rc, text = self.restore(url, out, "--archive-key-file", kf)
        got = systest.inspect(self.loomship, out) or {}
        mine = systest.inspect(self.loomship, pdir) or {}
        self.check(rc == 0 and mine and all(got.get(k) == mine.get(k) for k in
                                            ("epoch", "seq", "checksum", "pages")),
                   "restore of the large base is the primary's position: %s"
                   % text.strip()[-160:])
        self.check(systest.verify(self.loomship, out)[0], "verify passes on it")


def main():
    loomship, _ = systest.loomship_and_rng()
    if not swiftlib.swift_available():
        print("skip: Swift is not installed (tools/setup.sh)")
        return 77
    swiftlib.stop_on_sigterm()
    root = tempfile.mkdtemp(prefix="loomship-archive-s3-")
    with swiftlib.Swift() as store:
        s = Suite(loomship, root, store)
        s.basic()
        s.standby()
        s.standby_drain()
        s.bad_credentials()
        s.missing_bucket()
        s.store_faults()
        s.encrypted()
        s.large_base()
    return systest.report("archive_s3", s.failures, root)


if __name__ == "__main__":
    sys.exit(main())
