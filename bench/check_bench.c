/*
 * check_bench.c: what LOOM_CHECK_PREVIOUS (core/loom.c, docs/INTEGRITY.md
 * 1a) costs a save, in the same run: loom_save latency with k pages
 * changed a save on a demand-paged image (as `loomship primary` opens
 * one), async apply, on two directories opened alike but for the flag,
 * in alternating phases.
 *
 *   check_bench [--pages N] [--k K] [--saves S] [--rounds R] [--dir DIR]
 *
 * Defaults: a 16,384-page image (256 MiB), 64 pages a save, 200 saves a
 * phase, 3 rounds of (without, with).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "benchutil.h"
#include "loom.h"

#define PS LOOM_PAGE_SIZE

static void die(const char *what, int rc)
{
  fprintf(stderr, "check_bench: %s: %s\n", what, loom_strerror(rc));
  exit(2);
}

static loom *open_filled(const char *dir, uint64_t n, unsigned flags)
{
  loom_options o = {.arena_pages = n + 64,
                    .flags = LOOM_CREATE | LOOM_APPLY_ASYNC | flags};
  loom *l;
  int rc = loom_open(dir, &o, &l);
  if (rc)
    die("loom_open", rc);
  uint8_t *b = loom_base(l);
  for (uint64_t i = 0; i < n; i++)
    memset(b + i * PS, (int)(i % 251) + 1, PS);
  if ((rc = loom_save(l, n, n + 64)))
    die("first save", rc);
  return l;
}

/* s saves of k pages spread over the image: latencies (ms) into lat. */
static void saves(loom *l, uint64_t n, uint64_t k, unsigned s, double *lat, unsigned *tick)
{
  uint8_t *b = loom_base(l);
  uint64_t stride = n / k;
  for (unsigned r = 0; r < s; r++, (*tick)++) {
    for (uint64_t i = 0; i < k; i++)
      b[(i * stride + *tick % stride) * PS + (*tick * 8) % PS] ^= 0xff;
    double t0 = now_s();
    int rc = loom_save(l, n, n + 64);
    lat[r] = (now_s() - t0) * 1e3;
    if (rc)
      die("save", rc);
  }
}

int main(int argc, char **argv)
{
  uint64_t n = 16384, k = 64;
  unsigned s = 200, rounds = 3;
  const char *root = "/tmp";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--pages")) n = strtoull(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--k")) k = strtoull(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--saves")) s = (unsigned)atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--rounds")) rounds = (unsigned)atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--dir")) root = argv[i + 1];
    else {
      fprintf(stderr, "usage: check_bench [--pages N] [--k K] [--saves S] [--rounds R] "
                      "[--dir DIR]\n");
      return 2;
    }
  }
  char dir[2][256];
  snprintf(dir[0], sizeof dir[0], "%s/check_bench.%d.without", root, (int)getpid());
  snprintf(dir[1], sizeof dir[1], "%s/check_bench.%d.with", root, (int)getpid());
  loom *l[2] = {open_filled(dir[0], n, 0), open_filled(dir[1], n, LOOM_CHECK_PREVIOUS)};
  double *lat[2] = {malloc(sizeof(double) * s * rounds), malloc(sizeof(double) * s * rounds)};
  unsigned tick[2] = {1, 1};
  for (unsigned r = 0; r < rounds; r++)
    for (int w = 0; w < 2; w++)
      saves(l[w], n, k, s, lat[w] + r * s, &tick[w]);
  size_t total = (size_t)s * rounds;
  double p50[2], p99[2];
  for (int w = 0; w < 2; w++) {
    p50[w] = percentile(lat[w], total, 0.5);
    p99[w] = percentile(lat[w], total, 0.99);
  }
  printf("LOOM_CHECK_PREVIOUS against the commit path: %" PRIu64 "-page image (%.0f MiB), "
         "demand-paged, %" PRIu64 " pages a save, %zu saves each, %u alternating rounds\n\n",
         n, (double)n * PS / 1048576.0, k, total, rounds);
  printf("| saves | p50 ms | p99 ms |\n|---|---:|---:|\n");
  printf("| without the check | %.3f | %.3f |\n", p50[0], p99[0]);
  printf("| with the check | %.3f | %.3f |\n", p50[1], p99[1]);
  printf("\nwith / without: p50 %.2f, p99 %.2f\n", p50[1] / p50[0], p99[1] / p99[0]);
  for (int w = 0; w < 2; w++) {
    loom_close(l[w]);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir[w]);
    if (system(cmd) != 0)
      fprintf(stderr, "check_bench: could not remove %s\n", dir[w]);
    free(lat[w]);
  }
  return 0;
}
