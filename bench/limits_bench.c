/*
 * limits_bench.c: physical limits of this machine that issue 7 item 1 asks
 * for and core_bench/frame_bench do not measure themselves:
 *   memcpy        bandwidth of copying 64 MiB (16 KiB pages), in GB/s
 *   random pwrite 64 random 16 KiB pwrites into a preallocated 1 GiB file
 *                 (64 MiB with --quick), then one fdatasync: what applying a
 *                 64-page patch to an image in place costs at least, in ms
 *   fdatasync     one 16 KiB pwrite + fdatasync to a new place: the floor of
 *                 every durable step (patch, log record, meta), in ms
 * Usage: limits_bench [--quick] [--dir DIR]
 * Output: a table and "RESULT name median min max unit reference ratio".
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "benchutil.h"

#define PS 16384u

/* One result line for people, one for ./benchmark's table. */
static void report(const char *name, const char *unit, double *v, int n)
{
  stat3 s = summarize(v, n);
  printf("  %-44s %10.3f %10.3f %10.3f %s\n", name, s.median, s.min, s.max, unit);
  printf("RESULT %s %.6g %.6g %.6g %s -=0 0\n", name, s.median, s.min, s.max, unit);
}

int main(int argc, char **argv)
{
  int quick = 0;
  const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick"))
      quick = 1;
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
      dir = argv[++i];
  }
  int reps = quick ? 5 : 15;
  double v[64];
  printf("limits (%d repeats): figure, median, min, max\n", reps);

  size_t len = 64u << 20;
  uint8_t *a = malloc(len), *b = malloc(len);
  if (!a || !b)
    return 1;
  memset(a, 1, len);
  memset(b, 2, len);
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    for (size_t off = 0; off < len; off += PS)
      memcpy(b + off, a + off, PS);
    v[r] = (double)len / (now_s() - t0) / 1e9;
    a[r] = b[len - 1 - (size_t)r]; /* keep the copies observable */
  }
  report("memcpy_GBps", "GB/s", v, reps);

  char path[600];
  snprintf(path, sizeof path, "%s/limits_bench.%d", dir, (int)getpid());
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    perror("limits_bench: open");
    return 1;
  }
  uint64_t file = quick ? (64u << 20) : (1u << 30);
  for (uint64_t off = 0; off < file; off += len) /* written, not sparse */
    if (pwrite(fd, a, len, (off_t)off) != (ssize_t)len) {
      perror("limits_bench: fill");
      return 1;
    }
  fdatasync(fd);
  uint64_t rng = 88172645463325252ull;
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    for (int i = 0; i < 64; i++) {
      rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
      uint64_t page = rng % (file / PS);
      if (pwrite(fd, a + (size_t)i * PS, PS, (off_t)(page * PS)) != PS)
        return 1;
    }
    fdatasync(fd);
    v[r] = (now_s() - t0) * 1e3;
  }
  report("random_pwrite_64x16KiB_fdatasync_ms", "ms", v, reps);
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    if (pwrite(fd, a, PS, (off_t)((rng % (file / PS)) * PS)) != PS)
      return 1;
    fdatasync(fd);
    v[r] = (now_s() - t0) * 1e3;
  }
  report("pwrite_16KiB_fdatasync_ms", "ms", v, reps);
  close(fd);
  unlink(path);
  free(a);
  free(b);
  return 0;
}
