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

#include "loom_bench.h"

#define PS LOOM_PAGE_SIZE

static void die(const char *what, int rc)
{
  fprintf(stderr, "check_bench: %s: %s\n", what, loom_strerror(rc));
  exit(2);
}

static loom *open_filled(const char *dir, uint64_t n, unsigned flags)
{
  loom *l;
  int rc = bench_loom_with_image(dir, (loom_options){.flags = LOOM_APPLY_ASYNC | flags}, n,
                                 64, &l);
  if (rc)
    die("open and fill", rc);
  return l;
}

int main(int argc, char **argv)
{
  bench_save_args a = BENCH_SAVE_ARGS_DEFAULT;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!bench_save_arg(argv[i], argv[i + 1], &a)) {
      fprintf(stderr, "usage: check_bench [--pages N] [--k K] [--saves S] [--rounds R] "
                      "[--dir DIR]\n");
      return 2;
    }
  }
  uint64_t n = a.n, k = a.k;
  unsigned s = a.s, rounds = a.rounds;
  const char *root = a.root;
  char dir[2][256];
  snprintf(dir[0], sizeof dir[0], "%s/check_bench.%d.without", root, (int)getpid());
  snprintf(dir[1], sizeof dir[1], "%s/check_bench.%d.with", root, (int)getpid());
  loom *l[2] = {open_filled(dir[0], n, 0), open_filled(dir[1], n, LOOM_CHECK_PREVIOUS)};
  double *lat[2] = {malloc(sizeof(double) * s * rounds), malloc(sizeof(double) * s * rounds)};
  unsigned tick[2] = {1, 1};
  int rc;
  for (unsigned r = 0; r < rounds; r++)
    for (int w = 0; w < 2; w++)
      if ((rc = bench_spread_saves(l[w], n, k, s, lat[w] + r * s, &tick[w])))
        die("save", rc);
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
