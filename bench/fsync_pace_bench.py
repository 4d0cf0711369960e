#!/usr/bin/env python3
"""fsync_pace_bench.py: what one append + fdatasync costs at a pace.

A log that takes a frame every 10 ms (a standby at 100 frames a second)
does not get the fdatasync of a loop that appends back to back: a write
changes the file's mtime only when the kernel's coarse clock has ticked
since the last one, and on some file systems (ext4 without a journal)
the fdatasync after such a change also writes the inode's block, and after an idle gap the same device writes can
take longer. This appends BYTES (6,000) at a time to a file in DIR,
fdatasync after each, COUNT (200) times for each gap, in three kinds of
file: one that grows ("grow"), one preallocated with fallocate KEEP_SIZE
("keep"), and one whose blocks were written first ("written"); it prints
the median time of each append's pwrite + fdatasync and, when DIR's
block device has a /sys/block/DEV/stat, the device's completed writes
per append (other writers on the same device count too: run it on a
quiet machine). docs/BENCHMARKS.md section
9, "Commit to received measured in the run".

Usage: fsync_pace_bench.py DIR [--bytes N] [--count N] [--gaps 0,0.001,0.004,0.01]
"""
import ctypes
import os
import statistics
import sys
import tempfile
import time

FALLOC_FL_KEEP_SIZE = 1


def device_stat_path(path):
    """/sys/block/DEV/stat of the whole disk that holds path, or None."""
    st = os.stat(path)
    link = "/sys/dev/block/%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))
    try:
        real = os.path.realpath(link)
    except OSError:
        return None
    for candidate in (real, os.path.dirname(real)):
        stat = os.path.join(candidate, "stat")
        if os.path.exists(os.path.join(candidate, "queue")) and os.path.exists(stat):
            return stat
    return None


def device_writes(stat_path):
    if not stat_path:
        return 0
    with open(stat_path) as f:
        return int(f.read().split()[4])  # writes completed


def run(directory, kind, gap, size, count, stat_path):
    fd, path = tempfile.mkstemp(prefix="fsync-pace-", dir=directory)
    try:
        span = size * count + (1 << 20)
        if kind == "keep":
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(span)):
                raise OSError(ctypes.get_errno(), "fallocate")
        elif kind == "written":
            os.pwrite(fd, b"\0" * span, 0)
        os.fsync(fd)
        buf = b"\1" * size
        times = []
        w0 = device_writes(stat_path)
        for i in range(count):
            if gap:
                time.sleep(gap)
            t0 = time.perf_counter()
            os.pwrite(fd, buf, i * size)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t0) * 1e3)
        writes = (device_writes(stat_path) - w0) / count if stat_path else None
        return statistics.median(times), writes
    finally:
        os.close(fd)
        os.unlink(path)


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    directory, size, count, gaps = sys.argv[1], 6000, 200, [0, 0.001, 0.004, 0.01]
    argv = sys.argv[2:]
    while argv:
        if argv[0] == "--bytes" and len(argv) > 1:
            size = int(argv[1])
        elif argv[0] == "--count" and len(argv) > 1:
            count = int(argv[1])
        elif argv[0] == "--gaps" and len(argv) > 1:
            gaps = [float(x) for x in argv[1].split(",")]
        else:
            print(__doc__, file=sys.stderr)
            return 2
        argv = argv[2:]
    stat_path = device_stat_path(directory)
    print("# %d appends of %d bytes + fdatasync per gap and kind, in %s (device stat: %s)"
          % (count, size, directory, stat_path or "none"))
    for gap in gaps:
        cells = []
        for kind in ("grow", "keep", "written"):
            ms, writes = run(directory, kind, gap, size, count, stat_path)
            w = "n/a" if writes is None else "%.3g" % writes
            cells.append("%s %.3f ms, %s writes" % (kind, ms, w))
            print("RESULT fsync_pace_%s_gap%gms %.4g ms device_writes_per_append=%s"
                  % (kind, gap * 1e3, ms, w))
        print("# gap %g ms: %s" % (gap * 1e3, "; ".join(cells)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
