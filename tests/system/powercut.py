#!/usr/bin/env python3
"""powercut.py: power cuts of a primary on a real ext4 file system.

usage: powercut.py LOOMSHIP [--long] [--cuts-ack N] [--cuts-random M]
                   [--seed S] [--only KIND:SEED] [--nofsync shim|eatmydata]
                   [--nofsync-only NAMES] [--expect-loss-with-nofsync]
                   [--work DIR] [--keep N]

Each cut makes a fresh small ext4 image (mkfs.ext4), attaches it to a loop
device, mounts it and runs `loomship primary --saves 0` on it, with
LOOMSHIP_ACK_LOG (outside the loop file system) listing every save the
primary saw succeed. At the cut instant the primary is frozen (SIGSTOP) and
the loop device is copied as the block device holds it (dd iflag=direct):
what ext4 has not yet handed to the block device (dirty page cache, a
journal transaction not yet committed) is not in the copy, exactly as after
a power loss. Nothing calls sync before the copy. Then the primary is
killed, the copy is attached to a second loop device, e2fsck -fy replays
its journal, it is mounted, and:
  - `loomship verify` must exit 0 (when the directory exists at all),
  - every save acknowledged before the SIGSTOP must be present: its seq is
    at most the recovered seq, and the acknowledged save with the recovered
    seq has the recovered epoch and checksum.

Two kinds of instants:
  ack     right after the K-th acknowledgement (the ack log is polled; the
          stop follows the line within about a millisecond)
  random  a random sleep after the primary starts: 0-50 ms (creation and
          first saves), 0-3 s or 3-7 s
Every cut has its own seed (printed), which fixes the workload (rate,
pages, seed of the primary) and the instant; `--only KIND:SEED` repeats one.

--nofsync shim|eatmydata runs the primary with fsync/fdatasync made no-ops
(a small LD_PRELOAD shim compiled here, or eatmydata); --nofsync-only
NAMES (shim) disables only the fsyncs of files with those base names. With
--expect-loss-with-nofsync the suite asserts that it CATCHES that broken
durability: at least one cut must lose an acknowledged save (or fail
verify); otherwise it fails. --long (the meson suite 'long') runs the
default counts with real fsync, then a negative control of 20 ack cuts
with the shim, which must be caught.

Exit: 0 all cuts passed (or, in the expect-loss mode, loss was caught);
1 a failure; 77 skipped (not root, or losetup/mount/mkfs.ext4/e2fsck
missing, or no loop device can be attached).
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import systest

IMAGE_MIB = 128
# A small table: the arena is 128 pages of 16 KiB, so a run fits the 128 MiB
# file system with room for the replication log and the commit log (a ring
# of 64 MiB by default, written out on its first lap).
TABLE = ["--keys", "16", "--arena-pages", "128"]

# fsync and its kin become no-ops. With LOOMSHIP_NOFSYNC_ONLY=NAME,NAME...
# only those whose file's base name (from /proc/self/fd) is listed: one
# file's fsync removed, the others kept.
SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int skipped(int fd)
{
  const char *only = getenv("LOOMSHIP_NOFSYNC_ONLY");
  if (!only || !*only)
    return 1;
  char link[64], target[4096];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n <= 0)
    return 0;
  target[n] = 0;
  const char *base = strrchr(target, '/');
  base = base ? base + 1 : target;
  size_t len = strlen(base);
  for (const char *p = only; *p;) {
    size_t k = strcspn(p, ",");
    if (k == len && memcmp(p, base, k) == 0)
      return 1;
    p += k + (p[k] == ',');
  }
  return 0;
}

int fsync(int fd)
{
  if (skipped(fd))
    return 0;
  int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  return real(fd);
}

int fdatasync(int fd)
{
  if (skipped(fd))
    return 0;
  int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  return real(fd);
}

int syncfs(int fd)
{
  if (skipped(fd))
    return 0;
  int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
  return real(fd);
}

int sync_file_range(int fd, off_t o, off_t n, unsigned int f)
{
  if (skipped(fd))
    return 0;
  int (*real)(int, off_t, off_t, unsigned int) =
      (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
  return real(fd, o, n, f);
}

void sync(void)
{
  const char *only = getenv("LOOMSHIP_NOFSYNC_ONLY");
  if (only && *only) {
    void (*real)(void) = (void (*)(void))dlsym(RTLD_NEXT, "sync");
    real();
  }
}
"""


def skip(why):
    print("SKIP: " + why)
    sys.exit(77)


def run(args, check=True, **kw):
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(args), proc.returncode,
                                                  proc.stdout.decode(errors="replace").strip()))
    return proc


def losetup_attach(path):
    return run(["losetup", "--find", "--show", path]).stdout.decode().strip()


def losetup_detach(dev):
    for _ in range(50):
        if run(["losetup", "-d", dev], check=False).returncode == 0:
            return
        time.sleep(0.1)


def umount(mnt):
    for _ in range(50):
        if run(["umount", mnt], check=False).returncode == 0:
            return
        time.sleep(0.1)
    run(["umount", "-l", mnt], check=False)


def preflight(work):
    if os.geteuid() != 0:
        skip("needs root (loop devices, mount)")
    for tool in ("losetup", "mount", "umount", "mkfs.ext4", "e2fsck", "dd"):
        if shutil.which(tool) is None:
            skip("%s not found" % tool)
    probe = os.path.join(work, "probe.img")
    with open(probe, "wb") as f:
        f.truncate(IMAGE_MIB << 20)
    try:
        run(["mkfs.ext4", "-q", "-F", probe])
        dev = losetup_attach(probe)
    except (RuntimeError, OSError) as e:
        skip("cannot make or attach an ext4 loop image: %s" % e)
    mnt = os.path.join(work, "probe-mnt")
    os.makedirs(mnt, exist_ok=True)
    ok = run(["mount", "-t", "ext4", dev, mnt], check=False).returncode == 0
    if ok:
        umount(mnt)
    losetup_detach(dev)
    os.unlink(probe)
    if not ok:
        skip("cannot mount an ext4 loop device")


def build_shim(work):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler for the fsync shim")
    src = os.path.join(work, "nofsync.c")
    lib = os.path.join(work, "nofsync.so")
    with open(src, "w") as f:
        f.write(SHIM_SOURCE)
    run([cc, "-shared", "-fPIC", "-O2", "-o", lib, src, "-ldl"])
    return lib


def wait_stopped(pid, timeout=2.0):
    """Until every thread of pid is stopped (SIGSTOP is delivered
    asynchronously), or it is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            tids = os.listdir("/proc/%d/task" % pid)
            states = []
            for tid in tids:
                with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        if all(st in ("T", "t", "Z", "X") for st in states):
            return
        time.sleep(0.0002)


def read_acks(path):
    """Complete lines of the ack log: [(seq, epoch, checksum)]."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    acks = []
    for line in data.split(b"\n")[:-1]:  # a last line without \n is not complete
        w = line.decode().split()
        if len(w) == 6 and w[0] == "seq" and w[2] == "epoch" and w[4] == "checksum":
            acks.append((int(w[1]), int(w[3]), w[5]))
    return acks


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


class Cutter:
    def __init__(self, loomship, work, nofsync, keep, nofsync_only=None):
        self.loomship = loomship
        self.work = work
        self.keep = keep
        self.kept = 0
        self.env_extra = {}
        self.prefix = []
        if nofsync == "shim":
            self.env_extra["LD_PRELOAD"] = build_shim(work)
            if nofsync_only:
                self.env_extra["LOOMSHIP_NOFSYNC_ONLY"] = nofsync_only
        elif nofsync == "eatmydata":
            if shutil.which("eatmydata") is None:
                raise RuntimeError("eatmydata not installed (apt-get install eatmydata)")
            self.prefix = ["eatmydata"]
        self.img = os.path.join(work, "disk.img")
        self.cut_img = os.path.join(work, "cut.img")
        self.ack = os.path.join(work, "ack.log")
        self.mnt = os.path.join(work, "mnt")
        self.mnt2 = os.path.join(work, "mnt2")
        os.makedirs(self.mnt, exist_ok=True)
        os.makedirs(self.mnt2, exist_ok=True)
        self.mounted = []
        self.loops = []

    def cleanup(self):
        for m in reversed(self.mounted):
            umount(m)
        for d in reversed(self.loops):
            losetup_detach(d)
        self.mounted, self.loops = [], []

    def cut(self, kind, seed):
        """One power cut. Returns (ok, message, figures)."""
        rng = random.Random(seed)
        rate = rng.choice([50, 200, 1000])
        pages = rng.choice([1, 2, 8, 32])
        pseed = rng.randrange(1, 1 << 31)
        # jbd2 commits every 5 s by default; commit=1 makes background
        # commits (and ordered-mode data writeback) fall inside short runs.
        commit = rng.choice([1, 5])
        if kind == "ack":
            target = rng.randint(1, 150)
            delay = None
        else:
            target = None
            pick = rng.random()
            if pick < 0.1:
                delay = rng.uniform(0.0, 0.05)  # the directory's creation, first saves
            elif pick < 0.8:
                delay = rng.uniform(0.0, 3.0)
            else:
                delay = rng.uniform(3.0, 7.0)
        with open(self.img, "wb") as f:
            f.truncate(IMAGE_MIB << 20)
        run(["mkfs.ext4", "-q", "-F", self.img])
        dev = losetup_attach(self.img)
        self.loops.append(dev)
        run(["mount", "-t", "ext4", "-o", "commit=%d" % commit, dev, self.mnt])
        self.mounted.append(self.mnt)
        if os.path.exists(self.ack):
            os.unlink(self.ack)
        env = dict(os.environ, LOOMSHIP_ACK_LOG=self.ack, **self.env_extra)
        args = self.prefix + [self.loomship, "primary", "--dir", os.path.join(self.mnt, "p"),
                              "--saves", "0", "--rate", str(rate), "--pages", str(pages),
                              "--seed", str(pseed)] + TABLE
        t0 = time.monotonic()
        log_path = os.path.join(self.work, "primary.log")
        with open(log_path, "wb") as log:
            proc = systest.spawn(args, stdout=subprocess.DEVNULL, stderr=log, env=env)
        died = False
        if kind == "ack":
            deadline = t0 + 30.0
            while count_lines(self.ack) < target:
                if proc.poll() is not None or time.monotonic() > deadline:
                    died = True
                    break
                time.sleep(0.0005)
        else:
            time.sleep(delay)
        if proc.poll() is not None:
            died = True
        proc.send_signal(signal.SIGSTOP)
        t_stop = time.monotonic() - t0
        wait_stopped(proc.pid)
        acks = read_acks(self.ack)
        # The power cut: the block device's content, without a sync.
        t_copy = time.monotonic()
        run(["dd", "if=" + dev, "of=" + self.cut_img, "bs=1M", "iflag=direct", "status=none"])
        t_copy = time.monotonic() - t_copy
        proc.send_signal(signal.SIGKILL)
        proc.send_signal(signal.SIGCONT)
        proc.wait()
        with open(log_path, "rb") as log:
            err = log.read().decode(errors="replace")
        umount(self.mnt)
        self.mounted.remove(self.mnt)
        losetup_detach(dev)
        self.loops.remove(dev)
        if died:
            return False, "primary exited early (exit %s): %s" % (proc.returncode, err.strip()[-400:]), {}
        ok, msg = self.check(acks)
        figures = {"rate": rate, "pages": pages, "acks": len(acks), "t_stop": t_stop,
                   "commit": commit, "t_copy": t_copy}
        if not ok and self.kept < self.keep:
            kept = os.path.join(self.work, "failed-%s-%d.img" % (kind, seed))
            shutil.copyfile(self.cut_img, kept)
            msg += " (image kept: %s)" % kept
            self.kept += 1
        return ok, msg, figures

    def check(self, acks):
        dev = losetup_attach(self.cut_img)
        self.loops.append(dev)
        try:
            fsck = run(["e2fsck", "-fy", dev], check=False)
            if fsck.returncode >= 4:
                return False, "e2fsck exit %d: %s" % (fsck.returncode,
                                                      fsck.stdout.decode(errors="replace")[-400:])
            run(["mount", "-t", "ext4", dev, self.mnt2])
            self.mounted.append(self.mnt2)
            try:
                return self.check_mounted(acks)
            finally:
                umount(self.mnt2)
                self.mounted.remove(self.mnt2)
        finally:
            losetup_detach(dev)
            self.loops.remove(dev)

    def check_mounted(self, acks):
        d = os.path.join(self.mnt2, "p")
        last = acks[-1] if acks else None
        if not os.path.isdir(d):
            if last:
                return False, "LOST: no directory, %d saves acknowledged (last seq %d)" % (
                    len(acks), last[0])
            return True, "no directory, nothing acknowledged"
        ver = run([self.loomship, "verify", d], check=False)
        pos = systest.inspect(self.loomship, d)
        if ver.returncode != 0:
            if not acks and pos is None:
                # Cut during creation, before the first save: an unfinished
                # directory with nothing acknowledged.
                return True, "unfinished creation, nothing acknowledged (verify: %s)" % (
                    ver.stdout.decode(errors="replace").strip()[:200])
            return False, "VERIFY FAILED (exit %d, %d acks, last %s): %s" % (
                ver.returncode, len(acks), last, ver.stdout.decode(errors="replace").strip()[:400])
        if pos is None:
            # verify accepts a directory that a cut left before its first
            # position was recorded (the empty position); inspect finds no
            # image there.
            if not acks:
                return True, "never committed, nothing acknowledged"
            return False, "LOST: verify passed but inspect finds no position, %d saves acknowledged" % (
                len(acks))
        seq, epoch, checksum = pos["seq"], pos["epoch"], pos["checksum"]
        if last is None:
            return True, "recovered seq %d, nothing acknowledged" % seq
        if last[0] > seq:
            return False, "LOST: acknowledged seq %d, recovered seq %d (%d saves lost)" % (
                last[0], seq, last[0] - seq)
        same = [a for a in acks if a[0] == seq]
        if same and (same[-1][1] != epoch or same[-1][2] != checksum):
            return False, "DIFFERENT: acknowledged seq %d epoch %d checksum %s, recovered epoch %d checksum %s" % (
                seq, same[-1][1], same[-1][2], epoch, checksum)
        return True, "acknowledged %d, recovered %d" % (last[0], seq)


def run_cuts(cutter, plan, me, repeat_opts, loss_expected=False):
    """plan: [(kind, seed)]. Returns (failures, losses, seconds). With
    loss_expected (fsync disabled), a failed cut is reported as caught."""
    failures = losses = 0
    t0 = time.monotonic()
    for i, (kind, seed) in enumerate(plan):
        try:
            ok, msg, fig = cutter.cut(kind, seed)
        except RuntimeError as e:
            cutter.cleanup()
            ok, msg, fig = False, "ERROR: %s" % e, {}
        if not ok:
            failures += 1
            if msg.startswith(("LOST", "VERIFY", "DIFFERENT", "e2fsck")):
                losses += 1
            print("%s %s cut %d seed %d: %s" % ("caught" if loss_expected else "FAIL",
                                                kind, i, seed, msg))
            print("  repeat: %s --only %s:%d%s" % (me, kind, seed, repeat_opts))
        elif os.environ.get("POWERCUT_VERBOSE"):
            print("ok   %s cut %d seed %d t=%.3fs copy %.3fs commit=%s rate %s pages %s: %s" % (
                kind, i, seed, fig.get("t_stop", 0), fig.get("t_copy", 0), fig.get("commit"),
                fig.get("rate"), fig.get("pages"), msg))
        if (i + 1) % 50 == 0 and i + 1 < len(plan):
            print("  %d/%d cuts, %d failed, %.0f s" % (i + 1, len(plan), failures,
                                                    time.monotonic() - t0))
        sys.stdout.flush()
    return failures, losses, time.monotonic() - t0


def make_plan(seed, n_ack, n_random):
    rng = random.Random(seed)
    plan = [("ack", rng.randrange(1, 1 << 31)) for _ in range(n_ack)]
    plan += [("random", rng.randrange(1, 1 << 31)) for _ in range(n_random)]
    return plan


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("loomship")
    ap.add_argument("--long", action="store_true",
                    help="the long form: default counts, then a negative control with fsync disabled")
    ap.add_argument("--cuts-ack", type=int, default=200)
    ap.add_argument("--cuts-random", type=int, default=500)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--only", default=None, help="KIND:SEED, one cut (KIND ack or random)")
    ap.add_argument("--nofsync", choices=["shim", "eatmydata"], default=None)
    ap.add_argument("--nofsync-only", default=None, metavar="NAMES",
                    help="with the shim, disable only the fsyncs of these files "
                         "(comma-separated base names: meta, image, hashes, log, "
                         "p for the directory, mnt for its parent)")
    ap.add_argument("--expect-loss-with-nofsync", action="store_true",
                    help="with fsync disabled (--nofsync, default shim), assert that a loss is caught")
    ap.add_argument("--work", default=None, help="scratch directory (default: a new one in /tmp)")
    ap.add_argument("--keep", type=int, default=None,
                    help="keep the images of the first N failed cuts (default 3, "
                         "0 with --expect-loss-with-nofsync)")
    a = ap.parse_args()
    loomship = os.path.abspath(a.loomship)
    if a.nofsync_only and a.nofsync is None:
        a.nofsync = "shim"
    if a.nofsync_only and a.nofsync != "shim":
        ap.error("--nofsync-only needs the shim")
    if a.expect_loss_with_nofsync and a.nofsync is None:
        a.nofsync = "shim"
    if a.keep is None:
        a.keep = 0 if a.expect_loss_with_nofsync else 3
    work = a.work or tempfile.mkdtemp(prefix="loomship-powercut-")
    os.makedirs(work, exist_ok=True)
    try:
        preflight(work)
    except SystemExit:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    seed = a.seed if a.seed is not None else int(time.time())
    me = "%s %s %s" % (sys.executable, os.path.abspath(__file__), loomship)
    repeat_opts = (" --nofsync %s" % a.nofsync) if a.nofsync else ""
    if a.nofsync_only:
        repeat_opts += " --nofsync-only %s" % a.nofsync_only
    if a.expect_loss_with_nofsync:
        repeat_opts += " --expect-loss-with-nofsync"
    if a.only:
        kind, s = a.only.split(":")
        plan = [(kind, int(s))]
    else:
        plan = make_plan(seed, a.cuts_ack, a.cuts_random)
    print("powercut: seed %d, %d cuts (%d ack, %d random), fsync %s, ext4 %d MiB on loop, work %s" % (
        seed, len(plan), sum(1 for k, _ in plan if k == "ack"),
        sum(1 for k, _ in plan if k == "random"),
        ("disabled by %s%s" % (a.nofsync, (" for " + a.nofsync_only) if a.nofsync_only else ""))
        if a.nofsync else "real", IMAGE_MIB, work))
    if not a.only:
        print("  repeat the run: %s --seed %d --cuts-ack %d --cuts-random %d%s" % (
            me, seed, a.cuts_ack, a.cuts_random, repeat_opts))
    sys.stdout.flush()
    cutter = Cutter(loomship, work, a.nofsync, a.keep, a.nofsync_only)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        failures, losses, secs = run_cuts(cutter, plan, me, repeat_opts,
                                          loss_expected=a.expect_loss_with_nofsync)
        print("powercut: %d cuts in %.1f s (%.2f s per cut), %d failed (%d losses or verify failures)" % (
            len(plan), secs, secs / max(1, len(plan)), failures, losses))
        if a.expect_loss_with_nofsync:
            if losses == 0:
                print("FAIL: fsync disabled (%s) but no cut lost an acknowledged save: "
                      "the suite does not catch a missing fsync" % a.nofsync)
                return 1
            print("ok: fsync disabled (%s) caught: %d of %d cuts lost acknowledged saves or failed verify" % (
                a.nofsync, losses, len(plan)))
            return 0
        if failures:
            return 1
        if a.long and not a.only:
            print("powercut: negative control, 20 ack cuts with fsync disabled (shim)")
            control = Cutter(loomship, work, "shim", 0)
            try:
                plan = make_plan(seed + 1, 20, 0)
                _, closses, csecs = run_cuts(control, plan, me, " --nofsync shim",
                                             loss_expected=True)
            finally:
                control.cleanup()
            if closses == 0:
                print("FAIL: negative control: no loss caught with fsync disabled")
                return 1
            print("ok: negative control caught %d losses in 20 cuts (%.1f s)" % (closses, csecs))
        return 0
    finally:
        cutter.cleanup()
        if a.work is None and cutter.kept == 0:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
