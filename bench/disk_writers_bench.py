#!/usr/bin/env python3
"""disk_writers_bench.py: what the disk under DIR moves when several
writers each rewrite their own file with pwrite + fdatasync (issue 14;
docs/BENCHMARKS.md section 9, "On a quiet machine").

    python3 bench/disk_writers_bench.py [DIR] [--seconds S]

For 1 MiB and 4 MiB writes, 1, 2 and 4 threads, each looping pwrite of
random bytes at offset 0 of its own file + fdatasync for S seconds
(default 4): the writes a second in all and the MiB/s. A disk bound by
its bandwidth gives about the same MiB/s whatever the count of writers;
one bound by each flush's latency gives more with more writers. A
64-page save kept up by a standby writes each page four times (both
commit logs, both images), so the first kind bounds the pair at a
quarter of the 1 MiB loop."""
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from commit_path_bench import rewrite_rate  # noqa: E402

MiB = 1 << 20


def loop(path, size, seconds, out, i):
    out[i] = rewrite_rate(path, size, seconds)


def main():
    args = sys.argv[1:]
    seconds = 4.0
    if "--seconds" in args:
        at = args.index("--seconds")
        seconds = float(args[at + 1])
        del args[at:at + 2]
    root = args[0] if args else "/tmp"
    for size in (MiB, 4 * MiB):
        for k in (1, 2, 4):
            out = [0.0] * k
            threads = [threading.Thread(target=loop, args=(
                os.path.join(root, "disk-writers-%d-%d" % (os.getpid(), i)),
                size, seconds, out, i)) for i in range(k)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            total = sum(out)
            print("%d MiB writes, %d writers: %.0f/s in all, %.0f MiB/s"
                  % (size // MiB, k, total, total * size / MiB))
            print("RESULT disk_writers_%dmib_%d %.6g %.6g %.6g writes/s" %
                  (size // MiB, k, total, min(out), max(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
